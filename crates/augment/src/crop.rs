//! Fixed-size crops: random, centre, and the multi-view test crops. None of them copies pixels.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::{Frames, Rect};
use crate::scale::{py_round, yes};

fn too_large(transform: &'static str, crop: u32, width: u32, height: u32) -> Error {
    Error::CropTooLarge {
        transform,
        crop_width: crop,
        crop_height: crop,
        width,
        height,
    }
}

fn check(transform: &'static str, crop: u32, width: u32, height: u32) -> Result<()> {
    if crop == 0 {
        return Err(Error::InvalidParameter {
            transform,
            reason: "target_size must be positive".into(),
        });
    }
    if width < crop || height < crop {
        return Err(too_large(transform, crop, width, height));
    }
    Ok(())
}

fn square(x: u32, y: u32, side: u32) -> Rect {
    Rect {
        x,
        y,
        width: side,
        height: side,
    }
}

/// A crop's top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offset {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
}

/// PaddleVideo's `RandomCrop`: a `target_size` square at a uniform integer position (both
/// ends inclusive, like Python's `random.randint`), the same for every frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomCrop {
    /// Side of the square.
    pub target_size: u32,
}

impl RandomCrop {
    /// Draws the corner for a `width` x `height` clip.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> Result<Offset> {
        let t = self.target_size;
        check("RandomCrop", t, width, height)?;
        let x = rng.random_range(0..=width - t);
        let y = rng.random_range(0..=height - t);
        Ok(Offset { x, y })
    }

    /// Crops at `offset`.
    pub fn apply<'a>(&self, frames: Frames<'a>, offset: Offset) -> Result<Frames<'a>> {
        check(
            "RandomCrop",
            self.target_size,
            frames.width(),
            frames.height(),
        )?;
        frames.crop_as("RandomCrop", square(offset.x, offset.y, self.target_size))
    }
}

/// PaddleVideo's `CenterCrop`: a `target_size` square in the middle; the corner is
/// `round((w - t) / 2)` (half-to-even, as Python) with `do_round` (default), else floored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterCrop {
    /// Side of the square.
    pub target_size: u32,
    /// Round the corner instead of flooring it (default true).
    #[serde(default = "yes")]
    pub do_round: bool,
}

impl CenterCrop {
    /// With PaddleVideo's default `do_round = true`.
    pub fn new(target_size: u32) -> Self {
        Self {
            target_size,
            do_round: true,
        }
    }

    /// The corner for a `width` x `height` clip.
    pub fn offset(&self, width: u32, height: u32) -> Result<Offset> {
        let t = self.target_size;
        check("CenterCrop", t, width, height)?;
        let corner = |side: u32| {
            if self.do_round {
                py_round(f64::from(side - t) / 2.0) as u32
            } else {
                (side - t) / 2
            }
        };
        Ok(Offset {
            x: corner(width),
            y: corner(height),
        })
    }

    /// Crops the centre.
    pub fn apply<'a>(&self, frames: Frames<'a>) -> Result<Frames<'a>> {
        let o = self.offset(frames.width(), frames.height())?;
        frames.crop_as("CenterCrop", square(o.x, o.y, self.target_size))
    }
}

/// Three `target_size` squares along the long side: start, end, middle (MMAction2's
/// `ThreeCrop`, PaddleVideo's `UniformCrop`). One side of the clip must equal `target_size`
/// (scale the short side to it first), as in both originals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreeCrop {
    /// Side of the squares.
    pub target_size: u32,
}

impl ThreeCrop {
    /// The three corners for a `width` x `height` clip, in output order.
    pub fn offsets(&self, width: u32, height: u32) -> Result<[Offset; 3]> {
        let t = self.target_size;
        check("ThreeCrop", t, width, height)?;
        let o = |x, y| Offset { x, y };
        if height == t {
            let s = (width - t) / 2;
            Ok([o(0, 0), o(2 * s, 0), o(s, 0)])
        } else if width == t {
            let s = (height - t) / 2;
            Ok([o(0, 0), o(0, 2 * s), o(0, s)])
        } else {
            Err(Error::InvalidParameter {
                transform: "ThreeCrop",
                reason: format!("one side of the {width}x{height} clip must equal {t}"),
            })
        }
    }

    /// The three views.
    pub fn apply<'a>(&self, frames: &Frames<'a>) -> Result<Vec<Frames<'a>>> {
        self.offsets(frames.width(), frames.height())?
            .iter()
            .map(|o| {
                frames
                    .clone()
                    .crop_as("ThreeCrop", square(o.x, o.y, self.target_size))
            })
            .collect()
    }
}

/// Ten views: four corner squares and the centre one (steps of a quarter of the slack,
/// floored), each followed by its mirror image, in MMAction2's `TenCrop` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenCrop {
    /// Side of the squares.
    pub target_size: u32,
}

impl TenCrop {
    /// The five corners for a `width` x `height` clip (each view is used plain, then flipped).
    pub fn offsets(&self, width: u32, height: u32) -> Result<[Offset; 5]> {
        let t = self.target_size;
        check("TenCrop", t, width, height)?;
        let (ws, hs) = ((width - t) / 4, (height - t) / 4);
        let o = |x, y| Offset { x, y };
        Ok([
            o(0, 0),
            o(4 * ws, 0),
            o(0, 4 * hs),
            o(4 * ws, 4 * hs),
            o(2 * ws, 2 * hs),
        ])
    }

    /// The ten views.
    pub fn apply<'a>(&self, frames: &Frames<'a>) -> Result<Vec<Frames<'a>>> {
        let mut views = Vec::with_capacity(10);
        for o in self.offsets(frames.width(), frames.height())? {
            let v = frames
                .clone()
                .crop_as("TenCrop", square(o.x, o.y, self.target_size))?;
            views.push(v.clone());
            views.push(v.flip());
        }
        Ok(views)
    }
}
