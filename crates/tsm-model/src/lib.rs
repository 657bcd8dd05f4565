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
//! [`parameter_shapes`] lists every name and shape for a config.

#![warn(missing_docs)]

mod batch_norm;
mod checkpoint;
mod config;
mod error;
mod model;
pub mod ops;
mod resnet;

pub use batch_norm::{BatchNorm, BN_EPS, BN_MOMENTUM};
pub use checkpoint::{read_checkpoint, read_metadata, write_safetensors};
pub use config::{TsmConfig, CONFIG_METADATA_KEY};
pub use error::TsmError;
pub use model::{parameter_shapes, PpTsmHead, Tsm};
pub use ops::temporal_shift;
pub use resnet::{block_name, ConvBn, ResNetTweaksTsm};
