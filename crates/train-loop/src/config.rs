//! The training configuration: a TOML file with sections `[model] [data] [train] [optimizer]
//! [lr] [precise_bn] [distill] [output]`, plus PaddleVideo-style `-o section.key=value`
//! overrides applied to the TOML tree before it is deserialised. Unknown keys and bad values are
//! errors naming the key.

use std::path::{Path, PathBuf};

use augment::PipelineConfig;
use serde::{Deserialize, Serialize};
use tsm_model::{ProductPrecision, TsmConfig};
use video_io::{DecodeOptions, ListFormat, ListOptions, Sampling};

use crate::error::{Error, Result};

/// A [`TrainConfig`] value outside what a run can use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `[model]` section describes no network tsm-model can build.
    #[error("model: {0}")]
    Model(#[from] tsm_model::ConfigError),
    /// Another value, named in the message as `section.key`.
    #[error("{0}")]
    Value(String),
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelConfig,
    /// Index lists, sampling, pipelines, batching.
    pub data: DataConfig,
    /// Epochs, seed, loss, validation and checkpoint intervals.
    pub train: TrainSection,
    /// Momentum SGD with per-parameter decay and learning-rate multipliers.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub lr: LrConfig,
    /// Precise BN.
    #[serde(default)]
    pub precise_bn: PreciseBnConfig,
    /// Knowledge distillation from a teacher checkpoint (off when absent).
    #[serde(default)]
    pub distill: Option<DistillConfig>,
    /// Where the run directory is: `[output]` in the file, or set by an override (`tsm-cli
    /// train --output DIR`), so a recipe need not name one.
    #[serde(default)]
    pub output: OutputConfig,
}

/// `[model]`: the network (tsm-model's [`TsmConfig`] keys: `depth`, `num_seg`, `num_classes`,
/// `shift`, `shift_ratio`, `dropout`) and the weights to start from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    /// The network.
    #[serde(flatten)]
    pub arch: TsmConfig,
    /// A checkpoint to fine-tune from (a converted `.pdparams` or one of ours). A head with
    /// another number of classes is replaced by a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
}

// By hand rather than `#[serde(flatten)]`, which would accept any unknown key: `pretrained` is
// taken out and the rest must be exactly a `TsmConfig` (whose unknown keys are errors).
impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let pretrained = table
            .remove("pretrained")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| D::Error::custom(format!("pretrained: {e}")))?;
        let arch =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(Self { arch, pretrained })
    }
}

/// `[data]`: what to read and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `videos` (`path label`) or `frames` (`path num_frames label`).
    pub format: ListFormat,
    /// Training index list.
    pub train_list: PathBuf,
    /// Validation index list (no validation when absent).
    #[serde(default)]
    pub valid_list: Option<PathBuf>,
    /// Root and suffix applied to the lists' paths.
    #[serde(default)]
    pub list: ListOptions,
    /// Clips per training batch.
    pub batch_size: usize,
    /// Clips per validation batch (default: `batch_size`).
    #[serde(default)]
    pub valid_batch_size: Option<usize>,
    /// Drop the last incomplete training batch (PaddleVideo does).
    #[serde(default = "yes")]
    pub drop_last: bool,
    /// Decoding threads; 0 = all cores.
    #[serde(default)]
    pub num_workers: usize,
    /// Batches decoded ahead of the model.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Stop when more than this fraction of an epoch's samples fail to decode.
    #[serde(default = "default_max_failed")]
    pub max_failed_fraction: f64,
    /// How clips are cut from a video.
    #[serde(default)]
    pub sampling: Sampling,
    /// FFmpeg decoder settings.
    #[serde(default)]
    pub decode: DecodeOptions,
    /// Training transforms.
    pub train_pipeline: PipelineConfig,
    /// Validation transforms.
    pub valid_pipeline: PipelineConfig,
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    pub epochs: usize,
    /// Seeds everything: initial weights, shuffling, sampling, augmentation, mixup, dropout.
    #[serde(default)]
    pub seed: u64,
    /// Label smoothing epsilon in training (validation uses plain cross entropy).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Mixup's Beta parameter; absent = no mixup.
    #[serde(default)]
    pub mixup_alpha: Option<f64>,
    /// Validate every this many epochs (and after the last).
    #[serde(default = "one")]
    pub val_interval: usize,
    /// Keep a checkpoint every this many epochs (the latest one is always kept).
    #[serde(default = "one")]
    pub save_interval: usize,
    /// Log a step line every this many iterations.
    #[serde(default = "default_log_interval")]
    pub log_interval: usize,
    /// Stop after this many iterations per epoch (for quick checks; 0 = the whole epoch).
    #[serde(default)]
    pub max_iters: usize,
    /// Split every batch into this many equal parts, each with its own forward and backward
    /// (so its own BatchNorm statistics and its own mixup), and step once on their mean gradient: what a
    /// data-parallel job of this many ranks computes with `data.batch_size` as its global
    /// batch, in one process (and gradient accumulation when memory is short).
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// The convolutions' products: `"f32"`, or `"bf16"`, mixed precision as PyTorch's autocast
    /// (operands rounded to bf16, sums, weights, activations, gradients and the optimizer in
    /// f32). bf16 on the CPU needs avx512_bf16 (AMX where the CPU has it).
    #[serde(default)]
    pub precision: ProductPrecision,
}

