//! What the commands share: the device, loading weights with errors that say what is wrong,
//! the test-time views (sampling + transforms) and batched, multi-view classification.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use augment::{
    CenterCrop, ClipLoader, MultiScaleCrop, Pipeline, PipelineConfig, RandomCrop, RandomFlip,
    Scale, TenCrop, ThreeCrop, Transform,
};
use candle_core::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use train_loop::classify::Classifier;
use tsm_model::{Tsm, TsmConfig, TsmError, CONFIG_METADATA_KEY};
use video_io::{DecodeOptions, SampleMode, Sampling};

use crate::Global;

impl Global {
    /// The device named by `--device`.
    pub fn device(&self) -> Result<Device> {
        let spec = self.device.trim();
        if spec == "cpu" {
            return Ok(Device::Cpu);
        }
        let Some(n) = spec.strip_prefix("cuda:") else {
            bail!("unknown device `{spec}`: use `cpu` or `cuda:N`")
        };
        let n: usize = n
            .parse()
            .with_context(|| format!("`{spec}`: the CUDA ordinal must be a number"))?;
        cuda(n)
    }
}

/// CUDA device `n`, or an error saying how to build with CUDA.
#[cfg(feature = "cuda")]
pub fn cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).with_context(|| format!("opening CUDA device {n}"))
}

#[cfg(not(feature = "cuda"))]
pub fn cuda(n: usize) -> Result<Device> {
    bail!(
        "--device cuda:{n}: this tsm-cli was built without CUDA; rebuild it with \
         `cargo build --release -p cli --features cuda`"
    )
}

/// The validated config stored in a checkpoint's metadata and all its metadata, sorted by key,
/// read from the safetensors header alone; errors for files that are not tsm-model checkpoints
/// and for configs `Tsm::load` would refuse (the same error).
pub fn checkpoint_config(path: &Path) -> Result<(TsmConfig, Vec<(String, String)>)> {
    let (cfg, meta) = match tsm_model::read_checkpoint_config(path) {
        Ok(found) => found,
        Err(TsmError::NoConfig { .. }) => bail!(
            "{}: no `{CONFIG_METADATA_KEY}` in the safetensors metadata, so not a tsm-model \
             checkpoint (convert PaddleVideo .pdparams with `cargo xtask convert-weights`)",
            path.display()
        ),
        // As before: "reading PATH: OS error".
        Err(TsmError::Io { path, cause }) => {
            return Err(anyhow::Error::new(cause).context(format!("reading {}", path.display())))
        }
        Err(e) => return Err(e.into()),
    };
    let mut meta: Vec<_> = meta.into_iter().collect();
    meta.sort();
    Ok((cfg, meta))
}

/// Loads weights, saying what is wrong when the file is not a tsm-model checkpoint or its
/// tensors do not make the architecture its metadata describes (weights of another depth).
pub fn load_model(path: &Path, dtype: DType, device: &Device) -> Result<Tsm> {
    let (cfg, _) = checkpoint_config(path)?;
    match Tsm::load_with_dtype(path, dtype, device) {
        Ok(m) => Ok(m),
        Err(TsmError::Model { cause, .. }) => bail!(
            "{}: the tensors do not match {} (weights of another depth or head?): {cause}",
            path.display(),
            describe(&cfg)
        ),
        Err(e) => Err(e).context("loading weights"),
    }
}

/// "PP-TSM ResNet-50, 8 segments, 400 classes".
pub fn describe(cfg: &TsmConfig) -> String {
    format!(
        "PP-TSM ResNet-{}, {} segments, {} classes",
        cfg.depth, cfg.num_seg, cfg.num_classes
    )
}

/// How clips are taken from a video at test time.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Views {
    /// One clip of num_seg segments, the middle frame of each (TSM's uniform test).
    Uniform,
    /// PP-TSM's dense test: `--clips` spans of `--window` frames, num_seg frames from each.
    Dense,
}

/// Sampling and transforms, from flags or a config file.
#[derive(clap::Args, Debug, Clone)]
pub struct ViewArgs {
    #[command(flatten)]
    pub temporal: TemporalViews,
    #[command(flatten)]
    pub spatial: SpatialViews,
}

