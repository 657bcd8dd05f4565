//! Training PP-TSM with PaddleVideo's recipe, on candle.
//!
//! A run is described by a TOML [`TrainConfig`] (files under `assets/configs/`, overridden with
//! `-o section.key=value` as PaddleVideo's `-o`) and carried out by a [`Trainer`]:
//!
//! - **Data** ([`loader`]): an index list and a [`augment::ClipLoader`], a per-epoch shuffle,
//!   `drop_last`, batches `[N, T, 3, H, W]` decoded on a rayon pool by a producer thread ahead of
//!   the model (a bounded queue), mixup in collation. Every random choice is seeded from
//!   `(seed, epoch, index)`, so batches do not depend on thread timing. A sample that fails to
//!   decode is reported with its file and skipped; too many failures stop the run.
//! - **Recipe** ([`optim`], [`loss`]), as `PADDLE_SEMANTICS.md` describes it: Paddle's Nesterov
//!   momentum update, BN and fc decay overrides and fc learning-rate multipliers,
//!   `CustomWarmupCosineDecay` stepped every iteration, label smoothing in training only, mixup,
//!   seeded dropout, precise BN, validation with top-1/top-5, optional distillation.
//! - **Checkpoints** ([`checkpoint`]): the model as a tsm-model safetensors file, the training
//!   state (velocities, schedule position, epoch, step, seed, config) beside it, each written
//!   atomically. `resume` continues from the newest complete one; a run killed at any point and
//!   resumed ends with the same weights, bit for bit, as one left alone (same seed and thread
//!   count).
//! - **Scoring videos** ([`classify`]): a trained model over test-time views, decoded in
//!   parallel, batched, logits averaged per video (what `tsm-cli predict` and `eval` run).
//! - **Outputs** ([`metrics`]): PaddleVideo's log fields as plain lines and every step, epoch
//!   and validation in `metrics.jsonl` in the run directory, beside `config.toml` (the resolved
//!   configuration) and the checkpoints.
//!
//! ```no_run
//! # fn main() -> Result<(), train_loop::Error> {
//! use train_loop::{TrainConfig, Trainer};
//! let cfg = TrainConfig::load(
//!     "assets/configs/pptsm_ucf101_tutorial.toml".as_ref(),
//!     &["train.epochs=2".to_string()],
//! )?;
//! let summary = Trainer::new(cfg, false)?.run()?;
//! println!("best top-1 {:.3} at epoch {}", summary.best_top1, summary.best_epoch);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod classify;
pub mod comm;
mod config;
mod error;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod render;
mod trainer;

pub use config::{
    ConfigError, DataConfig, DistillConfig, LrConfig, ModelConfig, OptimizerConfig, OutputConfig,
    PreciseBnConfig, TrainConfig, TrainSection,
};
pub use error::{Error, Result};
pub use trainer::{RunSummary, Trainer};
