//! The frames we sample are the frames the tutorial's pipeline (OpenCV decoding every frame,
//! then its `Sampler`) picks: same count, same indices, same pixels.
//! Reference: `tests/reference/tutorial_decode.py`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use test_support::{max_abs_diff, mean_abs_diff, read_json, read_safetensors, reference_dir};
use video_io::{DecodeOptions, SampleMode, Sampling, VideoReader};

const TSM8: Sampling = Sampling::Segments {
    num_seg: 8,
    seg_len: 1,
};

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// (video name, its path, its reference record).
fn cases() -> Vec<(String, PathBuf, serde_json::Value)> {
    let dir = reference_dir("tutorial_decode");
    let summary = read_json(&dir.join("decode.json"));
    summary
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, rec)| {
            let p = PathBuf::from(rec["path"].as_str().unwrap());
            let path = if p.is_absolute() { p } else { dir.join(p) };
            (name.clone(), path, rec.clone())
        })
        .collect()
}

fn check_frames(name: &str, images: &[image::RgbImage], reference: &test_support::RefTensor) {
    assert_eq!(reference.shape[0], images.len(), "{name}");
    let (h, w) = (reference.shape[1], reference.shape[2]);
    let per = h * w * 3;
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            (img.height() as usize, img.width() as usize),
            (h, w),
            "{name} frame {i}"
        );
        let (raw, want) = (&img.as_raw()[..], &reference.data[i * per..(i + 1) * per]);
        let (mean, max) = (mean_abs_diff(raw, want), max_abs_diff(raw, want));
        // Same FFmpeg decoders; the YUV->RGB conversion may round differently by a level.
        assert!(
            mean < 0.5 && max <= 8.0,
            "{name} frame {i}: mean {mean}, max {max}"
        );
    }
}

#[test]
fn frame_counts_indices_and_pixels_match_the_tutorial() {
    let cases = cases();
    assert!(cases.len() >= 8, "expected the shared and generated videos");
    for (name, path, rec) in cases {
        let mut reader = VideoReader::open(&path, DecodeOptions::default()).unwrap();
        let frames_len = rec["frames_len"].as_u64().unwrap() as usize;
        assert_eq!(reader.num_frames(), frames_len, "{name}: frame count");

        let valid = TSM8
            .indices_with_choices(frames_len, SampleMode::Valid, &[])
            .unwrap();
        assert_eq!(
            valid,
            usizes(&rec["valid_indices"]),
            "{name}: valid indices"
        );
        let train = TSM8
            .indices_with_choices(frames_len, SampleMode::Train, &usizes(&rec["train_draws"]))
            .unwrap();
        assert_eq!(
            train,
            usizes(&rec["train_indices"]),
            "{name}: train indices"
        );

        let reference =
            read_safetensors(&reference_dir("tutorial_decode").join(format!("{name}.safetensors")));
        check_frames(
            &name,
            &reader.frames(&valid).unwrap(),
            &reference["valid_frames"],
        );
        check_frames(
            &name,
            &reader.frames(&train).unwrap(),
            &reference["train_frames"],
        );
        assert!(
            !reader.is_sequential(),
            "{name}: fell back to sequential decoding"
        );
    }
}

#[test]
fn any_order_and_repeats_give_the_same_frames_as_one_sequential_pass() {
    for (name, path, rec) in cases() {
        let n = rec["frames_len"].as_u64().unwrap() as usize;
        // Backwards, with repeats and both ends: exercises seeking back and reuse.
        let idx: Vec<usize> = [n - 1, 0, n / 2, n / 2, 1, n - 2, n / 3]
            .iter()
            .map(|&i| i.min(n - 1))
            .collect();
        let mut fast = VideoReader::open(&path, DecodeOptions::default()).unwrap();
        let got = fast.frames(&idx).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            // One frame per fresh reader: forward decode from the start, no seek decisions.
            let mut single = VideoReader::open(&path, DecodeOptions::default()).unwrap();
            let expect = single.frames(&[i]).unwrap();
            assert!(
                got[k] == expect[0],
                "{name}: frame {i} differs when read out of order"
            );
        }
    }
}

#[test]
fn sampling_decodes_only_from_the_keyframe_before_each_frame() {
    for (name, path, rec) in cases() {
        let frames_len = rec["frames_len"].as_u64().unwrap() as usize;
        let mut reader = VideoReader::open(&path, DecodeOptions::default()).unwrap();
        let valid = TSM8
            .indices_with_choices(frames_len, SampleMode::Valid, &[])
            .unwrap();
        reader.frames(&valid).unwrap();
        let stats = reader.stats();
        // Never more than one pass over the video (a seek that lands on an earlier keyframe
        // than asked would decode the start again).
        assert!(
            stats.packets_decoded <= frames_len,
            "{name}: {stats:?} for {frames_len} frames"
        );
        if name.starts_with("ucf_") {
            // Keyframe every 12 frames: at most 12 packets per sampled frame, well under a
            // full decode.
            assert!(stats.packets_decoded <= 8 * 12, "{name}: {stats:?}");
            assert!(
                stats.packets_decoded < frames_len * 6 / 10,
                "{name}: {stats:?}"
            );
        }
    }
}
