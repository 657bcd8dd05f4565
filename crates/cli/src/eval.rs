//! `tsm-cli eval`: accuracy on an index list, per-video predictions, a confusion matrix.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use video_io::{read_list, ListEntry, ListFormat, ListOptions};

use crate::common::{classifier, clips_bar, top_k, InferenceArgs, ViewArgs};
use crate::labels::Labels;
use crate::{plot, Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  # UCF101 split 1, the tutorial's single view
  tsm-cli eval --weights ucf101.safetensors --list ucfTrainTestlist/testlist01_labels.txt \\
      --root UCF-101 --suffix .avi --labels assets/labels/ucf101_classInd.txt --out eval-ucf
  # PaddleVideo's dense test: 10 clips x 3 crops per video, scores averaged
  tsm-cli eval --weights pptsm_k400.safetensors --list val.list --root k400/videos \\
      --views dense --clips 10 --crops 3 --labels assets/labels/kinetics400.txt --out eval-k400

The list has `path label` lines (`path num_frames label` with --format frames), labels
counted from 0. Prints top-1, top-5 and mean class accuracy. With --out DIR it writes
predictions.csv (or .jsonl), confusion.csv, confusion.png, metrics.json and, when some videos
failed, failed.txt. Videos that fail to decode are listed, counted and left out of the
accuracy; the exit status is then 2.";

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredFormat {
    Csv,
    Jsonl,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `path label` lines naming video files.
    Videos,
    /// `path num_frames label` lines naming folders of img_00001.jpg... frames.
    Frames,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint (safetensors with the model config in its metadata).
    #[arg(long)]
    weights: PathBuf,
    /// Index list of the samples and their labels (PaddleVideo's format).
    #[arg(long)]
    list: PathBuf,
    /// Folder the list's relative paths start from.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Appended to list paths that lack it (UCF101 lists omit `.avi`).
    #[arg(long, default_value = "")]
    suffix: String,
    /// What the list's lines name.
    #[arg(long, value_enum, default_value_t = Format::Videos)]
    format: Format,
    /// Class names, for the outputs and the confusion matrix picture.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Folder for predictions, confusion matrix (CSV and PNG) and metrics.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Format of the per-video predictions in --out.
    #[arg(long, value_enum, default_value_t = PredFormat::Csv)]
    predictions: PredFormat,
    /// Clips per forward pass (videos are decoded in parallel to fill it).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    inference: InferenceArgs,
    #[command(flatten)]
    views: ViewArgs,
}

/// One evaluated video.
struct Prediction {
    entry: ListEntry,
    probs: Vec<f32>,
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let format = match args.format {
        Format::Videos => ListFormat::Videos,
        Format::Frames => ListFormat::Frames,
    };
    let opts = ListOptions {
        root: args.root.clone(),
        suffix: args.suffix.clone(),
    };
    let entries = read_list(&args.list, format, &opts)?;
    if entries.is_empty() {
        bail!("{}: the list has no samples", args.list.display())
    }
    check_exist(&args.list, &entries)?;
    let classifier = classifier(
        &args.weights,
        global,
        &args.inference,
        &args.views,
        args.batch,
    )?;
    let classes = classifier.model().config().num_classes;
    if let Some(e) = entries.iter().find(|e| e.label >= classes) {
        bail!(
            "{}:{}: label {} is out of range for the model's {classes} classes (labels count from 0)",
            args.list.display(),
            e.line,
            e.label
        )
    }
    let labels = Labels::load(args.labels.as_ref(), classes, &args.weights)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let per_video = classifier.clips_per_video();
    let bar = clips_bar((entries.len() * per_video) as u64);
    let started = Instant::now();
    let mut done = Vec::with_capacity(entries.len());
    let mut failed = Vec::new();
    for chunk in entries.chunks(classifier.videos_per_step()) {
        let locations: Vec<_> = chunk.iter().map(|e| e.location.clone()).collect();
        for (entry, result) in chunk.iter().zip(classifier.classify(&locations)?) {
            match result {
                Ok(probs) => done.push(Prediction {
                    entry: entry.clone(),
                    probs,
                }),
                Err(reason) => failed.push((entry.clone(), reason)),
            }
        }
        bar.inc((chunk.len() * per_video) as u64);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let clips_per_s = (done.len() * per_video) as f64 / secs.max(1e-9);

    let metrics = Metrics::new(&done, classes);
    for (e, reason) in &failed {
        eprintln!(
            "tsm-cli: skipped {}:{} {}: {reason}",
            args.list.display(),
            e.line,
            e.location.path().display()
        );
    }
    println!(
        "evaluated {} of {} videos ({} clips each) in {secs:.1} s, {clips_per_s:.1} clips/s",
        done.len(),
        entries.len(),
        per_video
    );
    if !failed.is_empty() {
        println!(
            "failed: {} videos (listed above, excluded from the accuracy)",
            failed.len()
        );
    }
    println!(
        "top-1: {:.4} ({}/{})",
        metrics.top1,
        metrics.correct,
        done.len()
    );
    println!("top-5: {:.4}", metrics.top5);
    println!(
        "mean class accuracy: {:.4} (over {} classes present)",
        metrics.mean_class, metrics.classes_present
    );

    if let Some(dir) = &args.out {
        let summary = json!({
            "weights": args.weights.display().to_string(),
            "list": args.list.display().to_string(),
            "videos": entries.len(),
            "evaluated": done.len(),
            "failed": failed.len(),
            "top1": metrics.top1,
            "top5": metrics.top5,
            "mean_class_accuracy": metrics.mean_class,
            "clips_per_video": per_video,
            "clips_per_second": clips_per_s,
        });
        write_outputs(dir, &args, &labels, &done, &failed, &metrics, &summary)?;
        println!("wrote {}", dir.display());
    }
    Ok(if failed.is_empty() {
        Outcome::Success
    } else {
        Outcome::SomeInputsFailed
    })
}

/// A missing file means a wrong --root or --suffix more often than a bad video: stop before
/// spending time on the others.
fn check_exist(list: &Path, entries: &[ListEntry]) -> Result<()> {
    let missing: Vec<_> = entries
        .iter()
        .filter(|e| !e.location.path().exists())
        .collect();
    if let Some(first) = missing.first() {
        let more = match missing.len() {
            1 => String::new(),
            n => format!(" (and {} more missing; check --root and --suffix)", n - 1),
        };
        bail!(
            "{}:{}: {} does not exist{more}",
            list.display(),
            first.line,
            first.location.path().display()
        )
    }
    Ok(())
}

/// Accuracy figures and the confusion matrix (rows: true class, columns: predicted).
struct Metrics {
    correct: usize,
    top1: f64,
    top5: f64,
    mean_class: f64,
    classes_present: usize,
    confusion: Vec<Vec<u64>>,
}

impl Metrics {
    fn new(done: &[Prediction], classes: usize) -> Self {
        let mut confusion = vec![vec![0u64; classes]; classes];
        let (mut correct, mut in_top5) = (0, 0);
        for p in done {
            let best = top_k(&p.probs, 5);
            confusion[p.entry.label][best[0]] += 1;
            correct += usize::from(best[0] == p.entry.label);
            in_top5 += usize::from(best.contains(&p.entry.label));
        }
        // MMAction2's mean class accuracy: the mean recall over classes that have samples.
        let recalls: Vec<f64> = confusion
            .iter()
            .enumerate()
            .filter_map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f64 / total as f64)
            })
            .collect();
        let n = done.len().max(1) as f64;
        Self {
            correct,
            top1: correct as f64 / n,
            top5: in_top5 as f64 / n,
            mean_class: recalls.iter().sum::<f64>() / recalls.len().max(1) as f64,
            classes_present: recalls.len(),
            confusion,
        }
    }
}

