//! Clip transforms for PP-TSM: PaddleVideo's (and the tutorial's) data augmentation, ported so
//! that a clip comes out as the Python pipeline makes it.
//!
//! A clip is a list of same-sized [`image::RgbImage`] frames. Transforms ([`Scale`],
//! [`MultiScaleCrop`], [`RandomCrop`], [`CenterCrop`], [`RandomFlip`], and the test-time
//! [`ThreeCrop`] / [`TenCrop`]) run in a [`Pipeline`] built from a serde [`PipelineConfig`]
//! (presets: the tutorial's and PaddleVideo's K400 ones), ending in a normalised `[T, 3, H, W]`
//! f32 [`Clip`]. [`Mixup`] works on a batch of those.
//!
//! - Resizing is Pillow's `BILINEAR` (antialiased when shrinking) via `fast_image_resize`,
//!   and Pillow's float crop boxes are rounded as Pillow rounds them; the reference pipeline
//!   in `tests/reference/tutorial_transforms.py` checks the match.
//! - Every random transform separates drawing its choice (`sample`, from a caller's RNG) from
//!   applying it (`apply`), so the same seed gives the same clip and tests can fix choices.
//! - Crops and flips copy nothing: they narrow a view that the next resize or the final
//!   normalisation reads. Nothing runs in parallel inside: the loader runs clips in parallel.
//! - [`ClipLoader`] joins this to `video-io`: a sample's location in, its clip(s) out, decoding
//!   only the sampled frames.
//! - No tensors library: the output is a plain `Vec<f32>`.

#![warn(missing_docs)]

mod clip_loader;
mod crop;
mod error;
mod flip;
mod frames;
mod mixup;
mod multiscale;
mod normalize;
mod pipeline;
mod scale;

pub use clip_loader::{ClipLoader, LoadedClip};
pub use crop::{CenterCrop, Offset, RandomCrop, TenCrop, ThreeCrop};
pub use error::{Error, Result};
pub use flip::RandomFlip;
pub use frames::{Frames, Rect};
pub use mixup::{MixedBatch, Mixup, MixupChoice};
pub use multiscale::{CropChoice, MultiScaleCrop};
pub use normalize::{Clip, Normalize, IMAGENET_MEAN, IMAGENET_STD};
pub use pipeline::{Choice, Pipeline, PipelineConfig, Transform};
pub use scale::Scale;