/// Which clips a video is cut into.
#[derive(clap::Args, Debug, Clone)]
pub struct TemporalViews {
    /// Temporal views: `uniform` (one clip) or `dense` (several clips, PaddleVideo's dense test).
    #[arg(long, value_enum, default_value_t = Views::Uniform)]
    pub views: Views,
    /// Clips per video with `--views dense` [default: 10].
    #[arg(long)]
    pub clips: Option<usize>,
    /// Frames one dense clip spans.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
}

impl TemporalViews {
    /// One clip of the model's segments: the default (`timeline` has its windows instead).
    pub fn uniform() -> Self {
        TemporalViews {
            views: Views::Uniform,
            clips: None,
            window: 64,
        }
    }
}

/// How each clip's frames are scaled and cropped, and the config file that overrides it all.
#[derive(clap::Args, Debug, Clone)]
pub struct SpatialViews {
    /// Spatial views per clip: 1 (Scale, CenterCrop), 3 (short side scaled to the crop size,
    /// three crops along the long side: PaddleVideo's dense test) or 10 (Scale, TenCrop).
    #[arg(long, default_value_t = 1, value_parser = parse_crops)]
    pub crops: u32,
    /// Short side after scaling (aspect ratio kept), before cropping.
    #[arg(long, default_value_t = 256)]
    pub short_size: u32,
    /// Side of the square crop the model sees.
    #[arg(long, default_value_t = 224)]
    pub crop_size: u32,
    /// A TOML file whose `[data]` table has `sampling` and `valid_pipeline` (and, for
    /// `preprocess --mode train`, `train_pipeline`), overriding the flags above; other keys are
    /// ignored, so a training config works.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

fn parse_crops(s: &str) -> std::result::Result<u32, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        "10" => Ok(10),
        _ => Err("crops must be 1, 3 or 10".into()),
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    data: DataSection,
}

#[derive(Deserialize, Default)]
struct DataSection {
    sampling: Option<Sampling>,
    valid_pipeline: Option<PipelineConfig>,
    train_pipeline: Option<PipelineConfig>,
}

impl ViewArgs {
    /// The sampling and pipeline for clips of `num_seg` frames in `mode`.
    pub fn loader(&self, num_seg: usize, mode: SampleMode) -> Result<ClipLoader> {
        let file = match &self.spatial.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<ConfigFile>(&text)
                    .with_context(|| format!("{}: bad config", path.display()))?
            }
            None => ConfigFile::default(),
        };
        let sampling = match file.data.sampling {
            Some(s) => s,
            None => self.sampling(num_seg)?,
        };
        if sampling.frames_per_clip() != num_seg {
            bail!(
                "the sampling gives clips of {} frames but the model expects num_seg = {num_seg}",
                sampling.frames_per_clip()
            )
        }
        let pipeline = match (mode, file.data.valid_pipeline, file.data.train_pipeline) {
            (SampleMode::Valid, Some(p), _) | (SampleMode::Train, _, Some(p)) => p,
            (SampleMode::Valid, None, _) => self.valid_pipeline(),
            (SampleMode::Train, _, None) => self.train_pipeline(),
        };
        let pipeline = Pipeline::new(pipeline).context("invalid transform pipeline")?;
        Ok(ClipLoader::new(
            sampling,
            pipeline,
            DecodeOptions::default(),
        ))
    }

    fn sampling(&self, num_seg: usize) -> Result<Sampling> {
        let t = &self.temporal;
        Ok(match t.views {
            Views::Uniform => {
                if t.clips.is_some_and(|c| c != 1) {
                    bail!("--clips needs --views dense (uniform sampling takes one clip)")
                }
                Sampling::Segments {
                    num_seg,
                    seg_len: 1,
                }
            }
            Views::Dense => Sampling::Dense {
                num_seg,
                window: t.window,
                num_clips: t.clips.unwrap_or(10),
            },
        })
    }

    fn valid_pipeline(&self) -> PipelineConfig {
        let keep_aspect = |short_size| {
            Transform::Scale(Scale {
                fixed_ratio: false,
                ..Scale::new(short_size)
            })
        };
        let sp = &self.spatial;
        let transforms = match sp.crops {
            3 => vec![
                keep_aspect(sp.crop_size),
                Transform::ThreeCrop(ThreeCrop {
                    target_size: sp.crop_size,
                }),
            ],
            10 => vec![
                keep_aspect(sp.short_size),
                Transform::TenCrop(TenCrop {
                    target_size: sp.crop_size,
                }),
            ],
            _ => vec![
                keep_aspect(sp.short_size),
                Transform::CenterCrop(CenterCrop::new(sp.crop_size)),
            ],
        };
        PipelineConfig {
            transforms,
            ..PipelineConfig::tutorial_valid()
        }
    }

    /// The tutorial's training transforms at the configured sizes.
    fn train_pipeline(&self) -> PipelineConfig {
        let sp = &self.spatial;
        PipelineConfig {
            transforms: vec![
                Transform::MultiScaleCrop(MultiScaleCrop::new(sp.short_size)),
                Transform::RandomCrop(RandomCrop {
                    target_size: sp.crop_size,
                }),
                Transform::RandomFlip(RandomFlip::default()),
            ],
            ..PipelineConfig::tutorial_train()
        }
    }
}