/// `[optimizer]`: Paddle's `Momentum` with PP-TSM's per-parameter attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Momentum.
    pub momentum: f64,
    /// Nesterov's update (PP-TSM: true).
    pub nesterov: bool,
    /// L2 decay of parameters without their own.
    pub weight_decay: f64,
    /// L2 decay of BatchNorm weights and biases (ResNetTweaksTSM's `L2Decay(0.0)`).
    pub bn_weight_decay: f64,
    /// L2 decay of the fc weight (ppTSMHead's `L2Decay(1e-4)`).
    pub fc_weight_decay: f64,
    /// L2 decay of the fc bias (ppTSMHead's `L2Decay(0.0)`).
    pub fc_bias_decay: f64,
    /// Learning-rate multiplier of the fc weight (ppTSMHead: 5).
    pub fc_weight_lr_mult: f64,
    /// Learning-rate multiplier of the fc bias (ppTSMHead: 10).
    pub fc_bias_lr_mult: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            bn_weight_decay: 0.0,
            fc_weight_decay: 1e-4,
            fc_bias_decay: 0.0,
            fc_weight_lr_mult: 5.0,
            fc_bias_lr_mult: 10.0,
        }
    }
}

/// `[lr]`: PaddleVideo's `CustomWarmupCosineDecay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrConfig {
    /// Learning rate at the start of warmup.
    pub warmup_start_lr: f64,
    /// Warmup length in epochs.
    pub warmup_epochs: f64,
    /// Cosine peak.
    pub cosine_base_lr: f64,
    /// Cosine length in epochs (default: `train.epochs`).
    #[serde(default)]
    pub max_epoch: Option<f64>,
    /// Step every iteration by `1 / iterations per epoch` (PaddleVideo's `iter_step: True`);
    /// false steps once per epoch.
    #[serde(default = "yes")]
    pub iter_step: bool,
}

/// `[precise_bn]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreciseBnConfig {
    /// Run it at all.
    pub enabled: bool,
    /// Every this many epochs (counting from the first) and after the last.
    pub interval: usize,
    /// Batches (at most the training loader's length).
    pub num_iters: usize,
}

impl Default for PreciseBnConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: 5,
            num_iters: 200,
        }
    }
}

/// `[distill]`: a teacher's softened outputs as extra targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// Teacher checkpoint (any tsm-model checkpoint with the same classes).
    pub teacher: PathBuf,
    /// Softmax temperature.
    #[serde(default = "one_f")]
    pub temperature: f64,
    /// Weight of the soft loss; the hard loss gets `1 - weight`.
    #[serde(default = "half")]
    pub weight: f64,
}

/// `[output]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// The run directory: checkpoints, `metrics.jsonl`, `config.toml`.
    pub dir: PathBuf,
}

