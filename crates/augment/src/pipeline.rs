//! Pipelines: a serde config of transforms plus normalisation, run over one clip.

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::crop::{CenterCrop, Offset, RandomCrop, TenCrop, ThreeCrop};
use crate::error::{Error, Result};
use crate::flip::RandomFlip;
use crate::frames::Frames;
use crate::multiscale::{CropChoice, MultiScaleCrop};
use crate::normalize::{Clip, Normalize, IMAGENET_MEAN, IMAGENET_STD};
use crate::scale::Scale;

/// One transform of a pipeline, named as in PaddleVideo's YAML configs (externally tagged:
/// `{"Scale": {"short_size": 256}}` in JSON, `[[transforms]]` / `Scale = { short_size = 256 }`
/// in TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Transform {
    /// See [`Scale`].
    Scale(Scale),
    /// See [`MultiScaleCrop`].
    MultiScaleCrop(MultiScaleCrop),
    /// See [`RandomCrop`].
    RandomCrop(RandomCrop),
    /// See [`CenterCrop`].
    CenterCrop(CenterCrop),
    /// See [`RandomFlip`].
    RandomFlip(RandomFlip),
    /// See [`ThreeCrop`]; multi-view, so only last.
    ThreeCrop(ThreeCrop),
    /// See [`TenCrop`]; multi-view, so only last.
    TenCrop(TenCrop),
}

/// What a transform drew for one clip; deterministic transforms draw [`Choice::Fixed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Choice {
    /// Nothing drawn.
    Fixed,
    /// A [`MultiScaleCrop`] box.
    MultiScaleCrop(CropChoice),
    /// A [`RandomCrop`] corner.
    RandomCrop(Offset),
    /// Whether [`RandomFlip`] flips.
    RandomFlip(bool),
}

impl Choice {
    fn kind(&self) -> &'static str {
        match self {
            Choice::Fixed => "Fixed",
            Choice::MultiScaleCrop(_) => "MultiScaleCrop",
            Choice::RandomCrop(_) => "RandomCrop",
            Choice::RandomFlip(_) => "RandomFlip",
        }
    }
}

impl Transform {
    /// The transform's name.
    pub fn name(&self) -> &'static str {
        match self {
            Transform::Scale(_) => "Scale",
            Transform::MultiScaleCrop(_) => "MultiScaleCrop",
            Transform::RandomCrop(_) => "RandomCrop",
            Transform::CenterCrop(_) => "CenterCrop",
            Transform::RandomFlip(_) => "RandomFlip",
            Transform::ThreeCrop(_) => "ThreeCrop",
            Transform::TenCrop(_) => "TenCrop",
        }
    }

    /// Views made of one clip: 3 or 10 for the test crops, else 1.
    pub fn views(&self) -> usize {
        match self {
            Transform::ThreeCrop(_) => 3,
            Transform::TenCrop(_) => 10,
            _ => 1,
        }
    }

    /// The size of a `width` x `height` clip after this transform (of each view), checking that
    /// fixed-size crops fit.
    pub fn output_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        let fits = |t: u32, name| {
            if t == 0 {
                Err(Error::InvalidParameter {
                    transform: name,
                    reason: "target_size must be positive".into(),
                })
            } else if width < t || height < t {
                Err(Error::CropTooLarge {
                    transform: name,
                    crop_width: t,
                    crop_height: t,
                    width,
                    height,
                })
            } else {
                Ok((t, t))
            }
        };
        match self {
            Transform::Scale(s) => match s.output_size(width, height) {
                (0, _) | (_, 0) => Err(Error::EmptyImage {
                    transform: "Scale",
                    width,
                    height,
                }),
                size => Ok(size),
            },
            Transform::MultiScaleCrop(m) => Ok((m.target_size, m.target_size)),
            Transform::RandomCrop(c) => fits(c.target_size, "RandomCrop"),
            Transform::CenterCrop(c) => fits(c.target_size, "CenterCrop"),
            Transform::RandomFlip(_) => Ok((width, height)),
            Transform::ThreeCrop(c) => c
                .offsets(width, height)
                .map(|_| (c.target_size, c.target_size)),
            Transform::TenCrop(c) => fits(c.target_size, "TenCrop"),
        }
    }

    /// Draws this transform's random choice for a `width` x `height` clip.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> Result<Choice> {
        Ok(match self {
            Transform::MultiScaleCrop(m) => Choice::MultiScaleCrop(m.sample(width, height, rng)?),
            Transform::RandomCrop(c) => Choice::RandomCrop(c.sample(width, height, rng)?),
            Transform::RandomFlip(f) => Choice::RandomFlip(f.sample(rng)?),
            _ => Choice::Fixed,
        })
    }

    fn check(&self) -> Result<()> {
        let positive = |v: u32, what: &str| {
            if v == 0 {
                Err(Error::InvalidParameter {
                    transform: self.name(),
                    reason: format!("{what} must be positive"),
                })
            } else {
                Ok(())
            }
        };
        match self {
            Transform::Scale(s) => positive(s.short_size, "short_size"),
            Transform::MultiScaleCrop(m) => {
                positive(m.target_size, "target_size")?;
                if m.scales.iter().all(|s| s.is_finite() && *s > 0.0) {
                    Ok(())
                } else {
                    Err(Error::InvalidParameter {
                        transform: "MultiScaleCrop",
                        reason: format!("scales {:?} must be positive", m.scales),
                    })
                }
            }
            Transform::RandomCrop(RandomCrop { target_size })
            | Transform::CenterCrop(CenterCrop { target_size, .. })
            | Transform::ThreeCrop(ThreeCrop { target_size })
            | Transform::TenCrop(TenCrop { target_size }) => positive(*target_size, "target_size"),
            Transform::RandomFlip(f) => f.check(),
        }
    }
}

