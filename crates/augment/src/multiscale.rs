//! `MultiScaleCrop`: TSN/TSM's corner-and-scale jittering.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::{Frames, Rect};
use crate::scale::{py_round, yes};

const NAME: &str = "MultiScaleCrop";

fn default_scales() -> Vec<f64> {
    vec![1.0, 0.875, 0.75, 0.66]
}

fn one() -> usize {
    1
}

/// PaddleVideo's `MultiScaleCrop`: crops a box whose sides are scales of the short side (near
/// pairs only, `max_distort`) at a random or grid position, then resizes it to
/// `target_size` x `target_size` with Pillow's bilinear filter.
///
/// Sides within 3 pixels of `target_size` snap to it, so a box can exceed an image whose short
/// side is just under `target_size`; as with Pillow's `crop`, the outside is then black.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiScaleCrop {
    /// Output side (the tutorial passes 256 and crops 224 afterwards).
    pub target_size: u32,
    /// Box sides as fractions of the short side (default 1, .875, .75, .66; empty = default).
    #[serde(default = "default_scales")]
    pub scales: Vec<f64>,
    /// Largest index distance between the width's and the height's scale (default 1).
    #[serde(default = "one")]
    pub max_distort: usize,
    /// Pick the position from a grid (default) instead of uniformly.
    #[serde(default = "yes")]
    pub fix_crop: bool,
    /// Keep grid positions that coincide because the box fills a side (default false).
    #[serde(default)]
    pub allow_duplication: bool,
    /// Use the 13-position grid instead of the 5-position one (default true).
    #[serde(default = "yes")]
    pub more_fix_crop: bool,
}

/// A drawn `MultiScaleCrop` box: size and top-left corner. Grid corners are multiples of a
/// quarter of the slack, so they can be fractional; Pillow rounds them half-to-even.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropChoice {
    /// Box width.
    pub width: u32,
    /// Box height.
    pub height: u32,
    /// Left edge (possibly fractional or negative).
    pub x: f64,
    /// Top edge (possibly fractional or negative).
    pub y: f64,
}

impl MultiScaleCrop {
    /// PaddleVideo's defaults for everything but `target_size`.
    pub fn new(target_size: u32) -> Self {
        Self {
            target_size,
            scales: default_scales(),
            max_distort: 1,
            fix_crop: true,
            allow_duplication: false,
            more_fix_crop: true,
        }
    }

    /// The candidate box sizes `(width, height)` for a `width` x `height` image, in the
    /// Python's order (its `pairs`).
    pub fn crop_sizes(&self, width: u32, height: u32) -> Vec<(u32, u32)> {
        let defaults;
        let scales = if self.scales.is_empty() {
            defaults = default_scales();
            &defaults
        } else {
            &self.scales
        };
        let base = f64::from(width.min(height));
        let target = i64::from(self.target_size);
        let snapped: Vec<u32> = scales
            .iter()
            .map(|s| {
                let x = (base * s) as i64;
                if (x - target).abs() < 3 {
                    self.target_size
                } else {
                    x as u32
                }
            })
            .collect();
        let mut pairs = Vec::new();
        for (i, &h) in snapped.iter().enumerate() {
            for (j, &w) in snapped.iter().enumerate() {
                if i.abs_diff(j) <= self.max_distort {
                    pairs.push((w, h));
                }
            }
        }
        pairs
    }