fn yes() -> bool {
    true
}
fn half() -> f64 {
    0.5
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_prefetch() -> usize {
    4
}
fn default_max_failed() -> f64 {
    0.01
}
fn default_log_interval() -> usize {
    10
}

impl TrainConfig {
    /// Reads `path` and applies `overrides` (`section.key=value`, the value in TOML syntax or a
    /// bare string); relative paths in the file stay relative to the working directory.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parses TOML text (`origin` names it in errors) and applies `overrides`.
    pub fn from_toml_str(text: &str, origin: &Path, overrides: &[String]) -> Result<Self> {
        let config_err = |msg: String| Error::Config {
            path: origin.to_path_buf(),
            msg,
        };
        // The file alone must be valid (errors then show its line), so that a later error is
        // blamed on the right override.
        let mut cfg: TrainConfig = toml::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let mut table: toml::Table = toml::from_str(text).map_err(|e| config_err(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
            cfg = deserialize(&table).map_err(|msg| Error::Override {
                key: o.split('=').next().unwrap_or(o).trim().to_string(),
                msg,
            })?;
        }
        cfg.validate().map_err(|e| config_err(e.to_string()))?;
        Ok(cfg)
    }

    /// The configuration as TOML (what `config.toml` in the run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| ConfigError::Value(format!("the config as TOML: {e}")).into())
    }

    /// Checks values serde cannot.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.model.arch.validate()?;
        self.validate_values().map_err(ConfigError::Value)
    }

    fn validate_values(&self) -> std::result::Result<(), String> {
        if self.output.dir.as_os_str().is_empty() {
            return Err(
                "no run directory: set `dir` under [output] or pass one (tsm-cli train --output \
                 DIR, or -o output.dir=DIR)"
                    .into(),
            );
        }
        let arch = &self.model.arch;
        if arch.num_classes == 0 {
            return Err("model.num_classes must be at least 1".into());
        }
        if self.data.sampling.frames_per_clip() != arch.num_seg {
            return Err(format!(
                "data.sampling gives {} frames per clip but model.num_seg is {}",
                self.data.sampling.frames_per_clip(),
                arch.num_seg
            ));
        }
        if self.data.batch_size == 0 || self.data.valid_batch_size == Some(0) {
            return Err("data.batch_size must be at least 1".into());
        }
        if self.train.micro_batches == 0 || self.train.micro_batches > self.data.batch_size {
            return Err(format!(
                "train.micro_batches must lie in 1..=data.batch_size ({})",
                self.data.batch_size
            ));
        }
        if self.data.prefetch == 0 {
            return Err("data.prefetch must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.data.max_failed_fraction) {
            return Err("data.max_failed_fraction must lie in [0, 1]".into());
        }
        if self.train.epochs == 0 {
            return Err("train.epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.train.label_smoothing) {
            return Err("train.label_smoothing must lie in [0, 1)".into());
        }
        if self
            .train
            .mixup_alpha
            .is_some_and(|a| a <= 0.0 || !a.is_finite())
        {
            return Err("train.mixup_alpha must be positive".into());
        }
        for (k, v) in [
            ("train.val_interval", self.train.val_interval),
            ("train.save_interval", self.train.save_interval),
            ("train.log_interval", self.train.log_interval),
            ("precise_bn.interval", self.precise_bn.interval),
        ] {
            if v == 0 {
                return Err(format!("{k} must be at least 1"));
            }
        }
        if !(0.0..1.0).contains(&self.optimizer.momentum) {
            return Err("optimizer.momentum must lie in [0, 1)".into());
        }
        if self.lr.warmup_epochs < 0.0 || self.lr.max_epoch.is_some_and(|m| m <= 0.0) {
            return Err("lr.warmup_epochs must be >= 0 and lr.max_epoch > 0".into());
        }
        if let Some(d) = &self.distill {
            if d.temperature <= 0.0 || !(0.0..=1.0).contains(&d.weight) {
                return Err("distill.temperature must be > 0 and distill.weight in [0, 1]".into());
            }
        }
        Ok(())
    }

    /// The cosine length: `lr.max_epoch` or `train.epochs`.
    pub fn lr_max_epoch(&self) -> f64 {
        self.lr.max_epoch.unwrap_or(self.train.epochs as f64)
    }
}

fn deserialize(table: &toml::Table) -> std::result::Result<TrainConfig, String> {
    toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
}

/// Sets `section.key[.key...]` in `table` to `value` parsed as TOML (a bare word that is not
/// TOML, such as a path, is taken as a string).
fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let bad = |msg: &str| Error::Override {
        key: spec.to_string(),
        msg: msg.to_string(),
    };
    let (key, value) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let key = key.trim();
    let value = value.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key component"));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, path) = parts.split_last().ok_or_else(|| bad("empty key"))?;
    let mut cur = table;
    for (i, p) in path.iter().enumerate() {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::Override {
            key: key.to_string(),
            msg: format!("`{}` is not a table", parts[..=i].join(".")),
        })?;
    }
    cur.insert(last.to_string(), parsed);
    Ok(())
}
