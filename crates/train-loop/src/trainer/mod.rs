//! The training run: set-up and resume (`setup`), the epoch loop with its checkpoint policy
//! (here), one step (`step`), validation (`validate`) and precise BN (`precise_bn`).

mod precise_bn;
mod setup;
mod step;
mod validate;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use augment::Mixup;
use candle_core::Device;
use tsm_model::Tsm;

use crate::checkpoint::{self, epoch_stem, TrainState};
use crate::comm::Communicator;
use crate::config::TrainConfig;
use crate::error::Result;
use crate::loader::{Dataset, EpochPlan, Stream};
use crate::metrics::{EpochRecord, Reporter};
use crate::optim::{Momentum, WarmupCosine};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Epochs completed (all of them).
    pub epochs: usize,
    /// Best validation top-1 (0 without validation).
    pub best_top1: f64,
    /// Its epoch (1-based; 0 without validation).
    pub best_epoch: usize,
    /// The last validation, if any.
    pub last_val: Option<EpochRecord>,
    /// Samples skipped because they failed to load, over the epochs this process ran.
    pub failed: usize,
    /// The final model checkpoint.
    pub final_checkpoint: PathBuf,
}

/// A training run, set up and ready to [`Trainer::run`].
pub struct Trainer {
    cfg: TrainConfig,
    cfg_json: String,
    device: Device,
    model: Tsm,
    optimizer: Momentum,
    schedule: WarmupCosine,
    teacher: Option<Tsm>,
    train: Arc<Dataset>,
    valid: Option<Arc<Dataset>>,
    pool: Arc<rayon::ThreadPool>,
    state: TrainState,
    iters_per_epoch: usize,
    out: PathBuf,
    reporter: Reporter,
    comm: Rc<dyn Communicator>,
}

impl std::fmt::Debug for Trainer {
    // The datasets and the thread pool say little; the model's config stands for the model.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", self.model.config())
            .field("state", &self.state)
            .field("iters_per_epoch", &self.iters_per_epoch)
            .field("out", &self.out)
            .field("comm", &self.comm)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// The model being trained.
    pub fn model(&self) -> &Tsm {
        &self.model
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Iterations per training epoch.
    pub fn iters_per_epoch(&self) -> usize {
        self.iters_per_epoch
    }

    /// The data-parallel communicator (a single process unless set up otherwise).
    pub fn communicator(&self) -> &dyn Communicator {
        &*self.comm
    }

    /// Trains the remaining epochs: each one trains, runs precise BN and validation when due,
    /// and checkpoints.
    pub fn run(&mut self) -> Result<RunSummary> {
        let epochs = self.cfg.train.epochs;
        let mut last_val = None;
        let mut failed = 0;
        for epoch in self.state.epoch..epochs {
            failed += self.train_epoch(epoch)?.failed;
            let last = epoch + 1 == epochs;
            let pbn = &self.cfg.precise_bn;
            if pbn.enabled && (epoch % pbn.interval == 0 || last) {
                self.precise_bn(epoch)?;
            }
            let mut is_best = false;
            if self.valid.is_some() && (epoch % self.cfg.train.val_interval == 0 || last) {
                let v = self.validate(epoch)?;
                failed += v.failed;
                if v.top1 > self.state.best_top1 || self.state.best_epoch == 0 {
                    self.state.best_top1 = v.top1;
                    self.state.best_epoch = epoch + 1;
                    is_best = true;
                }
                last_val = Some(v);
            }
            self.state.epoch = epoch + 1;
            self.state.lr_position = self.schedule.position();
            self.save(&epoch_stem(epoch + 1))?;
            if is_best {
                self.save("best")?;
                self.reporter.info(&format!(
                    "best top1 {:.5} at epoch {}",
                    self.state.best_top1, self.state.best_epoch
                ));
            }
            // Keep every save_interval-th epoch and the newest; drop the previous newest.
            if self.comm.rank() == 0 && epoch > 0 && epoch % self.cfg.train.save_interval != 0 {
                checkpoint::remove(&self.out, &epoch_stem(epoch))?;
            }
        }
        Ok(RunSummary {
            epochs,
            best_top1: self.state.best_top1,
            best_epoch: self.state.best_epoch,
            last_val,
            failed,
            final_checkpoint: checkpoint::checkpoint_paths(&self.out, &epoch_stem(epochs)).0,
        })
    }

    /// Writes checkpoint `stem` (rank 0 only: the ranks hold the same weights).
    fn save(&mut self, stem: &str) -> Result<()> {
        if self.comm.rank() != 0 {
            return Ok(());
        }
        checkpoint::save(
            &self.out,
            stem,
            self.model.config(),
            &self
                .model
                .params()
                .into_iter()
                .map(|p| (p.name, p.tensor))
                .collect::<Vec<_>>(),
            &self.optimizer.velocities(),
            &self.state,
            &self.cfg_json,
        )?;
        self.reporter
            .checkpoint(&checkpoint::checkpoint_paths(&self.out, stem).0);
        Ok(())
    }
}

/// This rank's training plan of `epoch`.
fn train_plan(cfg: &TrainConfig, epoch: usize, comm: &dyn Communicator) -> EpochPlan {
    EpochPlan {
        seed: cfg.train.seed,
        stream: Stream::Sample,
        epoch,
        batch_size: cfg.data.batch_size,
        drop_last: cfg.data.drop_last,
        shuffle: true,
        mixup: cfg.train.mixup_alpha.map(|alpha| Mixup { alpha }),
        mixup_parts: cfg.train.micro_batches,
        max_batches: cfg.train.max_iters,
        prefetch: cfg.data.prefetch,
        max_failed_fraction: cfg.data.max_failed_fraction,
        rank: comm.rank(),
        world_size: comm.world_size(),
        pad: true,
    }
}