/// A pipeline as configured: transforms in order, then `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The transforms, applied in order; a multi-view one (ThreeCrop, TenCrop) only last.
    pub transforms: Vec<Transform>,
    /// Channel means, RGB (default ImageNet's).
    #[serde(default = "imagenet_mean")]
    pub mean: [f32; 3],
    /// Channel standard deviations, RGB (default ImageNet's).
    #[serde(default = "imagenet_std")]
    pub std: [f32; 3],
}

fn imagenet_mean() -> [f32; 3] {
    IMAGENET_MEAN
}

fn imagenet_std() -> [f32; 3] {
    IMAGENET_STD
}

impl PipelineConfig {
    fn imagenet(transforms: Vec<Transform>) -> Self {
        Self {
            transforms,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The tutorial's training transforms: MultiScaleCrop(256), RandomCrop(224), RandomFlip(0.5).
    pub fn tutorial_train() -> Self {
        Self::imagenet(vec![
            Transform::MultiScaleCrop(MultiScaleCrop::new(256)),
            Transform::RandomCrop(RandomCrop { target_size: 224 }),
            Transform::RandomFlip(RandomFlip::default()),
        ])
    }

    /// The tutorial's validation transforms: Scale(256, aspect kept), CenterCrop(224).
    pub fn tutorial_valid() -> Self {
        Self::imagenet(vec![
            Transform::Scale(Scale {
                fixed_ratio: false,
                ..Scale::new(256)
            }),
            Transform::CenterCrop(CenterCrop::new(224)),
        ])
    }

    /// PaddleVideo's `pptsm_k400_frames_uniform.yaml` training transforms: Scale(256) with its
    /// default fixed 4:3 ratio first, then the tutorial's.
    pub fn k400_train() -> Self {
        let mut t = Self::tutorial_train();
        t.transforms.insert(0, Transform::Scale(Scale::new(256)));
        t
    }

    /// PaddleVideo's K400 uniform-test transforms: Scale(256) (fixed 4:3 ratio), CenterCrop(224).
    pub fn k400_valid() -> Self {
        Self::imagenet(vec![
            Transform::Scale(Scale::new(256)),
            Transform::CenterCrop(CenterCrop::new(224)),
        ])
    }
}

/// A checked [`PipelineConfig`], ready to run on clips.
#[derive(Debug, Clone)]
pub struct Pipeline {
    config: PipelineConfig,
    normalize: Normalize,
}

impl Pipeline {
    /// Checks the configuration: parameters in range, multi-view transforms only last.
    pub fn new(config: PipelineConfig) -> Result<Self> {
        let n = config.transforms.len();
        for (i, t) in config.transforms.iter().enumerate() {
            t.check()?;
            if t.views() > 1 && i + 1 != n {
                return Err(Error::InvalidParameter {
                    transform: t.name(),
                    reason: "a multi-view transform must come last".into(),
                });
            }
        }
        let normalize = Normalize::new(config.mean, config.std)?;
        Ok(Self { config, normalize })
    }

    /// The configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Clips made of one input clip (3 or 10 with a test crop last).
    pub fn views(&self) -> usize {
        self.config.transforms.last().map_or(1, Transform::views)
    }

    /// `(width, height)` of the output for `width` x `height` input frames, or the error a clip
    /// of that size would meet (e.g. a crop larger than the image).
    pub fn output_size(&self, width: u32, height: u32) -> Result<(u32, u32)> {
        self.config
            .transforms
            .iter()
            .try_fold((width, height), |(w, h), t| t.output_size(w, h))
    }

    /// A hint for the decoder: the first transform, when it is a (deterministic) [`Scale`].
    /// `scale.output_size(W, H)` is then the size the frames are brought to first. `Scale`
    /// leaves frames whose short side already has that length alone, so frames decoded at that
    /// size pass through unchanged (though a decoder's scaler may not match Pillow's pixels).
    pub fn leading_scale(&self) -> Option<&Scale> {
        match self.config.transforms.first() {
            Some(Transform::Scale(s)) => Some(s),
            _ => None,
        }
    }

    /// Draws every transform's choice for a clip of `width` x `height` frames.
    pub fn sample(&self, width: u32, height: u32, rng: &mut impl Rng) -> Result<Vec<Choice>> {
        let mut size = (width, height);
        let mut choices = Vec::with_capacity(self.config.transforms.len());
        for t in &self.config.transforms {
            choices.push(t.sample(size.0, size.1, rng)?);
            size = t.output_size(size.0, size.1)?;
        }
        Ok(choices)
    }

    /// Runs the pipeline on `frames` with given choices (one per transform, from
    /// [`Pipeline::sample`] or fixed by a test); returns one clip per view.
    pub fn apply_with(&self, frames: &[RgbImage], choices: &[Choice]) -> Result<Vec<Clip>> {
        let transforms = &self.config.transforms;
        if choices.len() != transforms.len() {
            return Err(Error::ChoiceCount {
                expected: transforms.len(),
                got: choices.len(),
            });
        }
        let mut clip = Frames::new(frames)?;
        let mut views = None;
        for (index, (t, c)) in transforms.iter().zip(choices).enumerate() {
            let mismatch = || Error::ChoiceMismatch {
                index,
                expected: t.name(),
                got: c.kind(),
            };
            clip = match (t, c) {
                (Transform::Scale(s), Choice::Fixed) => s.apply(clip)?,
                (Transform::MultiScaleCrop(m), Choice::MultiScaleCrop(b)) => m.apply(clip, b)?,
                (Transform::RandomCrop(r), Choice::RandomCrop(o)) => r.apply(clip, *o)?,
                (Transform::CenterCrop(r), Choice::Fixed) => r.apply(clip)?,
                (Transform::RandomFlip(f), Choice::RandomFlip(b)) => f.apply(clip, *b),
                (Transform::ThreeCrop(x), Choice::Fixed) => {
                    views = Some(x.apply(&clip)?);
                    break;
                }
                (Transform::TenCrop(x), Choice::Fixed) => {
                    views = Some(x.apply(&clip)?);
                    break;
                }
                _ => return Err(mismatch()),
            };
        }
        let views = views.unwrap_or_else(|| vec![clip]);
        Ok(views.iter().map(|v| self.normalize.clip(v)).collect())
    }

    /// Runs the pipeline on `frames`, drawing choices from `rng`; returns one clip per view.
    pub fn apply_views(&self, frames: &[RgbImage], rng: &mut impl Rng) -> Result<Vec<Clip>> {
        let first = frames.first().ok_or(Error::EmptyClip)?;
        let choices = self.sample(first.width(), first.height(), rng)?;
        self.apply_with(frames, &choices)
    }

    /// Runs a single-view pipeline on `frames`, drawing choices from `rng`.
    pub fn apply(&self, frames: &[RgbImage], rng: &mut impl Rng) -> Result<Clip> {
        if self.views() != 1 {
            return Err(Error::MultiView {
                views: self.views(),
            });
        }
        let mut clips = self.apply_views(frames, rng)?;
        clips.pop().ok_or(Error::EmptyClip)
    }
}