/// The precision inference runs in.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and activations, on every device.
    F32,
    /// bf16 weights and products, sums in f32: on CUDA devices through candle's bf16 kernels,
    /// on x86-64 CPUs with AVX-512 BF16 through tsm-model's own.
    Bf16,
}

/// How the model runs for scoring (predict, eval, timeline).
#[derive(clap::Args, Debug, Clone)]
pub struct InferenceArgs {
    /// Weights and activations in `f32`, or `bf16` (a CUDA device, or a CPU with avx512_bf16).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl InferenceArgs {
    /// The model's dtype on `device`.
    fn dtype(&self, device: &Device) -> Result<DType> {
        match self.precision {
            Precision::F32 => Ok(DType::F32),
            Precision::Bf16 if device.is_cuda() => Ok(DType::BF16),
            Precision::Bf16 => match tsm_model::missing_cpu_bf16_features() {
                None => Ok(DType::BF16),
                Some(needs) => bail!(
                    "--precision bf16 on the CPU needs {needs}, which this CPU lacks; leave the \
                     flag out to run f32 (or use --device cuda:N)"
                ),
            },
        }
    }
}

/// `weights` (BatchNorm folded for speed) scoring the test-time `views`, `batch` clips per
/// forward pass, in the precision `inference` asks for.
pub fn classifier(
    weights: &Path,
    global: &Global,
    inference: &InferenceArgs,
    views: &ViewArgs,
    batch: usize,
) -> Result<Classifier> {
    let device = global.device()?;
    let dtype = inference.dtype(&device)?;
    let model = load_model(weights, dtype, &device)?;
    let loader = views.loader(model.config().num_seg, SampleMode::Valid)?;
    Classifier::new(&model, loader, device, batch).with_context(|| weights.display().to_string())
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k(probs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// File extensions taken as videos when walking folders.
const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "avi", "mkv", "webm", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "3gp", "ts",
];

/// The videos named on the command line: files as given, folders walked recursively for
/// video extensions (sorted). A path that does not exist is an error; a folder without any
/// video is returned in the second list (a folder of frames, say), for the caller to report.
pub fn collect_videos(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut out = Vec::new();
    let mut empty = Vec::new();
    for p in inputs {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            out[before..].sort();
            if out.len() == before {
                empty.push(p.clone());
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok((out, empty))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// A bar with clips/s and ETA on stderr when it is a terminal; nothing otherwise (logs stay
/// clean). `eval` and `predict` show it.
pub fn clips_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} clips  {per_sec}  ETA {eta}  [{elapsed_precise}]",
    ) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let p = train_loop::classify::softmax(&[1.0, 3.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 3), vec![1, 3, 2]);
        assert_eq!(top_k(&p, 10).len(), 4);
    }

    #[test]
    fn devices() {
        let g = |d: &str| Global { device: d.into() };
        assert!(matches!(g("cpu").device().unwrap(), Device::Cpu));
        let e = g("gpu").device().unwrap_err().to_string();
        assert!(e.contains("use `cpu` or `cuda:N`"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = g("cuda:0").device().unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
    }

    #[test]
    fn precisions() {
        let a = |precision| InferenceArgs { precision };
        assert_eq!(a(Precision::F32).dtype(&Device::Cpu).unwrap(), DType::F32);
        let bf16 = a(Precision::Bf16).dtype(&Device::Cpu);
        match tsm_model::missing_cpu_bf16_features() {
            None => assert_eq!(bf16.unwrap(), DType::BF16),
            Some(needs) => {
                let e = bf16.unwrap_err().to_string();
                assert!(e.contains(needs) && e.contains("leave the flag out"), "{e}");
            }
        }
    }
}
