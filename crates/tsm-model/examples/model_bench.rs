//! One measurement of `cargo xtask bench model`, in its own process so that peak RSS is its own.
//!
//!     model_bench eval|train DEPTH NUM_SEG SIZE BATCH ITERS [--profile]
//!
//! Random weights and clips. `eval`: the BN-folded model's forward (no gradients), as the crate
//! README runs it (no allocator call). `train`: a training step (as `tsm-cli train` runs it, after
//! `keep_freed_memory`: forward in training mode, cross entropy, backward, candle-nn's SGD update of
//! every trainable variable; train-loop's Nesterov momentum adds a few element-wise passes over
//! the weights, under 1% of a step). One untimed warm-up iteration, then ITERS timed ones. Prints
//! one JSON line: clips, seconds, cpu_seconds (of the timed iterations), peak_rss_mb.
//! `--profile` (eval) also prints, to stderr, the time per step of one forward pass, summed by
//! step label, with GFLOP/s for convolutions.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, Optimizer, VarBuilder, VarMap, SGD};
use tsm_model::internal::{forward_profiled, Profile};
use tsm_model::{Tsm, TsmConfig};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const NUM_CLASSES: usize = 400;

fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// User + system CPU seconds of this process so far (from /proc, in clock ticks of 10 ms): on a
/// loaded machine a steadier measure of the work done than wall time, for comparing our builds.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // the fields after the parenthesised command name, from field 3 (state) on
    let rest = stat.rsplit_once(')').ok_or("malformed /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) / 100.0)
}

/// Multiply-adds x 2 of a conv label `conv KxK sS C->O HxW...` over `frames` frames.
fn conv_flops(label: &str, frames: usize) -> Option<f64> {
    let mut it = label.split_whitespace().skip(1);
    let k: usize = it.next()?.split('x').next()?.parse().ok()?;
    let s: usize = it.next()?.strip_prefix('s')?.parse().ok()?;
    let (c, o) = it.next()?.split_once("->")?;
    let (h, w) = it.next()?.split_once('x')?;
    let (c, o, h, w): (usize, usize, usize, usize) = (
        c.parse().ok()?,
        o.parse().ok()?,
        h.parse().ok()?,
        w.parse().ok()?,
    );
    let pad = (k - 1) / 2;
    let (ho, wo) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
    Some(2.0 * (frames * o * c * k * k * ho * wo) as f64)
}

fn print_profile(profile: &Profile, frames: usize) {
    let total: f64 = profile.iter().map(|p| p.1).sum();
    let mut by_label: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (label, t) in profile {
        let e = by_label.entry(label).or_default();
        e.0 += t;
        e.1 += 1;
    }
    let mut rows: Vec<_> = by_label.into_iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    eprintln!("\nprofile of one eval forward ({frames} frames): {total:.3} s");
    eprintln!("| step | calls | ms | % | GFLOP/s |\n|---|---:|---:|---:|---:|");
    for (label, (t, n)) in rows {
        let rate = conv_flops(label, frames)
            .map_or("".to_string(), |f| format!("{:.0}", f * n as f64 / t / 1e9));
        eprintln!(
            "| {label} | {n} | {:.1} | {:.1} | {rate} |",
            t * 1e3,
            100.0 * t / total
        );
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.iter().any(|a| a == "--profile");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [mode, depth, seg, size, batch, iters] = pos[..] else {
        return Err(
            "usage: model_bench eval|train DEPTH NUM_SEG SIZE BATCH ITERS [--profile]".into(),
        );
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let (depth, seg, size, batch, iters) =
        (num(depth)?, num(seg)?, num(size)?, num(batch)?, num(iters)?);
    let device = Device::Cpu;
    let cfg = TsmConfig::pptsm(depth, NUM_CLASSES).with_num_seg(seg);
    let varmap = VarMap::new();
    let model = Tsm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let clips = Tensor::randn(0f32, 1.0, (batch, seg, 3, size, size), &device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % NUM_CLASSES as u32).collect();
    let labels = Tensor::new(labels, &device)?;
    let mut step: Box<dyn FnMut() -> Result<()>> = match mode.as_str() {
        "eval" => {
            let fused = model.fuse_for_inference()?;
            if profile {
                fused.forward(&clips)?; // warm-up
                let (_, p) = forward_profiled(&fused, &clips)?;
                print_profile(&p, batch * seg);
            }
            Box::new(move || {
                fused.forward(&clips)?;
                Ok(())
            })
        }
        "train" => {
            // as `tsm-cli train` runs it; eval is the README's path, with no allocator call
            tsm_model::keep_freed_memory();
            let mut opt = SGD::new(model.trainable_vars()?, 0.01)?;
            Box::new(move || {
                let logits = model.forward_t(&clips, true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                opt.backward_step(&loss)?;
                Ok(())
            })
        }
        m => return Err(format!("unknown mode {m} (eval or train)").into()),
    };
    step()?;
    let (t, cpu0) = (Instant::now(), cpu_seconds()?);
    for _ in 0..iters {
        step()?;
    }
    let seconds = t.elapsed().as_secs_f64();
    println!(
        "{{\"clips\": {}, \"seconds\": {seconds:.4}, \"cpu_seconds\": {:.2}, \"peak_rss_mb\": {:.1}}}",
        batch * iters,
        cpu_seconds()? - cpu0,
        peak_rss_mb()?
    );
    Ok(())
}
