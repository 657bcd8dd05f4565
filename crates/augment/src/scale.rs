//! `Scale`: resize so the short side has a given length.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::Frames;

pub(crate) fn yes() -> bool {
    true
}

/// Python's `round()`: halves go to the even neighbour.
pub(crate) fn py_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// PaddleVideo's `Scale`: resizes the short side to `short_size` with Pillow's bilinear filter.
///
/// With `fixed_ratio` the long side becomes `int(short_size * 4 / 3)` whatever the input's
/// aspect (PaddleVideo's default, used by its K400 configs); without it the aspect is kept,
/// the long side truncated (or rounded half-to-even with `do_round`). A clip whose short side
/// already equals `short_size` is returned unchanged, even with `fixed_ratio`, as in Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Length of the short side after scaling.
    pub short_size: u32,
    /// Long side = `int(short_size * 4 / 3)` instead of keeping the aspect (default true).
    #[serde(default = "yes")]
    pub fixed_ratio: bool,
    /// Round the kept-aspect long side instead of truncating it (default false).
    #[serde(default)]
    pub do_round: bool,
}

impl Scale {
    /// PaddleVideo's defaults: `fixed_ratio = true`, `do_round = false`.
    pub fn new(short_size: u32) -> Self {
        Self {
            short_size,
            fixed_ratio: true,
            do_round: false,
        }
    }

    /// The size a `width` x `height` frame is scaled to (the Python's arithmetic, in f64 as
    /// Python's floats are).
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let s = self.short_size;
        if (width <= height && width == s) || (height <= width && height == s) {
            return (width, height);
        }
        let long = |long: u32, short: u32| -> u32 {
            if self.fixed_ratio {
                (f64::from(s) * 4.0 / 3.0) as u32
            } else {
                let x = f64::from(long) * f64::from(s) / f64::from(short);
                if self.do_round {
                    py_round(x) as u32
                } else {
                    x as u32
                }
            }
        };
        if width < height {
            (s, long(height, width))
        } else {
            (long(width, height), s)
        }
    }

    /// Scales the clip.
    pub fn apply<'a>(&self, frames: Frames<'a>) -> Result<Frames<'a>> {
        let (w, h) = self.output_size(frames.width(), frames.height());
        if w == 0 || h == 0 {
            return Err(Error::EmptyImage {
                transform: "Scale",
                width: w,
                height: h,
            });
        }
        frames.resize_as("Scale", w, h)
    }
}
