//! Sliding windows over a stream of frames, each sampled as a clip of the window's length is
//! sampled in validation (what `predict` does to a whole video), keeping only the frames the
//! windows still open will sample.
//!
//! Window `k` covers frames `k * stride .. k * stride + len` and samples the frames at
//! `k * stride + o` for each offset `o` the [`Sampling`] gives a `len`-frame video. A frame is
//! kept only if some window not yet closed samples it, and dropped when the last such window
//! closes: at most `ceil(len / stride)` windows are open, so memory depends on the window, not
//! on the stream's length.

use std::collections::BTreeMap;
use std::ops::Range;

use image::RgbImage;

use crate::{Error, Result, SampleMode, Sampling, StreamFrame};

/// A closed window: its frames and where it lies in the stream.
#[derive(Debug, Clone)]
pub struct Window {
    /// 0, 1, 2, ... in stream order.
    pub index: usize,
    /// The frames it covers (presentation positions).
    pub frames: Range<usize>,
    /// Time of its first frame, in seconds from the stream's first frame.
    pub start: f64,
    /// Time its last frame ends.
    pub end: f64,
    /// The sampled frames, in clip order (`Sampling::clips * frames_per_clip` of them).
    pub images: Vec<RgbImage>,
}

/// Cuts a stream of frames into windows; see the module documentation.
#[derive(Debug)]
pub struct SlidingWindows {
    len: usize,
    stride: usize,
    /// Sampled positions inside a window, in clip order.
    offsets: Vec<usize>,
    min_offset: usize,
    /// The next window to close.
    next: usize,
    /// Frames some open window samples.
    kept: BTreeMap<usize, RgbImage>,
    /// Start times of the open windows, by window index.
    starts: BTreeMap<usize, f64>,
}

impl SlidingWindows {
    /// Windows of `len` frames every `stride` frames, sampled by `sampling` in validation.
    pub fn new(sampling: &Sampling, len: usize, stride: usize) -> Result<Self> {
        if len == 0 || stride == 0 {
            return Err(Error::Sampling(
                "window length and stride must be at least 1 frame".into(),
            ));
        }
        // Validation draws nothing, so no generator is needed.
        let offsets = sampling.indices_with(len, SampleMode::Valid, |_| 0)?;
        let min_offset = offsets.iter().copied().min().unwrap_or(0);
        Ok(SlidingWindows {
            len,
            stride,
            offsets,
            min_offset,
            next: 0,
            kept: BTreeMap::new(),
            starts: BTreeMap::new(),
        })
    }

    /// Frames per window.
    pub fn window_len(&self) -> usize {
        self.len
    }

    /// Frames from one window's start to the next one's.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The positions a window samples, relative to its first frame, in clip order.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Frames held for open windows.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Windows closed so far.
    pub fn closed(&self) -> usize {
        self.next
    }

    /// Whether a window not yet closed samples frame `index` (so its picture is needed).
    pub fn wants(&self, index: usize) -> bool {
        self.offsets.iter().any(|&o| {
            index >= o
                && (index - o).is_multiple_of(self.stride)
                && (index - o) / self.stride >= self.next
        })
    }

