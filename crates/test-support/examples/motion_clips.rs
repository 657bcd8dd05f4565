//! Writes the motion data set (see `test_support::motion`): classes that differ only in frame
//! order, as short videos with PaddleVideo `path label` lists and a label file.
//!
//! ```sh
//! cargo run --release -p test-support --example motion_clips -- --out target/demo/data
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use test_support::motion::{generate, Motion, MotionSpec};

#[derive(Parser, Debug)]
#[command(about = "Generate clips whose classes differ only in frame order")]
struct Args {
    /// Output folder (labels.txt, train.txt, val.txt, train/, val/).
    #[arg(long)]
    out: PathBuf,
    /// Frame width and height in pixels (even).
    #[arg(long, default_value_t = MotionSpec::default().size)]
    size: u32,
    /// Frames per clip: the model's segment count, so every frame is sampled.
    #[arg(long, default_value_t = MotionSpec::default().frames)]
    frames: usize,
    /// Training clips per class.
    #[arg(long, default_value_t = MotionSpec::default().train_per_class)]
    train_per_class: usize,
    /// Validation clips per class.
    #[arg(long, default_value_t = MotionSpec::default().val_per_class)]
    val_per_class: usize,
    /// The motion pairs, comma-separated (horizontal, vertical, scale, rotation): two classes
    /// each, the motion and its reversal [default: horizontal,scale].
    #[arg(long, value_delimiter = ',')]
    motions: Vec<Motion>,
    /// Seeds every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let spec = MotionSpec {
        size: a.size,
        frames: a.frames,
        train_per_class: a.train_per_class,
        val_per_class: a.val_per_class,
        seed: a.seed,
        ..MotionSpec::default()
    };
    let spec = if a.motions.is_empty() {
        spec
    } else {
        MotionSpec {
            motions: a.motions,
            ..spec
        }
    };
    let started = Instant::now();
    match generate(&spec, &a.out) {
        Ok(set) => {
            println!(
                "motion clips: {} classes, {} train + {} val clips of {} frames at {}x{} in {} ({:.1}s)",
                set.classes,
                set.classes * a.train_per_class,
                set.classes * a.val_per_class,
                a.frames,
                a.size,
                a.size,
                set.root.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("motion_clips: error: writing {}: {e}", a.out.display());
            ExitCode::FAILURE
        }
    }
}
