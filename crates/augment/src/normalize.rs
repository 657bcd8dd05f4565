//! The output edge: frames to a normalised `[T, 3, H, W]` f32 buffer.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::Frames;

/// ImageNet channel means (RGB), the tutorial's.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), the tutorial's.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A normalised clip: `frames` x 3 x `height` x `width` values, row-major (`[T, C, H, W]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clip {
    /// The values.
    pub data: Vec<f32>,
    /// Number of frames `T`.
    pub frames: usize,
    /// Height `H`.
    pub height: usize,
    /// Width `W`.
    pub width: usize,
}

impl Clip {
    /// `[T, 3, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.frames, 3, self.height, self.width]
    }
}

/// `(x / 255 - mean) / std` per channel, in f32 as the Python does it in float32.
#[derive(Clone)]
pub struct Normalize {
    /// Every u8 value's result per channel: the arithmetic is done 768 times, not per pixel.
    lut: Box<[[f32; 256]; 3]>,
}

impl std::fmt::Debug for Normalize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalize").finish_non_exhaustive()
    }
}

impl Normalize {
    /// Checks that the statistics are finite and every std is non-zero.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.contains(&0.0) {
            return Err(Error::InvalidParameter {
                transform: "Normalization",
                reason: format!("mean {mean:?} / std {std:?} must be finite with std non-zero"),
            });
        }
        Ok(Self::build(mean, std))
    }

    fn build(mean: [f32; 3], std: [f32; 3]) -> Self {
        let mut lut = Box::new([[0.0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        Self { lut }
    }

    /// ImageNet statistics.
    pub fn imagenet() -> Self {
        Self::build(IMAGENET_MEAN, IMAGENET_STD)
    }

    /// Reads the clip (through its pending crop and flip) into a new buffer, in one pass over
    /// the output.
    pub fn clip(&self, frames: &Frames<'_>) -> Clip {
        let (w, h) = (frames.width() as usize, frames.height() as usize);
        let t = frames.len();
        let mut data = Vec::with_capacity(t * 3 * h * w);
        for f in 0..t {
            for (c, lut) in self.lut.iter().enumerate() {
                for y in 0..h as u32 {
                    let px = frames
                        .stored_row(f, y)
                        .chunks_exact(3)
                        .map(|p| lut[p[c] as usize]);
                    if frames.is_flipped() {
                        data.extend(px.rev());
                    } else {
                        data.extend(px);
                    }
                }
            }
        }
        Clip {
            data,
            frames: t,
            height: h,
            width: w,
        }
    }
}
