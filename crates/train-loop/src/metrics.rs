//! Running averages and the run's outputs: plain log lines (PaddleVideo's fields) and
//! `metrics.jsonl`, one JSON object per step, epoch and validation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io, Result};

/// A weighted running mean.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    sum: f64,
    weight: f64,
}

impl Mean {
    /// Adds `value` with `weight`.
    pub fn add(&mut self, value: f64, weight: f64) {
        self.sum += value * weight;
        self.weight += weight;
    }

    /// The mean (0 when empty).
    pub fn get(&self) -> f64 {
        if self.weight > 0.0 {
            self.sum / self.weight
        } else {
            0.0
        }
    }

    /// Total weight.
    pub fn weight(&self) -> f64 {
        self.weight
    }
}

/// One training step's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// `"step"`.
    pub kind: &'static str,
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Iteration in the epoch, 0-based.
    pub iter: usize,
    /// Optimizer steps taken, this one included.
    pub global_step: u64,
    /// Training loss.
    pub loss: f64,
    /// Learning rate the step used (before multipliers).
    pub lr: f64,
    /// Top-1 accuracy of the batch (lam-weighted under mixup).
    pub top1: f64,
    /// Top-5 accuracy of the batch.
    pub top5: f64,
    /// Seconds from the previous step's end to this one's.
    pub batch_time: f64,
    /// Seconds of that spent waiting for the batch.
    pub reader_time: f64,
    /// Samples per second.
    pub ips: f64,
}

/// An epoch's (or a validation's) summary.
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    /// `"epoch"` (training) or `"val"`.
    pub kind: &'static str,
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Mean loss.
    pub loss: f64,
    /// Mean top-1.
    pub top1: f64,
    /// Mean top-5.
    pub top5: f64,
    /// Mean seconds per batch.
    pub batch_time: f64,
    /// Mean seconds per batch spent waiting for data.
    pub reader_time: f64,
    /// Samples per second.
    pub ips: f64,
    /// Samples used.
    pub samples: usize,
    /// Samples that failed to load and were skipped.
    pub failed: usize,
}

/// The running means a training epoch or a validation pass reports.
#[derive(Debug, Default)]
pub struct EpochMeters {
    /// Loss, weighted by samples.
    pub loss: Mean,
    /// Top-1, weighted by samples.
    pub top1: Mean,
    /// Top-5, weighted by samples.
    pub top5: Mean,
    /// Seconds per batch.
    pub batch: Mean,
    /// Seconds per batch spent waiting for data.
    pub reader: Mean,
}

impl EpochMeters {
    /// The summary record of `samples` used and `failed` skipped samples.
    pub fn record(
        &self,
        kind: &'static str,
        epoch: usize,
        global_step: u64,
        samples: usize,
        failed: usize,
    ) -> EpochRecord {
        EpochRecord {
            kind,
            epoch,
            global_step,
            loss: self.loss.get(),
            top1: self.top1.get(),
            top5: self.top5.get(),
            batch_time: self.batch.get(),
            reader_time: self.reader.get(),
            ips: samples as f64 / (self.batch.get() * self.batch.weight()).max(1e-9),
            samples,
            failed,
        }
    }
}

/// Writes log lines to stdout and records to `metrics.jsonl`; in a data-parallel job only
/// rank 0 does, the other ranks print their own warnings only.
#[derive(Debug)]
pub struct Reporter {
    jsonl: Option<(PathBuf, File)>,
    warn_prefix: String,
}

impl Reporter {
    /// Opens `dir/metrics.jsonl` for appending; when resuming at `resume_step`, records of later
    /// steps (from the interrupted epoch, to be redone) are dropped first.
    pub fn open(dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        if let Some(step) = resume_step {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v.get("global_step").and_then(|s| s.as_u64()))
                            .is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(&path, kept).map_err(io(&path))?;
            }
        } else if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self {
            jsonl: Some((path, jsonl)),
            warn_prefix: String::new(),
        })
    }

    /// The reporter of a rank other than 0: no output but its warnings, which name the rank.
    pub fn silent(rank: usize) -> Self {
        Self {
            jsonl: None,
            warn_prefix: format!("rank {rank}: "),
        }
    }

    fn record(&mut self, value: &impl Serialize) -> Result<()> {
        let Some((path, file)) = &mut self.jsonl else {
            return Ok(());
        };
        let mut line = serde_json::to_string(value).unwrap_or_default();
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(io(path))
    }

    /// A step: recorded always, printed when `print`.
    pub fn step(&mut self, r: &StepRecord, epochs: usize, print: bool) -> Result<()> {
        if print && self.jsonl.is_some() {
            println!(
                "epoch:[{:>3}/{epochs}] train step:{:<5} loss: {:.5} lr: {:.6} top1: {:.5} \
                 top5: {:.5} batch_cost: {:.5} sec, reader_cost: {:.5} sec, ips: {:.5} instance/sec.",
                r.epoch, r.iter, r.loss, r.lr, r.top1, r.top5, r.batch_time, r.reader_time, r.ips
            );
        }
        self.record(r)
    }

    /// An epoch or validation summary, printed and recorded.
    pub fn epoch(&mut self, r: &EpochRecord) -> Result<()> {
        if self.jsonl.is_none() {
            return Ok(());
        }
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
        self.record(r)
    }

    /// A message line (stdout).
    pub fn info(&self, msg: &str) {
        if self.jsonl.is_some() {
            println!("{msg}");
        }
    }

    /// A warning line (stderr), e.g. a sample that failed to load.
    pub fn warn(&self, msg: &str) {
        eprintln!("warning: {}{msg}", self.warn_prefix);
    }
}
