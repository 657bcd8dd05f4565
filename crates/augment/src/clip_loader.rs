//! A sample's location in, its normalised clip(s) out: `video-io`'s sampling and decoding
//! followed by a [`Pipeline`]. This is the whole per-sample data path of training, evaluation
//! and prediction.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use video_io::{read_clip, DecodeOptions, FrameSource, SampleLocation, SampleMode, Sampling};

use crate::{Clip, Pipeline, Result};

/// Reads and transforms samples.
#[derive(Debug, Clone)]
pub struct ClipLoader {
    sampling: Sampling,
    pipeline: Pipeline,
    decode: DecodeOptions,
}

/// What loading one sample produced.
#[derive(Debug, Clone)]
pub struct LoadedClip {
    /// `clips * views` clips: for each sampled clip (several with dense validation sampling),
    /// its pipeline views (several with ThreeCrop/TenCrop), clip-major.
    pub clips: Vec<Clip>,
    /// The frame indices sampled.
    pub indices: Vec<usize>,
    /// Frames in the video.
    pub frames_len: usize,
}

impl ClipLoader {
    /// A loader sampling with `sampling`, transforming with `pipeline`.
    pub fn new(sampling: Sampling, pipeline: Pipeline, decode: DecodeOptions) -> Self {
        ClipLoader {
            sampling,
            pipeline,
            decode,
        }
    }

    /// The sampling rule.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The transform pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Clips each sample yields in `mode` (sampled clips times views).
    pub fn clips_per_sample(&self, mode: SampleMode) -> usize {
        self.sampling.clips(mode) * self.pipeline.views()
    }

    /// Loads the sample at `location`. Random choices (frame offsets, crops, flips) come from
    /// `rng`; in validation nothing is drawn.
    pub fn load(
        &self,
        location: &SampleLocation,
        mode: SampleMode,
        rng: &mut ChaCha8Rng,
    ) -> Result<LoadedClip> {
        let mut source = FrameSource::open(location, self.decode)?;
        let frames = read_clip(&mut source, &self.sampling, mode, rng)?;
        Ok(LoadedClip {
            clips: self.transform(&frames.frames, rng)?,
            indices: frames.indices,
            frames_len: frames.frames_len,
        })
    }

    /// The pipeline's views of frames already sampled (clip after clip, as the sampling
    /// orders them): what [`ClipLoader::load`] does after decoding, for frames read elsewhere
    /// (a stream's windows).
    pub fn transform(&self, frames: &[RgbImage], rng: &mut ChaCha8Rng) -> Result<Vec<Clip>> {
        let per_clip = self.sampling.frames_per_clip();
        let mut clips = Vec::with_capacity(frames.len().div_ceil(per_clip) * self.pipeline.views());
        for chunk in frames.chunks(per_clip) {
            clips.extend(self.pipeline.apply_views(chunk, rng)?);
        }
        Ok(clips)
    }

    /// [`ClipLoader::load`] with a generator seeded from `seed`: the same seed gives the same
    /// clip, whatever thread loads it.
    pub fn load_seeded(
        &self,
        location: &SampleLocation,
        mode: SampleMode,
        seed: u64,
    ) -> Result<LoadedClip> {
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
        self.load(location, mode, &mut rng)
    }
}
