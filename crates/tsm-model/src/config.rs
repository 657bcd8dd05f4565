//! The model configuration, serialised as JSON into every checkpoint's safetensors metadata.

use serde::{Deserialize, Serialize};

/// The metadata key under which [`TsmConfig`] is stored, as JSON, in a checkpoint.
pub const CONFIG_METADATA_KEY: &str = "tsm_config";

/// PP-TSM hyper-parameters: backbone depth, clip length, classes, temporal shift and dropout.
///
/// `num_classes == 0` builds the backbone alone (as in ImageNet `ResNet*_vd` weights): the model
/// then returns pooled features instead of logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsmConfig {
    /// ResNet depth: 18, 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
    pub depth: usize,
    /// Frames (segments) per clip, `T`.
    pub num_seg: usize,
    /// Output classes; 0 for a backbone without head.
    pub num_classes: usize,
    /// Fraction of channels shifted each way; `None` means PP-TSM's `1 / num_seg`.
    #[serde(default)]
    pub shift_ratio: Option<f64>,
    /// Temporal shift on (PP-TSM) or off (a plain TSN, for ablations).
    #[serde(default = "default_true")]
    pub shift: bool,
    /// Dropout probability in the head (ppTSMHead's `drop_ratio`, 0.5 in PP-TSM's configs).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
}

fn default_true() -> bool {
    true
}

fn default_dropout() -> f64 {
    0.5
}

impl TsmConfig {
    /// PP-TSM with a ResNet-`depth` backbone (`vd` tweaks), 8 segments, dropout 0.5.
    pub fn pptsm(depth: usize, num_classes: usize) -> Self {
        Self {
            depth,
            num_seg: 8,
            num_classes,
            shift_ratio: None,
            shift: true,
            dropout: 0.5,
        }
    }

    /// PP-TSM ResNet-50 (the tutorial's and PaddleVideo's main model), 8 segments.
    pub fn pptsm_r50(num_classes: usize) -> Self {
        Self::pptsm(50, num_classes)
    }

    /// PP-TSM ResNet-101, 8 segments.
    pub fn pptsm_r101(num_classes: usize) -> Self {
        Self::pptsm(101, num_classes)
    }

    /// PP-TSM ResNet-18 (BasicBlock), 8 segments: small, for tests and quick experiments.
    pub fn pptsm_r18(num_classes: usize) -> Self {
        Self::pptsm(18, num_classes)
    }

    /// The same configuration with another clip length.
    pub fn with_num_seg(mut self, num_seg: usize) -> Self {
        self.num_seg = num_seg;
        self
    }

    /// The shift ratio in use: the configured one or `1 / num_seg`.
    pub fn effective_shift_ratio(&self) -> f64 {
        self.shift_ratio.unwrap_or(1.0 / self.num_seg as f64)
    }

    /// Blocks per stage.
    pub fn stage_blocks(&self) -> Option<[usize; 4]> {
        match self.depth {
            18 => Some([2, 2, 2, 2]),
            34 | 50 => Some([3, 4, 6, 3]),
            101 => Some([3, 4, 23, 3]),
            152 => Some([3, 8, 36, 3]),
            _ => None,
        }
    }

    /// Whether the backbone uses Bottleneck blocks (depth >= 50) rather than BasicBlocks.
    pub fn is_bottleneck(&self) -> bool {
        self.depth >= 50
    }

    /// Channels of the backbone's output, the pooled feature size: 2048 or 512.
    pub fn feature_dim(&self) -> usize {
        if self.is_bottleneck() {
            2048
        } else {
            512
        }
    }

    /// Checks the values; the error names the bad field and its allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stage_blocks().is_none() {
            return Err(ConfigError::Depth(self.depth));
        }
        if self.num_seg == 0 {
            return Err(ConfigError::NumSeg(self.num_seg));
        }
        let r = self.effective_shift_ratio();
        if !(0.0..=0.5).contains(&r) {
            return Err(ConfigError::ShiftRatio(r));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Dropout(self.dropout));
        }
        Ok(())
    }
}

/// A [`TsmConfig`] field outside what the model can be built with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `depth` is not a ResNet the backbone has.
    #[error("depth {0} is not one of 18, 34, 50, 101, 152")]
    Depth(usize),
    /// `num_seg` is zero.
    #[error("num_seg {0} must be at least 1")]
    NumSeg(usize),
    /// The shift ratio would shift more than all channels.
    #[error("shift_ratio {0} must lie in [0, 0.5]")]
    ShiftRatio(f64),
    /// `dropout` is not a probability the head can drop with.
    #[error("dropout {0} must lie in [0, 1)")]
    Dropout(f64),
}
