//! `tsm-cli export`: the model as an ONNX file for serving (ONNX Runtime, OpenVINO, TensorRT),
//! with the preprocessing `predict` applies recorded in its metadata.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use tsm_model::{OnnxOptions, DEFAULT_OPSET, ONNX_FEATURES, ONNX_INPUT, ONNX_LOGITS};
use video_io::SampleMode;

use crate::common::{load_model, ViewArgs};
use crate::labels::Labels;
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  tsm-cli export --weights pptsm_k400.safetensors --labels assets/labels/kinetics400.txt \\
      --out pptsm_k400.onnx
  tsm-cli export --weights ucf101.safetensors --crop-size 256 --opset 13 --out ucf101.onnx

The graph: input `clips`, float32 [batch, T, 3, H, W] with batch dynamic, T the checkpoint's
num_seg and H = W the test crop (--crop-size, or the crop of a -c config's valid_pipeline),
frames normalised as `predict` normalises them; output `logits`, float32 [batch, K] before
softmax (`features` [batch, C] for a backbone without head). BatchNorm is folded into the
convolutions; the temporal shift is Reshape/Slice/Pad/Concat. Operators: AveragePool, Add,
Concat, Conv, Gemm, GlobalAveragePool, LeakyRelu, MaxPool, Pad, ReduceMean, Reshape, Slice (all
supported by ONNX Runtime, OpenVINO and TensorRT).

metadata_props: tsm_config (JSON), input_size ([H, W]), input_layout (NTCHW), mean and std (RGB,
applied to pixels / 255), sampling and pipeline (the test-time frame sampling and transforms,
JSON, as `predict` uses them with the same view flags), views_per_video (clips whose logits
`predict` averages), and labels (a JSON list of class names) with --labels.

The file is written under a temporary name in the output's folder and renamed when complete,
so a failed export leaves nothing under the output name.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint (safetensors with the model config in its metadata).
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    out: PathBuf,
    /// ONNX opset (13 to 21).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
    /// Class names to store in the metadata: one per line, or `index name` lines.
    #[arg(long)]
    labels: Option<PathBuf>,
    #[command(flatten)]
    views: ViewArgs,
}

pub fn run(args: Args, _: &Global) -> Result<Outcome> {
    let model = load_model(&args.weights, DType::F32, &Device::Cpu)?;
    let cfg = model.config().clone();
    let labels = Labels::load(args.labels.as_ref(), cfg.num_classes, &args.weights)?;
    let loader = args.views.loader(cfg.num_seg, SampleMode::Valid)?;
    let pipeline = loader.pipeline();
    let (width, height) = fixed_output_size(pipeline)?;
    let json = |v: serde_json::Result<String>| v.context("serialising the metadata");
    let config = pipeline.config();
    let mut metadata = vec![
        (
            "mean".to_string(),
            json(serde_json::to_string(&config.mean))?,
        ),
        ("std".to_string(), json(serde_json::to_string(&config.std))?),
        (
            "sampling".to_string(),
            json(serde_json::to_string(loader.sampling()))?,
        ),
        ("pipeline".to_string(), json(serde_json::to_string(config))?),
        (
            "views_per_video".to_string(),
            loader.clips_per_sample(SampleMode::Valid).to_string(),
        ),
    ];
    if args.labels.is_some() {
        let names: Vec<&str> = (0..cfg.num_classes).filter_map(|i| labels.get(i)).collect();
        metadata.push(("labels".to_string(), json(serde_json::to_string(&names))?));
    }
    let opts = OnnxOptions {
        opset: args.opset,
        height: height as usize,
        width: width as usize,
        metadata,
    };
    let out = &args.out;
    // Made first, so that an unwritable folder fails before the export's work.
    let mut tmp = temp_file_beside(out)?;
    let bytes = model
        .to_onnx(&opts)
        .with_context(|| format!("exporting {} to {}", args.weights.display(), out.display()))?;
    let write_err = || format!("writing {}", out.display());
    tmp.write_all(&bytes).with_context(write_err)?;
    tmp.as_file().sync_all().with_context(write_err)?;
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(write_err)?;
    let output = if cfg.num_classes > 0 {
        format!("{ONNX_LOGITS} [batch, {}]", cfg.num_classes)
    } else {
        format!("{ONNX_FEATURES} [batch, {}]", cfg.feature_dim())
    };
    eprintln!(
        "wrote {} ({:.1} MB, opset {}): input {ONNX_INPUT} [batch, {}, 3, {height}, {width}], \
         output {output}",
        out.display(),
        bytes.len() as f64 / 1e6,
        args.opset,
        cfg.num_seg,
    );
    Ok(Outcome::Success)
}

/// `(width, height)` of the clips the test pipeline makes, which must not depend on the video
/// (the exported graph has a fixed frame size).
fn fixed_output_size(pipeline: &augment::Pipeline) -> Result<(u32, u32)> {
    // a landscape and a portrait video, both larger than any usual crop
    let sizes = [(1280, 720), (720, 1280)].map(|(w, h)| pipeline.output_size(w, h));
    match sizes {
        [Ok(a), Ok(b)] if a == b => Ok(a),
        [Ok(_), Ok(_)] => bail!(
            "the test pipeline's output size depends on the video's (it ends without a crop); \
             an exported model needs a fixed frame size: end it with a CenterCrop"
        ),
        [Err(e), _] | [_, Err(e)] => Err(e).context("the test pipeline"),
    }
}

/// An empty temporary file in `path`'s folder, removed unless renamed to `path`.
fn temp_file_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    tempfile::Builder::new()
        .prefix(".tsm-export-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("writing {}", path.display()))
}
