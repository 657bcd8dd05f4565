//! A clip in flight through the transforms: its frames plus a pending crop and flip.
//!
//! Crops and flips only move a window and set a flag; pixels are touched by the next resize
//! (which reads the window through a borrowed view) or by the final conversion to f32. The
//! tutorial's train pipeline therefore costs one resize per frame and one normalising pass.

use std::sync::Arc;

use fast_image_resize::images::CroppedImage;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::error::{Error, Result};

/// A rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The frames of a clip (all of one size) as seen through a pending crop and horizontal flip.
///
/// Borrowed input frames stay borrowed until a resize makes new ones; made frames are shared,
/// so cloning (as multi-view crops do) copies no pixels.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    images: Store<'a>,
    /// The window of `images` the clip currently is; always inside the images.
    rect: Rect,
    /// Whether the window is mirrored left-right.
    flipped: bool,
}

#[derive(Debug, Clone)]
enum Store<'a> {
    Borrowed(&'a [RgbImage]),
    Shared(Arc<[RgbImage]>),
}

impl std::ops::Deref for Store<'_> {
    type Target = [RgbImage];
    fn deref(&self) -> &[RgbImage] {
        match self {
            Store::Borrowed(s) => s,
            Store::Shared(s) => s,
        }
    }
}

impl<'a> Frames<'a> {
    /// Borrows `images`, checking that there is at least one, that all have one size, and that
    /// the size is not zero.
    pub fn new(images: &'a [RgbImage]) -> Result<Self> {
        Self::from_store(Store::Borrowed(images))
    }

