//! [`WeightsError`]: what can go wrong reading or converting weights.

use std::path::PathBuf;

use crate::pickle::PickleError;

/// Errors reading or converting weights; each names the file, key or byte offset at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The pickle is malformed, truncated or hostile.
    #[error("{path}: {cause}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What the reader found, with its byte offset.
        cause: PickleError,
    },
    /// The pickle is valid but is not a `.pdparams` state dict.
    #[error("{path}: not a Paddle state dict: {msg}")]
    NotAStateDict {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// One entry cannot be used.
    #[error("key `{key}`: {msg}")]
    BadEntry {
        /// The Paddle key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor's shape differs from what the model needs.
    #[error(
        "key `{key}` (ours `{ours}`): shape {found:?} in the file, the model needs {expected:?}"
    )]
    ShapeMismatch {
        /// The Paddle key.
        key: String,
        /// Our name.
        ours: String,
        /// Shape in the file (after the Linear transpose).
        found: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// Tensors the model needs are absent from the file.
    #[error("{} tensors the model needs are missing, e.g. `{}`", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
    MissingKeys(Vec<String>),
    /// Depth, classes or segment count cannot be determined or contradict the options.
    #[error("{0}")]
    Config(String),
    /// Writing the checkpoint failed.
    #[error(transparent)]
    Tsm(#[from] tsm_model::TsmError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
