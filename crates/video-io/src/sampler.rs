//! Which frames of a video a clip is made of: PaddleVideo's `Sampler`, bit for bit.
//!
//! Indices are 0-based positions in decoded presentation order; frame folders add 1 when they
//! form file names, as PaddleVideo does.

use rand::Rng;

use crate::{Error, Result};

/// Training draws a random offset inside each segment; validation takes fixed positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleMode {
    /// Random offset per segment (PaddleVideo `valid_mode=False`).
    Train,
    /// The middle of each segment (PaddleVideo `valid_mode=True`).
    Valid,
}

/// How clips are cut from a video.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Sampling {
    /// TSN/TSM segment sampling (the tutorial's `Sampler`): `num_seg` equal segments, `seg_len`
    /// consecutive frames from each. One clip per video.
    Segments {
        /// Number of segments (the model's `num_seg`).
        num_seg: usize,
        /// Consecutive frames taken per segment.
        seg_len: usize,
    },
    /// PP-TSM's dense sampling: `num_seg` frames spread over a `window`-frame span, and in
    /// validation `num_clips` such spans spread evenly over the video (multi-view testing).
    Dense {
        /// Frames per clip.
        num_seg: usize,
        /// Frames the span of one clip covers (PaddleVideo: 64).
        window: usize,
        /// Clips per video in validation (PaddleVideo: 10).
        num_clips: usize,
    },
}

impl Default for Sampling {
    /// The tutorial's: 8 segments of 1 frame.
    fn default() -> Self {
        Sampling::Segments {
            num_seg: 8,
            seg_len: 1,
        }
    }
}

impl Sampling {
    /// Frames per clip.
    pub fn frames_per_clip(&self) -> usize {
        match *self {
            Sampling::Segments { num_seg, seg_len } => num_seg * seg_len,
            Sampling::Dense { num_seg, .. } => num_seg,
        }
    }

    /// Clips produced per video in `mode`.
    pub fn clips(&self, mode: SampleMode) -> usize {
        match (self, mode) {
            (Sampling::Dense { num_clips, .. }, SampleMode::Valid) => *num_clips,
            _ => 1,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Sampling(m.to_string()));
        match *self {
            Sampling::Segments { num_seg, seg_len } if num_seg == 0 || seg_len == 0 => {
                bad("num_seg and seg_len must be at least 1")
            }
            Sampling::Dense {
                num_seg,
                window,
                num_clips,
            } if num_seg == 0 || num_clips == 0 || window < num_seg => {
                bad("dense sampling needs num_seg >= 1, num_clips >= 1 and window >= num_seg")
            }
            _ => Ok(()),
        }
    }

    /// Frame indices for a video of `frames_len` decoded frames, drawing random choices from
    /// `rng` in training. `clips(mode) * frames_per_clip()` indices, clip after clip.
    pub fn indices(
        &self,
        frames_len: usize,
        mode: SampleMode,
        rng: &mut impl Rng,
    ) -> Result<Vec<usize>> {
        self.indices_with(frames_len, mode, |hi| rng.random_range(0..=hi))
    }

    /// As [`Sampling::indices`], with training's random draws given explicitly: `choices[i]` is
    /// the draw for segment `i` (0..=average_dur-seg_len) or, for dense sampling, the single
    /// start offset. For parity tests against a reference whose RNG differs from ours.
    pub fn indices_with_choices(
        &self,
        frames_len: usize,
        mode: SampleMode,
        choices: &[usize],
    ) -> Result<Vec<usize>> {
        let mut it = choices.iter().copied();
        let mut missing = false;
        let out = self.indices_with(frames_len, mode, |hi| {
            let c = it.next().unwrap_or_else(|| {
                missing = true;
                0
            });
            c.min(hi)
        })?;
        if missing {
            return Err(Error::Sampling("fewer choices than random draws".into()));
        }
        Ok(out)
    }

