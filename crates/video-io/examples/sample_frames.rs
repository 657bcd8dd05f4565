//! Decodes the frames a clip samples from each video given, and reports what it did:
//! `cargo run --release -p video-io --example sample_frames -- [--train] VIDEO...`

use std::time::Instant;

use rand::SeedableRng;
use video_io::{read_clip, DecodeOptions, FrameSource, SampleLocation, SampleMode, Sampling};

fn main() {
    let mut mode = SampleMode::Valid;
    let mut files = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--train" => mode = SampleMode::Train,
            _ => files.push(a),
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let start = Instant::now();
    let mut ok = 0usize;
    for f in &files {
        let t = Instant::now();
        let result = FrameSource::open(&SampleLocation::Video(f.into()), DecodeOptions::default())
            .and_then(|mut s| read_clip(&mut s, &Sampling::default(), mode, &mut rng));
        match result {
            Ok(clip) => {
                ok += 1;
                println!(
                    "{f}: {} frames, sampled {:?} in {:.1} ms",
                    clip.frames_len,
                    clip.indices,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{ok}/{} clips in {secs:.2} s: {:.1} clips/s",
        files.len(),
        ok as f64 / secs
    );
}
