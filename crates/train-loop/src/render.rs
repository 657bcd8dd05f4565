//! How training progress is shown. The trainer hands every step, summary and event to one
//! [`MetricsRenderer`] (burn's `MetricsRenderer` is the model) and never prints itself: on a
//! terminal [`LiveBar`] draws a bar per epoch with the events printed above it; elsewhere
//! (pipes, CI, files) [`PlainLines`] writes PaddleVideo's log lines. `metrics.jsonl` is
//! written apart from either, by the [`crate::metrics::Reporter`].

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::{EpochRecord, StepRecord};

/// Shows a run's progress to a person.
pub trait MetricsRenderer {
    /// Epoch `epoch` (1-based) of `epochs` starts, with `iters` iterations.
    fn epoch_start(&mut self, epoch: usize, epochs: usize, iters: usize);
    /// A training step; `log` when the recipe's `train.log_interval` is due.
    fn step(&mut self, r: &StepRecord, epochs: usize, log: bool);
    /// A training epoch's (`kind` "epoch") or a validation's ("val") summary.
    fn summary(&mut self, r: &EpochRecord);
    /// A checkpoint was written.
    fn checkpoint(&mut self, path: &Path);
    /// A message: set-up notes, precise BN, the best epoch so far.
    fn event(&mut self, msg: &str);
    /// A warning, such as a sample that failed to load.
    fn warn(&mut self, msg: &str);
}

/// [`LiveBar`] when stderr is a terminal, [`PlainLines`] otherwise.
pub fn for_stderr() -> Box<dyn MetricsRenderer> {
    if std::io::stderr().is_terminal() {
        Box::new(LiveBar::default())
    } else {
        Box::new(PlainLines)
    }
}

/// PaddleVideo's log lines on stdout (a step line every `log_interval` iterations, an `END`
/// line per epoch and validation), warnings on stderr: what logs and CI read.
#[derive(Debug)]
pub struct PlainLines;

impl MetricsRenderer for PlainLines {
    fn epoch_start(&mut self, _: usize, _: usize, _: usize) {}

    fn step(&mut self, r: &StepRecord, epochs: usize, log: bool) {
        if log {
            println!(
                "epoch:[{:>3}/{epochs}] train step:{:<5} loss: {:.5} lr: {:.6} top1: {:.5} \
                 top5: {:.5} batch_cost: {:.5} sec, reader_cost: {:.5} sec, ips: {:.5} instance/sec.",
                r.epoch, r.iter, r.loss, r.lr, r.top1, r.top5, r.batch_time, r.reader_time, r.ips
            );
        }
    }

    fn summary(&mut self, r: &EpochRecord) {
        println!(
            "END epoch:{:<3} {:<5} loss_avg: {:.5} top1_avg: {:.5} top5_avg: {:.5} \
             avg_batch_cost: {:.5} sec, avg_reader_cost: {:.5} sec, avg_ips: {:.5} instance/sec, \
             samples: {}, failed: {}",
            r.epoch,
            r.kind,
            r.loss,
            r.top1,
            r.top5,
            r.batch_time,
            r.reader_time,
            r.ips,
            r.samples,
            r.failed
        );
    }

    // The step lines already say how far training is; PaddleVideo logs no saves.
    fn checkpoint(&mut self, _: &Path) {}

    fn event(&mut self, msg: &str) {
        println!("{msg}");
    }

    fn warn(&mut self, msg: &str) {
        eprintln!("warning: {msg}");
    }
}

/// A live bar on stderr for the epoch in progress: iteration, loss, learning rate, top-1,
/// samples per second, and the time left in the epoch and in the run (its training steps, at
/// this epoch's pace); summaries, checkpoints, events and warnings are printed above it.
#[derive(Debug)]
pub struct LiveBar {
    bar: ProgressBar,
    /// Epochs after the current one.
    epochs_left: usize,
}

impl Default for LiveBar {
    fn default() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            epochs_left: 0,
        }
    }
}

impl LiveBar {
    /// Prints `line` above the bar.
    fn above(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }
}

impl MetricsRenderer for LiveBar {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, iters: usize) {
        self.epochs_left = epochs.saturating_sub(epoch);
        self.bar = ProgressBar::new(iters as u64).with_prefix(format!("epoch {epoch}/{epochs}"));
        // The template is fixed and valid; were it not, indicatif's default bar would do.
        if let Ok(style) = ProgressStyle::with_template("{prefix} {bar:24} {pos}/{len}  {msg}") {
            self.bar.set_style(style);
        }
    }

    fn step(&mut self, r: &StepRecord, _: usize, _: bool) {
        let done = r.iter as u64 + 1;
        let total = self.bar.length().unwrap_or(done).max(done);
        let per_iter = self.bar.elapsed().as_secs_f64() / done as f64;
        let epoch_left = (total - done) as f64 * per_iter;
        let run_left = epoch_left + (self.epochs_left as u64 * total) as f64 * per_iter;
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.6}  top1 {:.3}  ips {:.1}  ETA epoch {}, run {}",
            r.loss,
            r.lr,
            r.top1,
            r.ips,
            short(epoch_left),
            short(run_left)
        ));
        self.bar.set_position(done);
    }

    fn summary(&mut self, r: &EpochRecord) {
        let took = self.bar.elapsed();
        self.bar.finish_and_clear();
        let what = if r.kind == "val" {
            "validation".to_string()
        } else {
            format!("trained in {}", short(took.as_secs_f64()))
        };
        self.above(&format!(
            "epoch {}: {what}: loss {:.4}  top1 {:.4}  top5 {:.4}  ips {:.1}  ({} samples, {} failed)",
            r.epoch, r.loss, r.top1, r.top5, r.ips, r.samples, r.failed
        ));
    }

    fn checkpoint(&mut self, path: &Path) {
        self.above(&format!("checkpoint: {}", path.display()));
    }

    fn event(&mut self, msg: &str) {
        self.above(msg);
    }

    fn warn(&mut self, msg: &str) {
        self.above(&format!("warning: {msg}"));
    }
}

/// `1h02m`, `3m05s`, `12s`: time left at a glance.
fn short(secs: f64) -> String {
    let s = Duration::try_from_secs_f64(secs)
        .unwrap_or_default()
        .as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn times_left_read_at_a_glance() {
        assert_eq!(short(0.4), "0s");
        assert_eq!(short(12.0), "12s");
        assert_eq!(short(185.0), "3m05s");
        assert_eq!(short(3720.0), "1h02m");
        assert_eq!(short(-1.0), "0s");
        assert_eq!(short(f64::NAN), "0s");
    }
}
