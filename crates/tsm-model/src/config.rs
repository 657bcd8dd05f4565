//! The model configuration, serialised as JSON into every checkpoint's safetensors metadata.

use std::ops::RangeInclusive;

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

    /// Allowed `num_seg`. PP-TSM and TSM use 8 or 16 frames, long-range variants 32 to 64; 256
    /// leaves room for those and keeps a hostile value (say 10^12 in a checkpoint's metadata)
    /// from sizing clip buffers, which are allocated from it before any frame is decoded.
    pub const NUM_SEG: RangeInclusive<usize> = 1..=256;

    /// Allowed `num_classes`, 0 being a backbone without head (ImageNet `ResNet*_vd` weights).
    /// The largest label sets a video or image classifier is trained on (Kinetics-700,
    /// ImageNet-21k's 21,841) are well inside 100,000; beyond it the fc layer alone would be
    /// 0.8 GB (ResNet-50's 2048 features), allocated by [`crate::Tsm::new`] from this value.
    pub const NUM_CLASSES: RangeInclusive<usize> = 0..=100_000;

    /// Checks every field against the values the model can be built with; the error names the
    /// field, its value and the allowed ones. Anything sized from the config (weights, clip
    /// buffers) must come after this check, since a checkpoint's config is untrusted input.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stage_blocks().is_none() {
            return Err(ConfigError::Depth(self.depth));
        }
        if !Self::NUM_SEG.contains(&self.num_seg) {
            return Err(ConfigError::NumSeg(self.num_seg));
        }
        if !Self::NUM_CLASSES.contains(&self.num_classes) {
            return Err(ConfigError::NumClasses(self.num_classes));
        }
        // Checked even with the shift off, as before: the ratio is part of the saved config.
        let r = self.effective_shift_ratio();
        if !(0.0..=0.5).contains(&r) {
            return Err(ConfigError::ShiftRatio(r));
        }
        // `contains` is false for NaN, so a NaN probability is refused too.
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Dropout(self.dropout));
        }
        Ok(())
    }
}

/// A [`TsmConfig`] field outside what the model can be built with; the message names the field,
/// its value and the allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `depth` is not a ResNet the backbone has.
    #[error("depth {0} is not one of 18, 34, 50, 101, 152")]
    Depth(usize),
    /// `num_seg` is outside [`TsmConfig::NUM_SEG`].
    #[error(
        "num_seg {0} is outside {lo}..={hi} (frames per clip)",
        lo = TsmConfig::NUM_SEG.start(),
        hi = TsmConfig::NUM_SEG.end()
    )]
    NumSeg(usize),
    /// `num_classes` is outside [`TsmConfig::NUM_CLASSES`].
    #[error(
        "num_classes {0} is outside {lo}..={hi} (0: a backbone without head)",
        lo = TsmConfig::NUM_CLASSES.start(),
        hi = TsmConfig::NUM_CLASSES.end()
    )]
    NumClasses(usize),
    /// The shift ratio would shift more than all channels.
    #[error("shift_ratio {0} must lie in [0, 0.5] (when unset it is 1 / num_seg)")]
    ShiftRatio(f64),
    /// `dropout` is not a probability the head can drop with.
    #[error("dropout {0} must lie in [0, 1)")]
    Dropout(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PP-TSM R50 for Kinetics-400 with one field changed by `edit`.
    fn with(edit: impl FnOnce(&mut TsmConfig)) -> TsmConfig {
        let mut cfg = TsmConfig::pptsm_r50(400);
        edit(&mut cfg);
        cfg
    }

    #[test]
    fn every_supported_depth_validates_and_its_neighbours_do_not() {
        for depth in [18, 34, 50, 101, 152] {
            assert_eq!(with(|c| c.depth = depth).validate(), Ok(()), "{depth}");
        }
        for depth in [0, 17, 19, 49, 51, 153, usize::MAX] {
            assert_eq!(
                with(|c| c.depth = depth).validate(),
                Err(ConfigError::Depth(depth))
            );
        }
    }

    #[test]
    fn num_seg_is_bounded_on_both_sides() {
        // 1 frame has no neighbour to shift from: 1 / num_seg would be 1, so give a ratio
        let one = with(|c| {
            c.num_seg = 1;
            c.shift_ratio = Some(0.125);
        });
        assert_eq!(one.validate(), Ok(()));
        assert_eq!(with(|c| c.num_seg = 256).validate(), Ok(()));
        for num_seg in [0, 257, 1_000_000_000_000] {
            let cfg = with(|c| c.num_seg = num_seg);
            assert_eq!(cfg.validate(), Err(ConfigError::NumSeg(num_seg)));
        }
        let e = with(|c| c.num_seg = 1_000_000_000_000)
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "num_seg 1000000000000 is outside 1..=256 (frames per clip)"
        );
    }

    #[test]
    fn num_classes_is_bounded_and_zero_is_a_backbone() {
        for num_classes in [0, 1, 100_000] {
            let cfg = with(|c| c.num_classes = num_classes);
            assert_eq!(cfg.validate(), Ok(()), "{num_classes}");
        }
        for num_classes in [100_001, usize::MAX] {
            let cfg = with(|c| c.num_classes = num_classes);
            assert_eq!(cfg.validate(), Err(ConfigError::NumClasses(num_classes)));
        }
        let e = with(|c| c.num_classes = 100_001)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("num_classes 100001 is outside 0..=100000"),
            "{e}"
        );
    }

    #[test]
    fn shift_ratio_is_bounded_set_or_derived() {
        for ratio in [0.0, 0.125, 0.5] {
            assert_eq!(with(|c| c.shift_ratio = Some(ratio)).validate(), Ok(()));
        }
        for ratio in [-1e-9, 0.5 + 1e-9, f64::NAN, f64::INFINITY] {
            let e = with(|c| c.shift_ratio = Some(ratio))
                .validate()
                .unwrap_err();
            assert!(matches!(e, ConfigError::ShiftRatio(_)), "{ratio}: {e}");
        }
        // unset, the ratio is 1 / num_seg: 2 frames give 0.5, 1 frame 1.0
        assert_eq!(with(|c| c.num_seg = 2).validate(), Ok(()));
        assert_eq!(
            with(|c| c.num_seg = 1).validate(),
            Err(ConfigError::ShiftRatio(1.0))
        );
    }

    #[test]
    fn dropout_is_a_probability_below_one() {
        for p in [0.0, 0.5, 1.0 - 1e-9] {
            assert_eq!(with(|c| c.dropout = p).validate(), Ok(()), "{p}");
        }
        for p in [-1e-9, 1.0, f64::NAN, f64::INFINITY] {
            let e = with(|c| c.dropout = p).validate().unwrap_err();
            assert!(matches!(e, ConfigError::Dropout(_)), "{p}: {e}");
        }
        let e = with(|c| c.dropout = 1.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert_eq!(e, "dropout 1 must lie in [0, 1)");
    }
}
