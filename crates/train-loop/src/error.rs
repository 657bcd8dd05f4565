//! The crate's error type: every variant names the file, key or sample concerned.

use std::path::PathBuf;

/// What can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration file is malformed or has a bad value (the message names the key).
    #[error("{path}: {msg}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A `-o key=value` override names an unknown key or gives a bad value.
    #[error("override `{key}`: {msg}")]
    Override {
        /// The key as given.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// An index list could not be read.
    #[error(transparent)]
    List(#[from] video_io::Error),
    /// A pipeline configuration is invalid.
    #[error("pipeline: {0}")]
    Pipeline(#[from] augment::Error),
    /// Too many samples failed to decode.
    #[error(
        "{failed} of {total} samples of epoch {epoch} failed to decode (more than \
         data.max_failed_fraction = {max_fraction}); last failure: {last}"
    )]
    TooManyFailures {
        /// Epoch (1-based).
        epoch: usize,
        /// Failed samples so far.
        failed: usize,
        /// Samples in the epoch.
        total: usize,
        /// The configured limit.
        max_fraction: f64,
        /// The last failure's message, naming its file.
        last: String,
    },
    /// Clips of one batch have different shapes.
    #[error("{path}: clip shape {got:?} differs from the batch's {expected:?}")]
    ClipShape {
        /// The sample's file.
        path: PathBuf,
        /// Its shape `[T, 3, H, W]`.
        got: [usize; 4],
        /// The first clip's shape.
        expected: [usize; 4],
    },
    /// A checkpoint is missing, inconsistent or does not fit the model.
    #[error("{path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The training list gives no full batch.
    #[error("{path}: {samples} samples make no batch of {batch_size}")]
    EmptyEpoch {
        /// The list.
        path: PathBuf,
        /// Samples listed.
        samples: usize,
        /// Batch size.
        batch_size: usize,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged: loss is {loss} at epoch {epoch}, iteration {iter} (checkpoints of \
         earlier epochs are kept; a lower learning rate may help)"
    )]
    NonFiniteLoss {
        /// The loss.
        loss: f32,
        /// Epoch (1-based).
        epoch: usize,
        /// Iteration in the epoch (0-based).
        iter: usize,
    },
    /// The process cannot join its data-parallel job (launcher variables, missing backend).
    #[error("distributed launch: {msg}")]
    Launch {
        /// What is wrong.
        msg: String,
    },
    /// A tsm-model checkpoint operation failed.
    #[error(transparent)]
    Model(#[from] tsm_model::TsmError),
    /// A model without classification head was asked to classify.
    #[error("a backbone without classification head (num_classes = 0) cannot classify")]
    NoHead,
    /// Test-time sampling that does not give the model's clip length.
    #[error(
        "the sampling gives clips of {frames} frames but the model expects num_seg = {num_seg}"
    )]
    ClipLength {
        /// Frames per sampled clip.
        frames: usize,
        /// Frames the model takes.
        num_seg: usize,
    },
    /// A config value a run cannot use.
    #[error("invalid config: {0}")]
    InvalidConfig(#[from] crate::config::ConfigError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// `Error::Io` for `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