    /// The grid of top-left corners for a `crop_w` x `crop_h` box in a `width` x `height`
    /// image, in the Python's order (its `ret`).
    pub fn grid_offsets(
        &self,
        width: u32,
        height: u32,
        crop_w: u32,
        crop_h: u32,
    ) -> Vec<(f64, f64)> {
        let ws = (f64::from(width) - f64::from(crop_w)) / 4.0;
        let hs = (f64::from(height) - f64::from(crop_h)) / 4.0;
        let dup = self.allow_duplication;
        let mut ret = vec![(0.0, 0.0)];
        if dup || ws != 0.0 {
            ret.push((4.0 * ws, 0.0));
        }
        if dup || hs != 0.0 {
            ret.push((0.0, 4.0 * hs));
        }
        if dup || (hs != 0.0 && ws != 0.0) {
            ret.push((4.0 * ws, 4.0 * hs));
        }
        if dup || hs != 0.0 || ws != 0.0 {
            ret.push((2.0 * ws, 2.0 * hs));
        }
        if self.more_fix_crop {
            ret.extend([
                (0.0, 2.0 * hs),
                (4.0 * ws, 2.0 * hs),
                (2.0 * ws, 4.0 * hs),
                (2.0 * ws, 0.0 * hs),
                (ws, hs),
                (3.0 * ws, hs),
                (ws, 3.0 * hs),
                (3.0 * ws, 3.0 * hs),
            ]);
        }
        ret
    }

    /// Draws a box for a `width` x `height` clip: a size, then a grid corner (or, without
    /// `fix_crop`, a uniform integer corner).
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> Result<CropChoice> {
        self.check()?;
        let pairs = self.crop_sizes(width, height);
        let (cw, ch) = pairs[rng.random_range(0..pairs.len())];
        let (x, y) = if self.fix_crop {
            let grid = self.grid_offsets(width, height, cw, ch);
            grid[rng.random_range(0..grid.len())]
        } else {
            // Python's randint(0, negative) raises; so do we.
            if cw > width || ch > height {
                return Err(Error::CropTooLarge {
                    transform: NAME,
                    crop_width: cw,
                    crop_height: ch,
                    width,
                    height,
                });
            }
            let x = rng.random_range(0..=width - cw);
            let y = rng.random_range(0..=height - ch);
            (f64::from(x), f64::from(y))
        };
        Ok(CropChoice {
            width: cw,
            height: ch,
            x,
            y,
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidParameter {
                transform: NAME,
                reason: reason.to_string(),
            })
        };
        if self.target_size == 0 {
            return bad("target_size must be positive");
        }
        if self.scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return bad("scales must be positive");
        }
        Ok(())
    }

    /// The pixel box `(left, top, right, bottom)` Pillow's `crop` makes of a choice: each
    /// coordinate rounded half-to-even, so a box can come out one pixel wider than asked.
    pub fn pil_box(choice: &CropChoice) -> (i64, i64, i64, i64) {
        let x1 = choice.x + f64::from(choice.width);
        let y1 = choice.y + f64::from(choice.height);
        (
            py_round(choice.x) as i64,
            py_round(choice.y) as i64,
            py_round(x1) as i64,
            py_round(y1) as i64,
        )
    }

    /// Crops the chosen box and resizes it to `target_size` squared.
    pub fn apply<'a>(&self, frames: Frames<'a>, choice: &CropChoice) -> Result<Frames<'a>> {
        self.check()?;
        if !(choice.x.is_finite() && choice.y.is_finite()) {
            return Err(Error::InvalidParameter {
                transform: NAME,
                reason: format!("non-finite crop corner ({}, {})", choice.x, choice.y),
            });
        }
        let (x0, y0, x1, y1) = Self::pil_box(choice);
        let (w, h) = (x1 - x0, y1 - y0);
        let (bw, bh) = (u32::try_from(w), u32::try_from(h));
        let (Ok(bw), Ok(bh)) = (bw, bh) else {
            return Err(Error::EmptyImage {
                transform: NAME,
                width: choice.width,
                height: choice.height,
            });
        };
        let inside = x0 >= 0
            && y0 >= 0
            && x1 <= i64::from(frames.width())
            && y1 <= i64::from(frames.height());
        let t = self.target_size;
        if inside {
            let rect = Rect {
                x: x0 as u32,
                y: y0 as u32,
                width: bw,
                height: bh,
            };
            frames.crop_as(NAME, rect)?.resize_as(NAME, t, t)
        } else {
            frames.crop_padded(x0, y0, bw, bh)?.resize_as(NAME, t, t)
        }
    }
}