    /// The sampling rule with training's draws abstracted: `draw(hi)` returns a value in `0..=hi`.
    pub(crate) fn indices_with(
        &self,
        frames_len: usize,
        mode: SampleMode,
        mut draw: impl FnMut(usize) -> usize,
    ) -> Result<Vec<usize>> {
        self.validate()?;
        if frames_len == 0 {
            return Err(Error::Sampling("video has no frames".into()));
        }
        match *self {
            Sampling::Segments { num_seg, seg_len } => {
                let average_dur = frames_len / num_seg;
                let mut out = Vec::with_capacity(num_seg * seg_len);
                for i in 0..num_seg {
                    let start = if average_dur >= seg_len {
                        let within = match mode {
                            SampleMode::Train => draw(average_dur - seg_len),
                            SampleMode::Valid => (average_dur - 1) / 2,
                        };
                        within + i * average_dur
                    } else if average_dur >= 1 {
                        i * average_dur
                    } else {
                        i
                    };
                    out.extend((start..start + seg_len).map(|j| j % frames_len));
                }
                Ok(out)
            }
            Sampling::Dense {
                num_seg,
                window,
                num_clips,
            } => {
                let sample_pos = (1 + frames_len).saturating_sub(window).max(1);
                let t_stride = window / num_seg;
                let clip =
                    |start: usize| (0..num_seg).map(move |i| (i * t_stride + start) % frames_len);
                match mode {
                    // numpy's randint(0, sample_pos - 1) excludes its upper bound.
                    SampleMode::Train => {
                        let start = if sample_pos <= 2 {
                            0
                        } else {
                            draw(sample_pos - 2)
                        };
                        Ok(clip(start).collect())
                    }
                    // np.linspace(0, sample_pos - 1, num_clips, dtype=int) truncates.
                    SampleMode::Valid => Ok((0..num_clips)
                        .flat_map(|k| {
                            let start = if num_clips == 1 {
                                0
                            } else {
                                k * (sample_pos - 1) / (num_clips - 1)
                            };
                            clip(start)
                        })
                        .collect()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const TSM8: Sampling = Sampling::Segments {
        num_seg: 8,
        seg_len: 1,
    };

    #[test]
    fn valid_takes_segment_middles() {
        // avg = 175 // 8 = 21, first index (21-1)//2 = 10.
        let idx = TSM8
            .indices_with_choices(175, SampleMode::Valid, &[])
            .unwrap();
        assert_eq!(idx, vec![10, 31, 52, 73, 94, 115, 136, 157]);
    }

    #[test]
    fn short_videos_wrap_like_the_tutorial() {
        // frames_len < num_seg: idx = i, wrapped by frames_len.
        let idx = TSM8
            .indices_with_choices(3, SampleMode::Valid, &[])
            .unwrap();
        assert_eq!(idx, vec![0, 1, 2, 0, 1, 2, 0, 1]);
        // seg_len > average_dur >= 1: segment starts, consecutive frames wrap.
        let s = Sampling::Segments {
            num_seg: 2,
            seg_len: 3,
        };
        let idx = s.indices_with_choices(5, SampleMode::Train, &[]).unwrap();
        assert_eq!(idx, vec![0, 1, 2, 2, 3, 4]);
    }

    #[test]
    fn train_offsets_stay_in_their_segment_and_are_seeded() {
        let draw = |seed| {
            TSM8.indices(100, SampleMode::Train, &mut ChaCha8Rng::seed_from_u64(seed))
                .unwrap()
        };
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        for (i, &f) in a.iter().enumerate() {
            assert!((i * 12..i * 12 + 12).contains(&f), "{i}: {f}");
        }
        let fixed = TSM8
            .indices_with_choices(100, SampleMode::Train, &[0, 1, 2, 3, 4, 5, 6, 99])
            .unwrap();
        assert_eq!(fixed, vec![0, 13, 26, 39, 52, 65, 78, 95]);
    }

    #[test]
    fn dense_valid_spreads_ten_clips() {
        let d = Sampling::Dense {
            num_seg: 8,
            window: 64,
            num_clips: 10,
        };
        let idx = d.indices_with_choices(300, SampleMode::Valid, &[]).unwrap();
        assert_eq!(idx.len(), 80);
        // sample_pos = 237; starts = linspace(0, 236, 10) truncated.
        assert_eq!(&idx[..8], &[0, 8, 16, 24, 32, 40, 48, 56]);
        assert_eq!(idx[8], 26);
        assert_eq!(idx[72], 236);
        // A video shorter than the window wraps.
        let idx = d.indices_with_choices(20, SampleMode::Valid, &[]).unwrap();
        assert_eq!(&idx[..8], &[0, 8, 16, 4, 12, 0, 8, 16]);
    }

    #[test]
    fn bad_requests_are_errors() {
        let z = Sampling::Segments {
            num_seg: 0,
            seg_len: 1,
        };
        let sampling_error = |r: Result<Vec<usize>>| match r {
            Err(Error::Sampling(m)) => m,
            other => panic!("expected a sampling error, got {other:?}"),
        };
        let m = sampling_error(z.indices_with_choices(10, SampleMode::Valid, &[]));
        assert!(m.contains("num_seg"), "{m}");
        let m = sampling_error(TSM8.indices_with_choices(0, SampleMode::Valid, &[]));
        assert!(m.contains("no frames"), "{m}");
        let m = sampling_error(TSM8.indices_with_choices(100, SampleMode::Train, &[1]));
        assert!(m.contains("fewer choices"), "{m}");
    }
}
