//! Errors of this crate: every one names the file (and the line, for index lists).

use std::path::PathBuf;

/// What went wrong reading a video, a frame folder or an index list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file does not exist or cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file exists but is empty.
    #[error("{path}: file is empty (0 bytes)")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// FFmpeg could not open the file as a media container.
    #[error("{path}: not a readable video ({reason})")]
    NotAVideo {
        /// The file.
        path: PathBuf,
        /// FFmpeg's message.
        reason: String,
    },
    /// The container has no video stream (audio only, data only).
    #[error("{path}: no video stream (streams: {streams})")]
    NoVideoStream {
        /// The file.
        path: PathBuf,
        /// The kinds of stream the file does have.
        streams: String,
    },
    /// The video stream uses a codec FFmpeg cannot decode here.
    #[error("{path}: no decoder for the video stream ({reason})")]
    NoDecoder {
        /// The file.
        path: PathBuf,
        /// FFmpeg's message.
        reason: String,
    },
    /// Decoding failed before the requested frames could be produced.
    #[error("{path}: decoding failed: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The video has no decodable frame at all.
    #[error("{path}: no decodable video frame")]
    NoFrames {
        /// The file.
        path: PathBuf,
    },
    /// A stream sent nothing for the read timeout while being opened.
    #[error("{path}: no data for {:.1} s (the read timeout) while opening", waited.as_secs_f64())]
    Timeout {
        /// The stream.
        path: PathBuf,
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// Opening was stopped (Ctrl-C).
    #[error("{path}: interrupted while opening")]
    Interrupted {
        /// The stream.
        path: PathBuf,
    },
    /// A frame image of a frame folder is missing or undecodable.
    #[error("{path}: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A line of an index list is malformed.
    #[error("{list}:{line}: {reason}")]
    ListLine {
        /// The list file.
        list: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A sampling request that cannot be met (for example zero segments).
    #[error("invalid sampling request: {0}")]
    Sampling(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