fn write_outputs(
    dir: &Path,
    args: &Args,
    labels: &Labels,
    done: &[Prediction],
    failed: &[(ListEntry, String)],
    metrics: &Metrics,
    summary: &serde_json::Value,
) -> Result<()> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let mut preds = String::new();
    match args.predictions {
        PredFormat::Csv => {
            preds.push_str("path,line,label,label_name,pred,pred_name,score,top5\n");
            for p in done {
                let best = top_k(&p.probs, 5);
                let top5: Vec<String> = best.iter().map(usize::to_string).collect();
                writeln!(
                    preds,
                    "{},{},{},{},{},{},{:.6},{}",
                    csv(&p.entry.location.path().display().to_string()),
                    p.entry.line,
                    p.entry.label,
                    csv(&labels.display(p.entry.label)),
                    best[0],
                    csv(&labels.display(best[0])),
                    p.probs[best[0]],
                    top5.join(" ")
                )?;
            }
        }
        PredFormat::Jsonl => {
            for p in done {
                let best = top_k(&p.probs, 5);
                let topk: Vec<_> = best
                    .iter()
                    .map(|&c| json!({"class": c, "label": labels.get(c), "score": p.probs[c]}))
                    .collect();
                let row = json!({
                    "path": p.entry.location.path().display().to_string(),
                    "line": p.entry.line,
                    "label": p.entry.label,
                    "pred": best[0],
                    "topk": topk,
                });
                writeln!(preds, "{row}")?;
            }
        }
    }
    let ext = match args.predictions {
        PredFormat::Csv => "csv",
        PredFormat::Jsonl => "jsonl",
    };
    write(&format!("predictions.{ext}"), preds)?;

    let classes = metrics.confusion.len();
    let names: Vec<String> = (0..classes).map(|c| labels.display(c)).collect();
    let mut cm = String::from("true\\predicted");
    for n in &names {
        write!(cm, ",{}", csv(n))?;
    }
    cm.push('\n');
    for (n, row) in names.iter().zip(&metrics.confusion) {
        cm.push_str(&csv(n));
        for v in row {
            write!(cm, ",{v}")?;
        }
        cm.push('\n');
    }
    write("confusion.csv", cm)?;
    plot::confusion_png(&dir.join("confusion.png"), &metrics.confusion, &names)?;

    write("metrics.json", format!("{summary:#}\n"))?;
    if !failed.is_empty() {
        let mut text = String::new();
        for (e, reason) in failed {
            writeln!(
                text,
                "{}:{}\t{}\t{reason}",
                args.list.display(),
                e.line,
                e.location.path().display()
            )?;
        }
        write("failed.txt", text)?;
    }
    Ok(())
}

/// A CSV field, quoted when it needs to be.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use video_io::SampleLocation;

    fn pred(label: usize, probs: &[f32]) -> Prediction {
        Prediction {
            entry: ListEntry {
                location: SampleLocation::Video("v.mp4".into()),
                label,
                line: 1,
            },
            probs: probs.to_vec(),
        }
    }

    #[test]
    fn metrics_count_as_mmaction_does() {
        let done = [
            pred(0, &[0.9, 0.1, 0.0]),
            pred(0, &[0.2, 0.8, 0.0]),
            pred(0, &[0.6, 0.3, 0.1]),
            pred(1, &[0.1, 0.7, 0.2]),
        ];
        let m = Metrics::new(&done, 3);
        assert_eq!(m.correct, 3);
        assert!((m.top1 - 0.75).abs() < 1e-12);
        assert!((m.top5 - 1.0).abs() < 1e-12);
        // class 0: 2/3, class 1: 1/1, class 2 absent
        assert!((m.mean_class - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert_eq!(m.classes_present, 2);
        assert_eq!(
            m.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![0, 0, 0]]
        );
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv("tai chi"), "tai chi");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
