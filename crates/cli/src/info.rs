//! `tsm-cli info`: what a checkpoint holds, and what a clip costs to classify.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device};

use crate::common::{checkpoint_config, load_model};
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Example:
  tsm-cli info pptsm_k400.safetensors
  tsm-cli info --size 256 pptsm_k400.safetensors

FLOPs count 2 x multiply-adds of every convolution and of the classifier for one clip of
num_seg frames; batch norm, activations, pooling and the temporal shift are left out, as
PaddleVideo's and MMAction2's FLOPs tables do.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The checkpoint.
    weights: PathBuf,
    /// Side of the square frames the FLOPs are counted for.
    #[arg(long, default_value_t = 224)]
    size: usize,
}

pub fn run(args: Args, _: &Global) -> Result<Outcome> {
    // The config is validated as `Tsm::load` does, so a checkpoint it refuses is refused here
    // with the same error, before anything is sized from it.
    let (cfg, meta) = checkpoint_config(&args.weights)?;
    // Loading checks that the tensors make the model the metadata describes.
    let model = load_model(&args.weights, DType::F32, &Device::Cpu)?;
    let params = model.params();
    let count = |stats: bool| -> usize {
        params
            .iter()
            .filter(|p| p.role.is_bn_statistic() == stats)
            .map(|p| p.tensor.elem_count())
            .sum()
    };
    let block = if cfg.is_bottleneck() {
        "Bottleneck"
    } else {
        "BasicBlock"
    };
    println!("file:          {}", args.weights.display());
    // num_classes 0 is a valid config (a backbone, e.g. converted ImageNet weights) that
    // predict and eval refuse; say so rather than print it like a classifier.
    let head = if cfg.num_classes > 0 {
        "ppTSM head"
    } else {
        "no head (features only)"
    };
    println!(
        "architecture:  PP-TSM: ResNet-{}-vd ({block}) with temporal shift, {head}",
        cfg.depth
    );
    println!("depth:         {}", cfg.depth);
    println!("num_seg:       {} frames per clip", cfg.num_seg);
    println!(
        "shift:         {}",
        if cfg.shift {
            format!("ratio {}", cfg.effective_shift_ratio())
        } else {
            "off (TSN)".into()
        }
    );
    if cfg.num_classes > 0 {
        println!("classes:       {}", cfg.num_classes);
    } else {
        println!("classes:       0 (a backbone: predict and eval need a classification head)");
    }
    println!("features:      {}", cfg.feature_dim());
    println!("dropout:       {}", cfg.dropout);
    println!(
        "parameters:    {} ({:.2} M), plus {} batch-norm statistics",
        count(false),
        count(false) as f64 / 1e6,
        count(true)
    );
    let flops = model.flops_per_clip(args.size, args.size)?;
    println!(
        "FLOPs/clip:    {:.2} G at {}x{} ({:.2} G per frame)",
        flops as f64 / 1e9,
        args.size,
        args.size,
        flops as f64 / 1e9 / cfg.num_seg as f64
    );
    println!("metadata:");
    for (k, v) in meta {
        let v: String = if v.chars().count() > 100 {
            v.chars().take(97).chain("...".chars()).collect()
        } else {
            v
        };
        println!("  {k}: {v}");
    }
    Ok(Outcome::Success)
}
