//! `tsm-cli predict`: the top-k classes of each video, as text or JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use train_loop::classify::VideoResult;
use video_io::SampleLocation;

use crate::common::{classifier, clips_bar, collect_videos, top_k, InferenceArgs, ViewArgs};
use crate::labels::Labels;
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  tsm-cli predict --weights pptsm_k400.safetensors --labels assets/labels/kinetics400.txt clip.mp4
  tsm-cli predict --weights ucf101.safetensors --labels assets/labels/ucf101_classInd.txt \\
      --json --topk 3 videos/ > predictions.jsonl

Output: per video its path, then rank, score and class. With --json, one object per line:
{\"path\": ..., \"topk\": [{\"class\": 3, \"label\": \"name\" or null, \"score\": 0.93}, ...]};
a video that cannot be read gives {\"path\": ..., \"error\": ...}. Exit status 2 when some
videos could not be read (listed on stderr), 0 when all were classified.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint (safetensors with the model config in its metadata).
    #[arg(long)]
    weights: PathBuf,
    /// Class names: one per line, or `index name` lines (UCF101's classInd.txt).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Classes shown per video (the number of classes shows the full distribution).
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// JSON lines on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Clips per forward pass (videos are decoded in parallel to fill it).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    inference: InferenceArgs,
    #[command(flatten)]
    views: ViewArgs,
    /// Videos, or folders searched recursively for videos.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let (videos, empty_dirs) = collect_videos(&args.inputs)?;
    let classifier = classifier(
        &args.weights,
        global,
        &args.inference,
        &args.views,
        args.batch,
    )?;
    let labels = Labels::load(
        args.labels.as_ref(),
        classifier.model().config().num_classes,
        &args.weights,
    )?;
    let started = Instant::now();
    let mut failed = Vec::new();
    for dir in &empty_dirs {
        let reason = "no video files in this folder (a folder of frames needs `tsm-cli eval \
                      --format frames`)";
        if args.json {
            println!(
                "{}",
                json!({"path": dir.display().to_string(), "error": reason})
            );
        }
        eprintln!("tsm-cli: skipped {}: {reason}", dir.display());
        failed.push(dir);
    }
    let per_video = classifier.clips_per_video();
    let bar = clips_bar((videos.len() * per_video) as u64);
    for chunk in videos.chunks(classifier.videos_per_step()) {
        let locations: Vec<_> = chunk.iter().cloned().map(SampleLocation::Video).collect();
        let results = classifier.classify(&locations)?;
        // The bar is taken off the terminal while results and warnings are written.
        bar.suspend(|| write_results(chunk, results, &args, &labels, &mut failed))?;
        bar.inc((chunk.len() * per_video) as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let inputs = videos.len() + empty_dirs.len();
    eprintln!(
        "predicted {} of {} videos in {secs:.1} s ({:.1} clips/s){}",
        inputs - failed.len(),
        inputs,
        ((inputs - failed.len()) * classifier.clips_per_video()) as f64 / secs.max(1e-9),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", failed.len())
        }
    );
    Ok(if failed.is_empty() {
        Outcome::Success
    } else {
        Outcome::SomeInputsFailed
    })
}

/// Writes a chunk's results to stdout (the failures to stderr too) and adds the failed paths
/// to `failed`.
fn write_results<'a>(
    chunk: &'a [PathBuf],
    results: Vec<VideoResult>,
    args: &Args,
    labels: &Labels,
    failed: &mut Vec<&'a PathBuf>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (path, result) in chunk.iter().zip(results) {
        match result {
            Ok(probs) => {
                let best = top_k(&probs, args.topk);
                if args.json {
                    let topk: Vec<_> = best
                        .iter()
                        .map(|&c| json!({"class": c, "label": labels.get(c), "score": probs[c]}))
                        .collect();
                    writeln!(
                        out,
                        "{}",
                        json!({"path": path.display().to_string(), "topk": topk})
                    )?;
                } else {
                    writeln!(out, "{}", path.display())?;
                    for (rank, &c) in best.iter().enumerate() {
                        writeln!(
                            out,
                            "  {:>2}. {:.4}  {}",
                            rank + 1,
                            probs[c],
                            labels.display(c)
                        )?;
                    }
                }
            }
            Err(reason) => {
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"path": path.display().to_string(), "error": reason})
                    )?;
                }
                eprintln!("tsm-cli: skipped {}: {reason}", path.display());
                failed.push(path);
            }
        }
    }
    out.flush()?;
    Ok(())
}
