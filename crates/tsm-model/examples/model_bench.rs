//! One measurement of `cargo xtask bench model` (and of `cargo xtask gpu-check`), in its own
//! process so that peak RSS is its own.
//!
//!     model_bench eval|train DEPTH NUM_SEG SIZE BATCH ITERS [--device cuda:N] [--dtype bf16]
//!                 [--profile]
//!     model_bench shift BATCH ITERS [--device cuda:N]
//!
//! Random weights and clips. `eval`: the BN-folded model's forward (no gradients), as the crate
//! README runs it (no allocator call); `--dtype bf16` loads the weights as bf16 and feeds bf16
//! clips. `train`: a training step (as `tsm-cli train` runs it, after `keep_freed_memory`:
//! forward in training mode, cross entropy, backward, candle-nn's SGD update of every trainable
//! variable; `--dtype bf16` keeps f32 weights and runs the convs' products in bf16, as
//! `tsm-cli train --precision bf16` and PyTorch's autocast do; train-loop's Nesterov momentum adds a few element-wise passes over the weights,
//! under 1% of a step). One untimed warm-up iteration, then ITERS timed ones, the device
//! synchronised before the clock stops. Prints one JSON line: clips, seconds, cpu_seconds (of the
//! timed iterations), peak_rss_mb (and, on a GPU, the device).
//! bf16 on a CPU without the instructions prints `{"skipped": "<why>"}` instead and exits 0.
//! `--profile`: eval also prints, to stderr, the time per step of one forward pass (each step
//! its fastest of three forwards), summed by step label, with GFLOP/s for convolutions; train
//! prints the time of one step by kind of op (conv forward/backward, BN, shift, pools,
//! activations, the optimizer, the rest), with the device synchronised around every op.
//! `shift`: the temporal shift alone on R50's shifted inputs (8 frames at 224), forward, against
//! a device-to-device copy of the same tensor, in f32 and bf16: one JSON line per shape and dtype
//! with both bandwidths (bytes read + written per second).

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, Optimizer, VarBuilder, VarMap, SGD};
use tsm_model::internal::{forward_profiled, time_ops, OpTimes, Profile};
use tsm_model::{temporal_shift, ProductPrecision, Tsm, TsmConfig};

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

/// Forwards a profiled run takes: each step's time is its fastest, as the machine's noise
/// (other tenants, clock changes) only ever adds time.
const PROFILE_RUNS: usize = 3;

/// The profile of [`PROFILE_RUNS`] forwards, each step at its fastest.
fn fastest_profile(model: &Tsm, clips: &Tensor) -> Result<Profile> {
    let (_, mut fastest) = forward_profiled(model, clips)?;
    for _ in 1..PROFILE_RUNS {
        let (_, p) = forward_profiled(model, clips)?;
        if p.len() != fastest.len() {
            return Err("a profiled forward ran other steps than the last".into());
        }
        for ((label, t), (again, u)) in fastest.iter_mut().zip(p) {
            if *label != again {
                return Err(format!("profiled forwards differ: {label} then {again}").into());
            }
            *t = t.min(u);
        }
    }
    Ok(fastest)
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
    eprintln!(
        "\nprofile of one eval forward ({frames} frames; each step its fastest of \
         {PROFILE_RUNS} forwards): {total:.3} s"
    );
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

/// The value after `--flag`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn device(spec: Option<&str>) -> Result<Device> {
    match spec {
        None | Some("cpu") => Ok(Device::Cpu),
        Some(s) => {
            let n = s
                .strip_prefix("cuda:")
                .ok_or(format!("--device {s}: cpu or cuda:N"))?;
            // the GPU computes in f32 as the CPU does (no TF32), as `tsm-cli` runs it
            #[cfg(feature = "cuda")]
            candle_core::cuda::set_gemm_reduced_precision_f32(false);
            Ok(Device::new_cuda(n.parse()?)?)
        }
    }
}

fn print_step_profile(ops: &OpTimes, optimizer: f64, total: f64, batch: usize) {
    eprintln!("\nprofile of one training step (batch {batch}, synchronised per op): {total:.4} s");
    eprintln!("| part | ms | % |\n|---|---:|---:|");
    let mut rest = total;
    let rows = ops
        .iter()
        .map(|(k, t)| (k.label(), *t))
        .chain([("optimizer (SGD update)", optimizer)]);
    for (label, t) in rows {
        rest -= t;
        eprintln!("| {label} | {:.2} | {:.1} |", t * 1e3, 100.0 * t / total);
    }
    eprintln!(
        "| rest (head, loss, candle's gradient sums) | {:.2} | {:.1} |",
        rest * 1e3,
        100.0 * rest / total
    );
}

