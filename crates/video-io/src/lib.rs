//! Getting the frames of a clip off disk: video files decoded with FFmpeg (through `video-rs`),
//! frame folders read with `image`, PaddleVideo's index lists, and the segment sampling that
//! decides which frames a clip is made of; and, for long videos and live streams, one forward
//! pass over a file, standard input or a URL cut into sliding windows sampled as clips are.
//!
//! The point of this crate is to decode only what a clip needs: a 10-second video sampled to
//! 8 frames should cost about 8 short decodes from the nearest keyframes, not 300 frames held in
//! memory. It knows nothing of tensors or of the model (see `ARCHITECTURE.md`).

#![warn(missing_docs)]

mod error;
mod folder;
mod list;
mod sampler;
mod source;
mod stream;
mod video;
mod windows;

pub use error::{Error, Result};
pub use folder::FrameFolder;
pub use list::{parse_list, read_list, ListEntry, ListFormat, ListOptions, SampleLocation};
pub use sampler::{SampleMode, Sampling};
pub use source::{read_clip, ClipFrames, FrameSource};
pub use stream::{FrameStream, Next, StreamEnd, StreamFrame, StreamOptions, StreamSource};
pub use video::{DecodeOptions, DecodeStats, VideoReader};
pub use windows::{SlidingWindows, Window};