    /// Takes the next frame of the stream (frames come in order, from 0, each with its picture
    /// when [`SlidingWindows::wants`] it); `duration` is how long the frame shows, in seconds.
    /// Returns the window this frame closes, if any.
    pub fn push(&mut self, frame: StreamFrame, duration: f64) -> Result<Option<Window>> {
        let StreamFrame { index, time, image } = frame;
        if index.is_multiple_of(self.stride) {
            self.starts.insert(index / self.stride, time);
        }
        if let Some(image) = image {
            if self.wants(index) {
                self.kept.insert(index, image);
            }
        }
        let first = self.next * self.stride;
        if index + 1 != first + self.len {
            return Ok(None);
        }
        let missing = |i: usize| Error::Sampling(format!("frame {i} was not given a picture"));
        let images = self
            .offsets
            .iter()
            .map(|&o| {
                self.kept
                    .get(&(first + o))
                    .cloned()
                    .ok_or_else(|| missing(first + o))
            })
            .collect::<Result<Vec<_>>>()?;
        let start = self.starts.remove(&self.next).unwrap_or(time);
        let window = Window {
            index: self.next,
            frames: first..index + 1,
            start,
            end: time + duration,
            images,
        };
        self.next += 1;
        // The last window sampling frame f is (f - min_offset) / stride.
        let (next, stride, min_offset) = (self.next, self.stride, self.min_offset);
        self.kept.retain(|&f, _| (f - min_offset) / stride >= next);
        Ok(Some(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 picture whose red value names its frame.
    fn frame(index: usize) -> StreamFrame {
        StreamFrame {
            index,
            time: index as f64 * 0.5,
            image: Some(RgbImage::from_pixel(1, 1, image::Rgb([index as u8, 0, 0]))),
        }
    }

    /// Runs `frames` frames through windows of `len`/`stride`, giving pictures only when
    /// wanted; returns the windows (as sampled frame numbers) and the most frames ever kept.
    fn run(sampling: &Sampling, len: usize, stride: usize, frames: usize) -> (Vec<Window>, usize) {
        let mut w = SlidingWindows::new(sampling, len, stride).unwrap();
        let mut out = Vec::new();
        let mut most = 0;
        for i in 0..frames {
            let mut f = frame(i);
            if !w.wants(i) {
                f.image = None;
            }
            out.extend(w.push(f, 0.5).unwrap());
            most = most.max(w.kept());
        }
        (out, most)
    }

    fn sampled(w: &Window) -> Vec<usize> {
        w.images
            .iter()
            .map(|im| usize::from(im.get_pixel(0, 0)[0]))
            .collect()
    }

    #[test]
    fn windows_sample_as_a_clip_of_their_length() {
        let tsm8 = Sampling::default();
        let (windows, most) = run(&tsm8, 40, 10, 200);
        // Windows start every 10 frames while a whole one fits: 0, 10, ..., 160.
        assert_eq!(windows.len(), 17);
        let clip = tsm8
            .indices_with_choices(40, SampleMode::Valid, &[])
            .unwrap();
        for w in &windows {
            let first = w.index * 10;
            assert_eq!(w.frames, first..first + 40);
            let expected: Vec<usize> = clip.iter().map(|o| first + o).collect();
            assert_eq!(sampled(w), expected, "window {}", w.index);
            assert_eq!(w.start, first as f64 * 0.5);
            assert_eq!(w.end, (first + 40) as f64 * 0.5);
        }
        // Four windows are open at a time, each holding at most its 8 frames.
        assert!(most <= 4 * 8, "kept {most} frames");
    }

    #[test]
    fn memory_is_bounded_by_the_window_not_the_stream() {
        let dense = Sampling::Dense {
            num_seg: 8,
            window: 32,
            num_clips: 2,
        };
        let (short, short_most) = run(&dense, 48, 7, 300);
        let (long, long_most) = run(&dense, 48, 7, 3000);
        assert_eq!(short_most, long_most);
        assert_eq!(long.len(), (3000 - 48) / 7 + 1);
        // Two dense clips per window, as predict's dense test takes them from a 48-frame video.
        let clip = dense
            .indices_with_choices(48, SampleMode::Valid, &[])
            .unwrap();
        assert_eq!(clip.len(), 16);
        assert_eq!(
            sampled(&short[3]),
            clip.iter().map(|o| 21 + o).collect::<Vec<_>>()
        );
    }

    #[test]
    fn strides_longer_than_the_window_skip_frames() {
        let (windows, most) = run(&Sampling::default(), 8, 20, 100);
        assert_eq!(windows.len(), 5);
        assert_eq!(sampled(&windows[2]), (40..48).collect::<Vec<_>>());
        assert!(most <= 8);
    }

    #[test]
    fn zero_lengths_are_errors() {
        let e = SlidingWindows::new(&Sampling::default(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("at least 1 frame"), "{e}");
    }
}