/// `shift`: the shift kernel against a copy of the same bytes, on the shifted inputs of R50.
fn bench_shift(device: &Device, batch: usize, iters: usize) -> Result<()> {
    let shapes = [(64, 56), (256, 56), (512, 28), (1024, 14), (2048, 7)];
    for dtype in [DType::F32, DType::BF16] {
        for (c, hw) in shapes {
            let x = Tensor::randn(0f32, 1.0, (batch * 8, c, hw, hw), device)?.to_dtype(dtype)?;
            let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64> {
                f()?;
                device.synchronize()?;
                let t = Instant::now();
                for _ in 0..iters {
                    f()?;
                }
                device.synchronize()?;
                Ok(t.elapsed().as_secs_f64() / iters as f64)
            };
            let shift = time(&|| temporal_shift(&x, 8, 0.125))?;
            let copy = time(&|| x.copy())?;
            let bytes = 2.0 * (x.elem_count() * dtype.size_in_bytes()) as f64;
            println!(
                "{{\"shape\": {:?}, \"dtype\": \"{dtype:?}\", \"shift_gb_s\": {:.1}, \"copy_gb_s\": {:.1}, \"ratio\": {:.3}}}",
                x.dims(),
                bytes / shift / 1e9,
                bytes / copy / 1e9,
                copy / shift
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.iter().any(|a| a == "--profile");
    let device = device(flag(&args, "--device"))?;
    let dtype = match flag(&args, "--dtype") {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some(d) => return Err(format!("--dtype {d}: f32 or bf16").into()),
    };
    let pos: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with("--")
                && (*i == 0 || !matches!(args[i - 1].as_str(), "--device" | "--dtype"))
        })
        .map(|(_, a)| a.as_str())
        .collect();
    if let ["shift", batch, iters] = pos[..] {
        return bench_shift(&device, batch.parse()?, iters.parse()?);
    }
    let [mode, depth, seg, size, batch, iters] = pos[..] else {
        return Err(
            "usage: model_bench eval|train DEPTH NUM_SEG SIZE BATCH ITERS [--device cuda:N] \
                    [--dtype bf16] [--profile] | shift BATCH ITERS [--device cuda:N]"
                .into(),
        );
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let (depth, seg, size, batch, iters) =
        (num(depth)?, num(seg)?, num(size)?, num(batch)?, num(iters)?);
    if let (DType::BF16, true, Some(needs)) = (
        dtype,
        device.is_cpu(),
        tsm_model::missing_cpu_bf16_features(),
    ) {
        // not a failure: the bench leaves the row out and says why
        println!("{{\"skipped\": \"bf16 on the CPU needs {needs}\"}}");
        return Ok(());
    }
    let cfg = TsmConfig::pptsm(depth, NUM_CLASSES).with_num_seg(seg);
    let varmap = VarMap::new();
    // training keeps f32 weights and activations; its bf16 is the conv products'
    let (weights, products) = match (mode, dtype) {
        ("train", DType::BF16) => (DType::F32, ProductPrecision::Bf16),
        _ => (dtype, ProductPrecision::F32),
    };
    let model = Tsm::new(&cfg, VarBuilder::from_varmap(&varmap, weights, &device))?
        .with_product_precision(products)?;
    let clips =
        Tensor::randn(0f32, 1.0, (batch, seg, 3, size, size), &device)?.to_dtype(weights)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % NUM_CLASSES as u32).collect();
    let labels = Tensor::new(labels, &device)?;
    let mut step: Box<dyn FnMut() -> Result<()>> = match mode {
        "eval" => {
            let fused = model.fuse_for_inference()?;
            if profile {
                fused.forward(&clips)?; // warm-up
                print_profile(&fastest_profile(&fused, &clips)?, batch * seg);
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
            let gradients = move || {
                let logits = model.forward_t(&clips, true)?;
                candle_nn::loss::cross_entropy(&logits, &labels)?.backward()
            };
            if profile {
                opt.step(&gradients()?)?; // warm-up
                let t = Instant::now();
                let (grads, ops) = time_ops(&gradients)?;
                device.synchronize()?;
                let update = Instant::now();
                opt.step(&grads)?;
                device.synchronize()?;
                let (update, total) = (update.elapsed(), t.elapsed());
                print_step_profile(&ops, update.as_secs_f64(), total.as_secs_f64(), batch);
            }
            Box::new(move || {
                opt.step(&gradients()?)?;
                Ok(())
            })
        }
        m => return Err(format!("unknown mode {m} (eval, train or shift)").into()),
    };
    step()?;
    device.synchronize()?;
    let (t, cpu0) = (Instant::now(), cpu_seconds()?);
    for _ in 0..iters {
        step()?;
    }
    device.synchronize()?;
    let seconds = t.elapsed().as_secs_f64();
    println!(
        "{{\"clips\": {}, \"seconds\": {seconds:.4}, \"cpu_seconds\": {:.2}, \"peak_rss_mb\": {:.1}, \"device\": \"{}\", \"dtype\": \"{dtype:?}\"}}",
        batch * iters,
        cpu_seconds()? - cpu0,
        peak_rss_mb()?,
        if device.is_cpu() { "cpu" } else { "cuda" },
    );
    Ok(())
}
