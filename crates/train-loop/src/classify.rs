//! Scoring whole videos with a trained model: test-time views decoded in parallel, clips run
//! through the model in batches, each video's logits averaged over its views.

use augment::{Clip, ClipLoader};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tsm_model::Tsm;
use video_io::{SampleLocation, SampleMode};

use crate::error::{Error, Result};

/// A model with its test-time views: videos in, class probabilities out.
#[derive(Debug)]
pub struct Classifier {
    model: Tsm,
    loader: ClipLoader,
    device: Device,
    /// Clips per forward pass.
    batch: usize,
}

/// One video's result: probabilities over the classes, or why it could not be read.
pub type VideoResult = std::result::Result<Vec<f32>, String>;

impl Classifier {
    /// `model` (BatchNorm folded here for speed; it must have a classification head) scoring
    /// the views `loader` makes in validation mode, `batch` clips per forward pass.
    pub fn new(model: &Tsm, loader: ClipLoader, device: Device, batch: usize) -> Result<Self> {
        let cfg = model.config();
        if cfg.num_classes == 0 {
            return Err(Error::NoHead);
        }
        let frames = loader.sampling().frames_per_clip();
        if frames != cfg.num_seg {
            return Err(Error::ClipLength {
                frames,
                num_seg: cfg.num_seg,
            });
        }
        Ok(Self {
            model: model.fuse_for_inference()?,
            loader,
            device,
            batch: batch.max(1),
        })
    }

    /// The model.
    pub fn model(&self) -> &Tsm {
        &self.model
    }

    /// The test-time views: sampling and pipeline.
    pub fn loader(&self) -> &ClipLoader {
        &self.loader
    }

    /// Clips (temporal x spatial views) each video is scored on.
    pub fn clips_per_video(&self) -> usize {
        self.loader.clips_per_sample(SampleMode::Valid)
    }

    /// Videos to load at once so that a step fills about one forward batch.
    pub fn videos_per_step(&self) -> usize {
        (self.batch / self.clips_per_video()).max(1)
    }

    /// Scores videos: decodes them in parallel, runs the clips through the model in batches and
    /// averages each video's logits over its views before the softmax (PaddleVideo's dense test
    /// averages the pooled features of all views, which the linear head turns into the same
    /// mean of logits).
    pub fn classify(&self, videos: &[SampleLocation]) -> Result<Vec<VideoResult>> {
        let clips = videos
            .par_iter()
            .map(|v| {
                self.loader
                    .load_seeded(v, SampleMode::Valid, 0)
                    .map(|l| l.clips)
                    .map_err(|e| e.to_string())
            })
            .collect();
        self.score(clips)
    }

    /// Scores frames already sampled, one item per video (or window of a stream): its
    /// `clips * frames_per_clip` frames as the loader's sampling orders them. They go through
    /// the loader's pipeline in parallel and are scored as [`Classifier::classify`] scores.
    pub fn classify_frames(&self, samples: &[Vec<RgbImage>]) -> Result<Vec<VideoResult>> {
        let clips = samples
            .par_iter()
            .map(|frames| {
                // Validation pipelines draw nothing; seeded as `load_seeded(.., 0)` is.
                let mut rng = ChaCha8Rng::seed_from_u64(0);
                self.loader
                    .transform(frames, &mut rng)
                    .map_err(|e| e.to_string())
            })
            .collect();
        self.score(clips)
    }

    /// Runs each video's clips (or why it has none) through the model in batches and averages
    /// its logits.
    fn score(
        &self,
        per_video: Vec<std::result::Result<Vec<Clip>, String>>,
    ) -> Result<Vec<VideoResult>> {
        let mut clips = Vec::new();
        let mut owner = Vec::new();
        let mut results: Vec<VideoResult> = Vec::with_capacity(per_video.len());
        for (i, l) in per_video.into_iter().enumerate() {
            match l {
                Ok(c) => {
                    owner.extend(std::iter::repeat_n(i, c.len()));
                    clips.extend(c);
                    results.push(Ok(Vec::new()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let classes = self.model.config().num_classes;
        let mut sums = vec![vec![0f64; classes]; results.len()];
        let mut counts = vec![0usize; results.len()];
        let mut start = 0;
        while start < clips.len() {
            // A batch holds clips of one size (custom pipelines may leave sizes unequal).
            let shape = clips[start].shape();
            let mut end = start + 1;
            while end < clips.len() && end - start < self.batch && clips[end].shape() == shape {
                end += 1;
            }
            let [t, c, h, w] = shape;
            let data: Vec<f32> = clips[start..end]
                .iter()
                .flat_map(|clip| clip.data.iter().copied())
                .collect();
            let x = Tensor::from_vec(data, (end - start, t, c, h, w), &self.device)?
                .to_dtype(self.model.dtype())?;
            let logits = self
                .model
                .forward(&x)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (row, &video) in logits.iter().zip(&owner[start..end]) {
                for (s, &l) in sums[video].iter_mut().zip(row) {
                    *s += f64::from(l);
                }
                counts[video] += 1;
            }
            start = end;
        }
        for ((r, sum), n) in results.iter_mut().zip(sums).zip(counts) {
            if let Ok(p) = r {
                *p = softmax(&sum.iter().map(|s| s / n as f64).collect::<Vec<_>>());
            }
        }
        Ok(results)
    }
}

/// Softmax in f64, returned as f32.
pub fn softmax(logits: &[f64]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| (e / total) as f32).collect()
}
