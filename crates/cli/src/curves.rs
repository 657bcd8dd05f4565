//! `tsm-cli plot`: training curves (loss, learning rate, top-1, top-5; training and validation)
//! from a run directory's `metrics.jsonl`, drawn as one PNG. `tsm-cli train` draws it too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::chart::SeriesLabelPosition;
use plotters::style::RGBColor;
use serde::{Deserialize, Deserializer};

use crate::plot::{line_charts_png, Panel, Series};
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Example:
  tsm-cli plot output/pptsm_ucf101
  tsm-cli plot target/demo/run --out curves.png

Reads RUN_DIR/metrics.jsonl (written by `tsm-cli train`) and draws four charts against the epoch:
the loss (every training step, the training epoch's mean, validation), the learning rate of every
step, and top-1 and top-5 accuracy (training epoch mean, validation). A diverged (NaN) loss shows
as a gap.";

/// The file name `train` and `plot` write in the run directory.
pub const CURVES_PNG: &str = "curves.png";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A training run directory (the one holding metrics.jsonl).
    run_dir: PathBuf,
    /// Where to write the PNG (default: RUN_DIR/curves.png).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args, _global: &Global) -> Result<Outcome> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join(CURVES_PNG));
    write(&args.run_dir, &out)?;
    println!("training curves: {}", out.display());
    Ok(Outcome::Success)
}

/// One line of `metrics.jsonl` (train-loop's `StepRecord` or `EpochRecord`; other fields are
/// not needed here).
#[derive(Debug, Deserialize)]
struct Record {
    kind: String,
    epoch: usize,
    #[serde(default)]
    iter: Option<usize>,
    #[serde(deserialize_with = "number_or_nan")]
    loss: f64,
    #[serde(default, deserialize_with = "option_number_or_nan")]
    lr: Option<f64>,
    #[serde(deserialize_with = "number_or_nan")]
    top1: f64,
    #[serde(deserialize_with = "number_or_nan")]
    top5: f64,
}

/// serde_json writes a NaN (a diverged loss) as `null`: read it back as NaN.
fn number_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn option_number_or_nan<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Some(number_or_nan(d)?))
}

/// An epoch-level point: loss, top-1, top-5 at the end of `epoch`.
#[derive(Debug, Clone, Copy)]
struct EpochPoint {
    epoch: f64,
    loss: f64,
    top1: f64,
    top5: f64,
}

/// The series of a run.
#[derive(Debug, Default)]
struct Curves {
    /// Per step: (epoch, iteration, loss, lr).
    steps: Vec<(usize, usize, f64, f64)>,
    train: Vec<EpochPoint>,
    val: Vec<EpochPoint>,
}

fn read(path: &Path) -> Result<Curves> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut c = Curves::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let r: Record = serde_json::from_str(line)
            .with_context(|| format!("{}: not a metrics record", at()))?;
        let point = EpochPoint {
            epoch: r.epoch as f64,
            loss: r.loss,
            top1: r.top1,
            top5: r.top5,
        };
        match r.kind.as_str() {
            "step" => {
                let (Some(iter), Some(lr)) = (r.iter, r.lr) else {
                    bail!("{}: a step record without `iter` and `lr`", at());
                };
                c.steps.push((r.epoch, iter, r.loss, lr));
            }
            "epoch" => c.train.push(point),
            "val" => c.val.push(point),
            other => bail!(
                "{}: unknown record kind `{other}` (expected step, epoch or val)",
                at()
            ),
        }
    }
    if c.steps.is_empty() && c.train.is_empty() && c.val.is_empty() {
        bail!("{}: no training records", path.display());
    }
    Ok(c)
}

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const STEP: RGBColor = RGBColor(174, 199, 232);

/// Draws the curves of the run in `run_dir` into `out`.
pub fn write(run_dir: &Path, out: &Path) -> Result<()> {
    let c = read(&run_dir.join("metrics.jsonl"))?;
    // A step's x: its epoch's start plus the fraction of that epoch's steps done.
    let mut per_epoch: BTreeMap<usize, usize> = BTreeMap::new();
    for &(epoch, ..) in &c.steps {
        *per_epoch.entry(epoch).or_default() += 1;
    }
    let step_x = |epoch: usize, iter: usize| {
        (epoch as f64 - 1.0) + (iter as f64 + 1.0) / per_epoch[&epoch].max(iter + 1) as f64
    };
    let steps = |f: fn(&(usize, usize, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        c.steps.iter().map(|s| (step_x(s.0, s.1), f(s))).collect()
    };
    let epoch_series = |name, color, points: &[EpochPoint], f: fn(&EpochPoint) -> f64| Series {
        name,
        color,
        points: points.iter().map(|p| (p.epoch, f(p))).collect(),
        markers: true,
    };
    let x_max = c
        .train
        .iter()
        .chain(&c.val)
        .map(|p| p.epoch)
        .chain(c.steps.iter().map(|s| s.0 as f64))
        .fold(0.0, f64::max);
    let panels = [
        Panel {
            title: "loss",
            legend: SeriesLabelPosition::UpperRight,
            y_range: None,
            series: vec![
                Series {
                    name: "train (step)",
                    color: STEP,
                    points: steps(|s| s.2),
                    markers: false,
                },
                epoch_series("train", TRAIN, &c.train, |p| p.loss),
                epoch_series("val", VAL, &c.val, |p| p.loss),
            ],
        },
        Panel {
            title: "learning rate",
            legend: SeriesLabelPosition::UpperRight,
            y_range: None,
            series: vec![Series {
                name: "lr",
                color: TRAIN,
                points: steps(|s| s.3),
                markers: false,
            }],
        },
        Panel {
            title: "top-1 accuracy",
            legend: SeriesLabelPosition::LowerRight,
            y_range: Some((0.0, 1.0)),
            series: vec![
                epoch_series("train", TRAIN, &c.train, |p| p.top1),
                epoch_series("val", VAL, &c.val, |p| p.top1),
            ],
        },
        Panel {
            title: "top-5 accuracy",
            legend: SeriesLabelPosition::LowerRight,
            y_range: Some((0.0, 1.0)),
            series: vec![
                epoch_series("train", TRAIN, &c.train, |p| p.top5),
                epoch_series("val", VAL, &c.val, |p| p.top5),
            ],
        },
    ];
    // The first best, as the trainer picks it.
    let mut best: Option<&EpochPoint> = None;
    for p in c.val.iter().filter(|p| p.top1.is_finite()) {
        if best.is_none_or(|b| p.top1 > b.top1) {
            best = Some(p);
        }
    }
    let title = match best {
        Some(b) => format!(
            "{}: best val top-1 {:.3} at epoch {}",
            run_dir.display(),
            b.top1,
            b.epoch
        ),
        None => run_dir.display().to_string(),
    };
    line_charts_png(out, &title, x_max, &panels)
}
