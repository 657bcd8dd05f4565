//! The crate's error type for checkpoint I/O.

use std::path::PathBuf;

/// What can go wrong loading or saving a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    /// Reading or writing the file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
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
    /// The tensors do not make the model the config describes (a missing name, a wrong shape).
    #[error("{path}: {cause}")]
    Model {
        /// The file.
        path: PathBuf,
        /// candle's error, naming the tensor.
        cause: candle_core::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model fused for inference has no BatchNorm tensors left to save.
    #[error("a model fused for inference cannot be saved; save the unfused model")]
    Fused,
}
