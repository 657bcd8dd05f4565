//! PP-TSM, PaddleVideo's Temporal Shift Module video classifier, on candle.
//!
//! A ResNet-vd backbone with a temporal shift at the start of every residual branch
//! ([TSM, Lin et al. 2019](https://arxiv.org/abs/1811.08383); PaddleVideo's PP-TSM tweaks),
//! averaged over the `T` frames of a clip and classified by one linear layer. It reproduces
//! PaddleVideo's `ResNetTweaksTSM` + `ppTSMHead` numerically: Paddle's shift direction, leaky
//! ReLU 0.01, exclusive ceil-mode shortcut pooling, Paddle's BatchNorm statistics.
//!
//! The only I/O is safetensors checkpoints ([`Tsm::save`], [`Tsm::load`]); the model config
//! travels in their metadata under [`CONFIG_METADATA_KEY`]. `.pdparams` files are converted by
//! the `paddle-weights` crate (`cargo xtask convert-weights`).
//!
//! # Tensor names
//! Paddle's module structure is kept, with candle's usual leaf names:
//!
//! | ours | PaddleVideo state dict | |
//! |---|---|---|
//! | `backbone.conv1_{1,2,3}.conv.weight` | `backbone.conv1_1._conv.weight` | stem |
//! | `backbone.X.bn.weight` / `.bias` | `backbone.X._batch_norm.weight` / `.bias` | |
//! | `backbone.X.bn.running_mean` / `.running_var` | `backbone.X._batch_norm._mean` / `._variance` | |
//! | `backbone.bb_{s}_{i}.{conv0,conv1,conv2,short}.*` | same block names | depth >= 50 |
//! | `backbone.res{s+2}{a,b,..}.{conv0,conv1,short}.*` | same block names | depth 18/34 |
//! | `head.fc.weight` `[K, C]` | `head.fc.weight` `[C, K]` (transposed) | |
//! | `head.fc.bias` | `head.fc.bias` | |
//!
//! [`parameter_shapes`] lists every name and shape for a config; [`Tsm::params`] gives each
//! tensor with its [`ParamRole`], which is what training code should go by.

#![warn(missing_docs)]

/// `$obj.$method::<T>(args)` with `T` = f32 or f64 by `$dtype`, wrapped as CPU storage: the
/// dtypes the hand-written CPU kernels run in.
macro_rules! cpu_by_dtype {
    ($dtype:expr, $obj:ident . $method:ident ( $($a:expr),* )) => {
        match $dtype {
            candle_core::DType::F32 => candle_core::CpuStorage::F32($obj.$method::<f32>($($a),*)?),
            candle_core::DType::F64 => candle_core::CpuStorage::F64($obj.$method::<f64>($($a),*)?),
            d => candle_core::bail!("{}: dtype {d:?} has no CPU kernel", stringify!($method)),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod amx;
mod batch_norm;
mod checkpoint;
mod config;
#[cfg(target_arch = "x86_64")]
mod cpu_plan;
mod error;
mod memory;
mod model;
#[cfg(feature = "onnx")]
mod onnx;
mod ops;
mod resnet;

pub use checkpoint::{
    max_load_heap_bytes, read_checked_metadata, read_checkpoint, read_checkpoint_config,
    read_header, read_metadata, read_tensors, write_safetensors, BadSafetensorsHeader,
    BadTensorEntry, MAX_HEADER_LEN,
};
pub use config::{ConfigError, TsmConfig, CONFIG_METADATA_KEY};
pub use error::TsmError;
pub use memory::keep_freed_memory;
pub use model::{parameter_shapes, Param, ParamRole, Tsm};
#[cfg(feature = "onnx")]
pub use onnx::{
    OnnxError, OnnxOptions, DEFAULT_OPSET, ONNX_FEATURES, ONNX_INPUT, ONNX_LOGITS, ONNX_OPERATORS,
    ONNX_OPSETS,
};
pub use ops::{temporal_shift, ProductPrecision};
pub use resnet::missing_cpu_bf16_features;

// The README's example is what a downstream crate writes: compiled with the doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// For this workspace's benchmarks only; not part of the API and may change at any time.
#[doc(hidden)]
pub mod internal {
    pub use crate::ops::{time_ops, OpKind, OpTimes};
    pub use crate::resnet::Profile;

    /// Eval-mode logits and the wall time of every step of the pass (`cargo xtask bench model`).
    pub fn forward_profiled(
        model: &crate::Tsm,
        clips: &candle_core::Tensor,
    ) -> candle_core::Result<(candle_core::Tensor, Profile)> {
        model.forward_profiled(clips)
    }
}
