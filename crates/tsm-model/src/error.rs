//! The crate's error type: configs, checkpoint I/O, tensor operations.
//!
//! A variant with a cause keeps it out of its own message and gives it as the source, so that
//! `{:#}` (anyhow) prints each cause once, after the variant's message.

use std::path::PathBuf;

/// What can go wrong building, loading or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    /// Reading or writing the file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The safetensors header or its metadata is malformed or lacks the model config.
    #[error("{path}: {msg}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A safetensors file whose metadata has no model config: not written by this crate or the
    /// `.pdparams` converter.
    #[error(
        "{path}: no `{}` in the safetensors metadata",
        crate::config::CONFIG_METADATA_KEY
    )]
    NoConfig {
        /// The file.
        path: PathBuf,
    },
    /// The tensors do not make the model the config describes (a missing name, a wrong shape).
    #[error("{path}")]
    Model {
        /// The file.
        path: PathBuf,
        /// candle's error, naming the tensor.
        #[source]
        cause: candle_core::Error,
    },
    /// The config describes no model this crate can build.
    #[error("model config")]
    Config(#[from] crate::config::ConfigError),
    /// A checkpoint's config describes no model this crate can build. The field and its
    /// allowed range are in the source, which `{:#}` (anyhow) prints after the file.
    #[error("{path}: invalid `{}`", crate::config::CONFIG_METADATA_KEY)]
    CheckpointConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with the config.
        #[source]
        source: crate::config::ConfigError,
    },
    /// The file is not safetensors at all (a video, a `.pdparams` pickle, text). Why is in the
    /// source, which `{:#}` (anyhow) prints after this.
    #[error("{path}: not a tsm-rs checkpoint (safetensors)")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What its first bytes say.
        #[source]
        reason: crate::checkpoint::BadSafetensorsHeader,
    },
    /// A tensor's entry in the safetensors header is malformed, or does not fit the entries
    /// before it; the reason is the source.
    #[error("{path}: tensor `{name}`")]
    BadTensorEntry {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong with its entry (boxed: a shape and a dtype would make every
        /// `Result` of this crate carry them).
        #[source]
        reason: Box<crate::checkpoint::BadTensorEntry>,
    },
    /// The tensor data the header declares is not what follows it: the file is truncated,
    /// padded, or its entries claim more bytes than it holds.
    #[error(
        "{path}: the header declares {declared} bytes of tensor data but {held} follow it \
         (a truncated or damaged file)"
    )]
    DataLength {
        /// The file.
        path: PathBuf,
        /// Bytes the tensor entries declare.
        declared: u64,
        /// Bytes after the header.
        held: u64,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model fused for inference has no BatchNorm tensors left to save.
    #[error("a model fused for inference cannot be saved; save the unfused model")]
    Fused,
}
