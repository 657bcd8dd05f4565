//! Broken, missing and odd files: typed errors that name the file, or frames that really
//! decode — never a panic, never a frame index past what decodes.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use test_support::ffmpeg;
use video_io::{
    read_clip, DecodeOptions, Error, FrameFolder, FrameSource, SampleLocation, SampleMode,
    Sampling, VideoReader,
};

fn open(path: &Path) -> Result<VideoReader, Error> {
    VideoReader::open(path, DecodeOptions::default())
}

/// A 4-second UCF101-like clip (100 frames, keyframe every 12) in `dir`.
fn ucf_clip(dir: &Path) -> PathBuf {
    let p = dir.join("clip.avi");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=25",
        "-t",
        "4",
        "-c:v",
        "mpeg4",
        "-vtag",
        "xvid",
        p.to_str().unwrap(),
    ]);
    p
}

fn write_prefix(src: &Path, dst: &Path, fraction: f64) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
}

fn assert_names(err: &Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
}

#[test]
fn missing_empty_directory_and_garbage_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.avi");
    let e = open(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_names(&e, &missing);

    let empty = dir.path().join("empty.avi");
    std::fs::write(&empty, b"").unwrap();
    let e = open(&empty).unwrap_err();
    assert!(matches!(e, Error::EmptyFile { .. }), "{e}");
    assert_names(&e, &empty);

    let e = open(dir.path()).unwrap_err();
    assert!(matches!(e, Error::NotAVideo { .. }), "{e}");

    let garbage = dir.path().join("random.avi");
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let bytes: Vec<u8> = (0..200_000).map(|_| rand::Rng::random(&mut rng)).collect();
    std::fs::write(&garbage, bytes).unwrap();
    let e = open(&garbage).unwrap_err();
    assert!(matches!(e, Error::NotAVideo { .. }), "{e}");
    assert_names(&e, &garbage);
}

#[test]
fn audio_only_has_no_video_stream() {
    let dir = tempfile::tempdir().unwrap();
    let audio = dir.path().join("tone.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440",
        "-t",
        "1",
        audio.to_str().unwrap(),
    ]);
    let e = open(&audio).unwrap_err();
    assert!(matches!(e, Error::NoVideoStream { .. }), "{e}");
    assert_names(&e, &audio);
    assert!(e.to_string().contains("audio"), "{e}");
}

#[test]
fn truncated_videos_yield_only_frames_that_decode() {
    let dir = tempfile::tempdir().unwrap();
    let clip = ucf_clip(dir.path());
    let full = open(&clip).unwrap().num_frames();
    assert_eq!(full, 100);
    for fraction in [0.1, 0.5, 0.9] {
        let cut = dir.path().join(format!("cut{fraction}.avi"));
        write_prefix(&clip, &cut, fraction);
        let mut source = match FrameSource::open(
            &SampleLocation::Video(cut.clone()),
            DecodeOptions::default(),
        ) {
            Ok(s) => s,
            Err(e) => {
                assert_names(&e, &cut);
                continue;
            }
        };
        assert!(source.num_frames() <= full);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for mode in [SampleMode::Valid, SampleMode::Train] {
            let clip = read_clip(&mut source, &Sampling::default(), mode, &mut rng).unwrap();
            assert_eq!(clip.frames.len(), 8);
            assert!(clip.indices.iter().all(|&i| i < clip.frames_len));
        }
        // Every frame the reader claims really decodes: the last one can be read.
        let n = source.num_frames();
        source.frames(&[n - 1]).unwrap();
        assert!(
            n as f64 <= full as f64 * fraction + 13.0,
            "{fraction}: {n} frames"
        );
    }
}

#[test]
fn header_only_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let clip = ucf_clip(dir.path());
    let head = dir.path().join("head.avi");
    let bytes = std::fs::read(&clip).unwrap();
    std::fs::write(&head, &bytes[..4096.min(bytes.len())]).unwrap();
    let e = open(&head).unwrap_err();
    assert_names(&e, &head);
}

#[test]
fn corrupted_middle_still_reads_and_counts_what_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let clip = ucf_clip(dir.path());
    let bad = dir.path().join("bad.avi");
    let mut bytes = std::fs::read(&clip).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 5000] {
        *b = 0x5a;
    }
    std::fs::write(&bad, bytes).unwrap();
    let mut source =
        FrameSource::open(&SampleLocation::Video(bad), DecodeOptions::default()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let got = read_clip(
        &mut source,
        &Sampling::default(),
        SampleMode::Valid,
        &mut rng,
    )
    .unwrap();
    assert_eq!(got.frames.len(), 8);
}

#[test]
fn single_frame_video_wraps_like_the_tutorial() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=25",
        "-frames:v",
        "1",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        one.to_str().unwrap(),
    ]);
    let mut source =
        FrameSource::open(&SampleLocation::Video(one), DecodeOptions::default()).unwrap();
    assert_eq!(source.num_frames(), 1);
    let got = read_clip(
        &mut source,
        &Sampling::default(),
        SampleMode::Train,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    assert_eq!(got.indices, vec![0; 8]);
    assert_eq!(got.frames[0].dimensions(), (64, 48));
}

#[test]
fn odd_sizes_and_pixel_formats_decode() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        (
            "tiny.mp4",
            vec!["-vf", "scale=2:2", "-c:v", "libx264", "-pix_fmt", "yuv444p"],
        ),
        ("odd.avi", vec!["-vf", "scale=33:17", "-c:v", "mpeg4"]),
        ("gray.mkv", vec!["-c:v", "ffv1", "-pix_fmt", "gray"]),
    ] {
        let p = dir.path().join(name);
        let mut a = vec!["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "1"];
        a.extend(args);
        a.push(p.to_str().unwrap());
        ffmpeg(&a);
        let mut r = open(&p).unwrap();
        assert_eq!(r.num_frames(), 10, "{name}");
        let f = r.frames(&[9, 0]).unwrap();
        assert_eq!(f.len(), 2, "{name}");
    }
}

#[test]
fn frame_folder_missing_image_names_the_image() {
    let dir = tempfile::tempdir().unwrap();
    for i in [1, 2, 4] {
        image::RgbImage::from_pixel(8, 6, image::Rgb([i as u8, 0, 0]))
            .save(dir.path().join(format!("img_{i:05}.jpg")))
            .unwrap();
    }
    let folder = FrameFolder::open(dir.path(), 4).unwrap();
    let ok = folder.frames(&[0, 1, 3, 0]).unwrap();
    assert_eq!(ok.len(), 4);
    let e = folder.frames(&[2]).unwrap_err();
    assert!(e.to_string().contains("img_00003.jpg"), "{e}");
    let e = FrameFolder::open(dir.path().join("absent"), 3).unwrap_err();
    assert!(e.to_string().contains("absent"), "{e}");
}

#[test]
fn non_utf8_file_names_open() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let clip = ucf_clip(dir.path());
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9 clip.avi"));
    std::fs::copy(&clip, &odd).unwrap();
    let mut r = open(&odd).unwrap();
    assert_eq!(r.num_frames(), 100);
    r.frames(&[50]).unwrap();
}
