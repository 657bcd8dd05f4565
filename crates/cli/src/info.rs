//! `tsm-cli info`: what a checkpoint holds, and what a clip costs to classify.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use tsm_model::{parameter_shapes, TsmConfig};

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
    let (cfg, meta) = checkpoint_config(&args.weights)?;
    // Loading checks that the tensors make the model the metadata describes.
    load_model(&args.weights, &Device::Cpu)?;
    let shapes = parameter_shapes(&cfg)?;
    let count = |stats: bool| -> usize {
        shapes
            .iter()
            .filter(|(n, _)| (n.ends_with(".running_mean") || n.ends_with(".running_var")) == stats)
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    let block = if cfg.is_bottleneck() {
        "Bottleneck"
    } else {
        "BasicBlock"
    };
    println!("file:          {}", args.weights.display());
    println!(
        "architecture:  PP-TSM: ResNet-{}-vd ({block}) with temporal shift, ppTSM head",
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
    println!("classes:       {}", cfg.num_classes);
    println!("features:      {}", cfg.feature_dim());
    println!("dropout:       {}", cfg.dropout);
    println!(
        "parameters:    {} ({:.2} M), plus {} batch-norm statistics",
        count(false),
        count(false) as f64 / 1e6,
        count(true)
    );
    let flops = clip_flops(&cfg, args.size);
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

/// Output side of a `k` x `k` convolution (padding `(k-1)/2`) with `stride`.
fn conv_out(side: usize, k: usize, stride: usize) -> usize {
    (side + 2 * ((k - 1) / 2) - k) / stride + 1
}

/// Floating-point operations (2 per multiply-add) of the convolutions and the classifier for
/// one clip at `size` x `size`, following `ResNetTweaksTsm`'s layers.
pub fn clip_flops(cfg: &TsmConfig, size: usize) -> u64 {
    let mut macs = 0u64;
    // Adds one conv's multiply-adds; returns its output side.
    let mut conv = |side: usize, cin: usize, cout: usize, k: usize, stride: usize| {
        let out = conv_out(side, k, stride);
        macs += (out * out * cin * cout * k * k) as u64;
        out
    };
    let mut s = conv(size, 3, 32, 3, 2);
    s = conv(s, 32, 32, 3, 1);
    s = conv(s, 32, 64, 3, 1);
    s = conv_out(s, 3, 2); // max pool
    let mut cin = 64;
    let stages = cfg.stage_blocks().unwrap_or_default();
    for (stage, (&blocks, width)) in stages.iter().zip([64, 128, 256, 512]).enumerate() {
        for i in 0..blocks {
            let stride = if i == 0 && stage != 0 { 2 } else { 1 };
            if cfg.is_bottleneck() {
                let cout = width * 4;
                let a = conv(s, cin, width, 1, 1);
                let b = conv(a, width, width, 3, stride);
                conv(b, width, cout, 1, 1);
                if i == 0 {
                    // ResNet-D: 2x2 ceil-mode average pooling, then a stride-1 1x1 conv
                    let pooled = if stage == 0 { s } else { s.div_ceil(2) };
                    conv(pooled, cin, cout, 1, 1);
                }
                cin = cout;
                s = b;
            } else {
                let a = conv(s, cin, width, 3, stride);
                conv(a, width, width, 3, 1);
                if i == 0 {
                    conv(s, cin, width, 1, stride);
                }
                cin = width;
                s = a;
            }
        }
    }
    let per_clip = macs * cfg.num_seg as u64 + (cfg.feature_dim() * cfg.num_classes) as u64;
    2 * per_clip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_published_resnet_figures() {
        // ResNet-50-vd: ~4.3 G multiply-adds per 224x224 frame (torchvision's ResNet-50: 4.1 G,
        // the vd stem and shortcuts add ~0.2 G); ResNet-18-vd: ~2.0 G (ResNet-18: 1.8 G).
        let per_frame = |cfg: TsmConfig| clip_flops(&cfg.with_num_seg(1), 224) as f64 / 2e9;
        let r50 = per_frame(TsmConfig::pptsm_r50(0));
        assert!((4.2..4.5).contains(&r50), "{r50}");
        let r18 = per_frame(TsmConfig::pptsm_r18(0));
        assert!((1.8..2.2).contains(&r18), "{r18}");
        let eight = clip_flops(&TsmConfig::pptsm_r50(400), 224);
        let one = clip_flops(&TsmConfig::pptsm_r50(400).with_num_seg(1), 224);
        assert_eq!(eight - 2 * 2048 * 400, 8 * (one - 2 * 2048 * 400));
    }
}