    /// Takes ownership of `images`, with the checks of [`Frames::new`].
    pub fn from_vec(images: Vec<RgbImage>) -> Result<Frames<'static>> {
        Frames::from_store(Store::Shared(images.into()))
    }

    fn from_store(images: Store<'a>) -> Result<Self> {
        let first = images.first().ok_or(Error::EmptyClip)?;
        let (width, height) = first.dimensions();
        if width == 0 || height == 0 {
            return Err(Error::EmptyImage {
                transform: "input",
                width,
                height,
            });
        }
        for (index, img) in images.iter().enumerate() {
            let (got_width, got_height) = img.dimensions();
            if (got_width, got_height) != (width, height) {
                return Err(Error::FrameSizeMismatch {
                    index,
                    width,
                    height,
                    got_width,
                    got_height,
                });
            }
        }
        Ok(Self {
            images,
            rect: Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
            flipped: false,
        })
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Always false: a clip has at least one frame.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Width of the clip as it now is.
    pub fn width(&self) -> u32 {
        self.rect.width
    }

    /// Height of the clip as it now is.
    pub fn height(&self) -> u32 {
        self.rect.height
    }

    /// `(width, height)`.
    pub fn size(&self) -> (u32, u32) {
        (self.rect.width, self.rect.height)
    }

    /// Whether the pending window is mirrored.
    pub fn is_flipped(&self) -> bool {
        self.flipped
    }

    /// Crops to box `r` of the clip as it now is, without copying. The box must lie inside the
    /// clip.
    pub fn crop(self, r: Rect) -> Result<Self> {
        self.crop_as("crop", r)
    }

    /// [`Frames::crop`], naming `transform` in errors.
    pub(crate) fn crop_as(mut self, transform: &'static str, r: Rect) -> Result<Self> {
        let fits =
            r.x.checked_add(r.width)
                .is_some_and(|e| e <= self.rect.width)
                && r.y
                    .checked_add(r.height)
                    .is_some_and(|e| e <= self.rect.height);
        if !fits {
            return Err(Error::CropTooLarge {
                transform,
                crop_width: r.width,
                crop_height: r.height,
                width: self.rect.width,
                height: self.rect.height,
            });
        }
        if r.width == 0 || r.height == 0 {
            return Err(Error::EmptyImage {
                transform,
                width: r.width,
                height: r.height,
            });
        }
        // A box in mirrored coordinates is the mirror image of a box in stored coordinates.
        let x = if self.flipped {
            self.rect.width - r.x - r.width
        } else {
            r.x
        };
        self.rect = Rect {
            x: self.rect.x + x,
            y: self.rect.y + r.y,
            width: r.width,
            height: r.height,
        };
        Ok(self)
    }

    /// Mirrors the clip left-right (lazily).
    pub fn flip(mut self) -> Self {
        self.flipped = !self.flipped;
        self
    }

    /// Resizes every frame to `width` x `height` like Pillow's `Image.resize(size, BILINEAR)`
    /// (a convolution, antialiased when shrinking). The pending crop is read in place.
    pub fn resize(self, width: u32, height: u32) -> Result<Frames<'a>> {
        self.resize_as("resize", width, height)
    }

    /// [`Frames::resize`], naming `transform` in errors.
    pub(crate) fn resize_as(
        self,
        transform: &'static str,
        width: u32,
        height: u32,
    ) -> Result<Frames<'a>> {
        if width == 0 || height == 0 {
            return Err(Error::EmptyImage {
                transform,
                width,
                height,
            });
        }
        if (width, height) == self.size() {
            // Pillow copies an image resized to its own size; a view needs no copy.
            return Ok(self);
        }
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        let Rect {
            x,
            y,
            width: w,
            height: h,
        } = self.rect;
        // One resizer for all frames: it keeps its scratch buffers from frame to frame.
        let mut resizer = Resizer::new();
        // Pillow resizes horizontally, rounds to u8, then resizes vertically; fast_image_resize
        // does u8 images vertically first. The order changes the rounding, so when both sides
        // change we run the two passes ourselves in Pillow's order.
        let two_pass = w != width && h != height;
        let mut tmp = RgbImage::new(if two_pass { width } else { 0 }, h);
        let mut out = Vec::with_capacity(self.images.len());
        for img in self.images.iter() {
            // A cropped *image* (not ResizeOptions::crop), so the filter sees only the crop's
            // pixels, as after Pillow's crop(); ResizeOptions::crop would read past its edges.
            let view = CroppedImage::new(img, x, y, w, h)?;
            let mut dst = RgbImage::new(width, height);
            if two_pass {
                resizer.resize(&view, &mut tmp, &opts)?;
                resizer.resize(&tmp, &mut dst, &opts)?;
            } else {
                resizer.resize(&view, &mut dst, &opts)?;
            }
            if self.flipped {
                // Mirroring commutes with resizing (symmetric kernels), up to the last bit of rounding;
                // no preset flips before a resize.
                image::imageops::flip_horizontal_in_place(&mut dst);
            }
            out.push(dst);
        }
        Frames::from_vec(out)
    }

    /// Crops a box that may extend past the clip's edges, filling the outside with black as
    /// Pillow's `Image.crop` does. This copies; in-bounds boxes should use [`Frames::crop`].
    pub fn crop_padded(&self, x: i64, y: i64, width: u32, height: u32) -> Result<Frames<'static>> {
        if width == 0 || height == 0 {
            return Err(Error::EmptyImage {
                transform: "crop",
                width,
                height,
            });
        }
        let out = (0..self.len())
            .map(|t| {
                let mut dst = RgbImage::new(width, height);
                for (dx, dy, px) in dst.enumerate_pixels_mut() {
                    let (sx, sy) = (x + i64::from(dx), y + i64::from(dy));
                    if let (Ok(sx), Ok(sy)) = (u32::try_from(sx), u32::try_from(sy)) {
                        if sx < self.rect.width && sy < self.rect.height {
                            *px = image::Rgb(self.stored_pixel(t, sx, sy));
                        }
                    }
                }
                dst
            })
            .collect();
        Frames::from_vec(out)
    }

    /// The pixel at (`x`, `y`) of frame `t` of the clip as it now is, if there is one. For
    /// tests and inspection: reading a clip pixel by pixel is slow.
    pub fn pixel(&self, t: usize, x: u32, y: u32) -> Option<[u8; 3]> {
        (t < self.len() && x < self.rect.width && y < self.rect.height)
            .then(|| self.stored_pixel(t, x, y))
    }

    /// [`Frames::pixel`] for coordinates known to be in range.
    fn stored_pixel(&self, t: usize, x: u32, y: u32) -> [u8; 3] {
        let sx = if self.flipped {
            self.rect.x + self.rect.width - 1 - x
        } else {
            self.rect.x + x
        };
        self.images[t].get_pixel(sx, self.rect.y + y).0
    }

    /// Row `y` of frame `t` of the window as stored: interleaved RGB, left to right in storage
    /// order (read it backwards if [`Self::is_flipped`]).
    pub(crate) fn stored_row(&self, t: usize, y: u32) -> &[u8] {
        let img = &self.images[t];
        let stride = img.width() as usize * 3;
        let start = (self.rect.y + y) as usize * stride + self.rect.x as usize * 3;
        &img.as_raw()[start..start + self.rect.width as usize * 3]
    }

    /// Copies the clip out as plain images.
    pub fn to_images(&self) -> Vec<RgbImage> {
        (0..self.len())
            .map(|t| {
                RgbImage::from_fn(self.rect.width, self.rect.height, |x, y| {
                    image::Rgb(self.stored_pixel(t, x, y))
                })
            })
            .collect()
    }

    /// Detaches from borrowed input (copying it only if it is borrowed).
    pub fn into_owned(self) -> Frames<'static> {
        Frames {
            images: match self.images {
                Store::Borrowed(s) => Store::Shared(s.into()),
                Store::Shared(s) => Store::Shared(s),
            },
            rect: self.rect,
            flipped: self.flipped,
        }
    }
}
