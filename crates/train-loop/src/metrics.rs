//! Running averages and the run's outputs: `metrics.jsonl`, one JSON object per step, epoch
//! and validation, and what a person sees, drawn by a [`MetricsRenderer`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{io, Result};
use crate::render::{self, MetricsRenderer};

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

/// Records every step, epoch and validation to `metrics.jsonl` and hands them to the run's
/// renderer; in a data-parallel job only rank 0 does, the other ranks print their own
/// warnings only.
pub struct Reporter {
    jsonl: Option<(PathBuf, File)>,
    /// `None` on ranks other than 0.
    renderer: Option<Box<dyn MetricsRenderer>>,
    warn_prefix: String,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("jsonl", &self.jsonl.as_ref().map(|(p, _)| p))
            .field("warn_prefix", &self.warn_prefix)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Opens `dir/metrics.jsonl` for appending, rendering with [`render::for_stderr`]; when
    /// resuming at `resume_step`, records of later steps (from the interrupted epoch, to be
    /// redone) are dropped first.
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
            renderer: Some(render::for_stderr()),
            warn_prefix: String::new(),
        })
    }

    /// The reporter of a rank other than 0: no output but its warnings, which name the rank.
    pub fn silent(rank: usize) -> Self {
        Self {
            jsonl: None,
            renderer: None,
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

    /// Epoch `epoch` (1-based) of `epochs` starts, with `iters` iterations.
    pub fn epoch_start(&mut self, epoch: usize, epochs: usize, iters: usize) {
        if let Some(r) = &mut self.renderer {
            r.epoch_start(epoch, epochs, iters);
        }
    }

    /// A step: recorded always, rendered (as a plain line when `log`).
    pub fn step(&mut self, r: &StepRecord, epochs: usize, log: bool) -> Result<()> {
        if let Some(renderer) = &mut self.renderer {
            renderer.step(r, epochs, log);
        }
        self.record(r)
    }

    /// An epoch or validation summary, rendered and recorded.
    pub fn epoch(&mut self, r: &EpochRecord) -> Result<()> {
        let Some(renderer) = &mut self.renderer else {
            return Ok(());
        };
        renderer.summary(r);
        self.record(r)
    }

    /// A checkpoint was written to `path`.
    pub fn checkpoint(&mut self, path: &Path) {
        if let Some(r) = &mut self.renderer {
            r.checkpoint(path);
        }
    }

    /// A message (set-up notes, precise BN, the best epoch).
    pub fn info(&mut self, msg: &str) {
        if let Some(r) = &mut self.renderer {
            r.event(msg);
        }
    }

    /// A warning, e.g. a sample that failed to load.
    pub fn warn(&mut self, msg: &str) {
        match &mut self.renderer {
            Some(r) => r.warn(msg),
            None => eprintln!("warning: {}{msg}", self.warn_prefix),
        }
    }
}
