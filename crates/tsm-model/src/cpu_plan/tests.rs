//! The plan against the per-op path of the same fused backbone: every layer kind (stem,
//! Bottleneck and BasicBlock, pooled and projection shortcuts, the shift at block edges of
//! the clip), odd and even sizes, more than one clip, and a second call on kept buffers.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Kernel;
use crate::{ParamRole, Tsm, TsmConfig};

/// A model with seeded random weights, BN statistics and affine parameters, so the folded
/// biases and scales are not the identity.
fn model(depth: usize, num_seg: usize, shift: bool) -> Tsm {
    let varmap = VarMap::new();
    let mut cfg = TsmConfig::pptsm(depth, 5).with_num_seg(num_seg);
    cfg.shift = shift;
    let m = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    m.init_weights(|i| ChaCha8Rng::seed_from_u64(i as u64))
        .unwrap();
    for p in m.params() {
        let n = p.tensor.elem_count();
        let r = test_support::rand_uniform(0.0, 1.0, n);
        let v = match p.role {
            ParamRole::BnScale | ParamRole::BnVariance => (r + 0.5).unwrap(),
            ParamRole::BnShift | ParamRole::BnMean => (r - 0.5).unwrap(),
            _ => continue,
        };
        p.var()
            .unwrap()
            .set(&v.reshape(p.tensor.shape()).unwrap())
            .unwrap();
    }
    m
}

/// Relative L2 distance of the plan's feature maps (on `kernel`) from the per-op path's (f32),
/// for clips of `size x size`.
fn plan_vs_ops(m: &Tsm, clips: usize, size: usize, kernel: Kernel) -> f32 {
    let backbone = m.backbone();
    let per_op = backbone.fuse_layers().unwrap();
    let with_plan = per_op.clone().with_plan(kernel).unwrap();
    assert!(with_plan.has_cpu_plan(), "no CPU plan for {:?}", m.config());
    let n = clips * m.config().num_seg;
    let frames = test_support::randn((n, 3, size, size));
    use candle_nn::ModuleT;
    let want = per_op.forward_t(&frames, false).unwrap();
    let input = frames.to_dtype(kernel_dtype(kernel)).unwrap();
    let got = with_plan.forward_t(&input, false).unwrap();
    assert_eq!(got.dims(), want.dims());
    // the second call runs on the buffers the first left behind
    let again = with_plan.forward_t(&input, false).unwrap();
    assert_eq!(test_support::max_abs_diff(&again, &got), 0.0);
    test_support::rel_l2(&got.to_dtype(DType::F32).unwrap(), &want)
}

fn kernel_dtype(kernel: Kernel) -> DType {
    match kernel {
        Kernel::Bf16Avx512 | Kernel::Bf16Amx => DType::BF16,
        Kernel::F32Avx2 | Kernel::F32Avx512 => DType::F32,
    }
}

/// The kernels this CPU runs (a CPU without AVX2 fails: the tests would compare nothing).
fn kernels() -> Vec<Kernel> {
    let (here, not): (Vec<_>, Vec<_>) = Kernel::ALL.into_iter().partition(|k| k.runs_here());
    assert!(here.contains(&Kernel::F32Avx2), "this CPU lacks AVX2/FMA");
    if !not.is_empty() {
        eprintln!("this CPU cannot run the {not:?} kernels: not tested here");
    }
    here
}

/// The tolerance of a kernel against the f32 per-op path: f32 sums in another order, or
/// inputs and weights rounded to bf16 (8 significant bits) at every layer.
fn tolerance(kernel: Kernel) -> f32 {
    match kernel {
        Kernel::Bf16Avx512 | Kernel::Bf16Amx => 2e-2,
        Kernel::F32Avx2 | Kernel::F32Avx512 => 1e-5,
    }
}

#[test]
fn bottleneck_plan_matches_per_op_path() {
    let m = model(50, 4, true);
    for kernel in kernels() {
        for (clips, size) in [(1, 32), (2, 33), (1, 35), (1, 1), (1, 7)] {
            let e = plan_vs_ops(&m, clips, size, kernel);
            assert!(
                e < tolerance(kernel),
                "{kernel:?}: R50 {clips} clips of {size}px: rel L2 {e}"
            );
        }
    }
}

#[test]
fn basic_block_plan_matches_per_op_path() {
    let m = model(18, 2, true);
    for kernel in kernels() {
        for (clips, size) in [(2, 32), (1, 37)] {
            let e = plan_vs_ops(&m, clips, size, kernel);
            assert!(
                e < tolerance(kernel),
                "{kernel:?}: R18 {clips} clips of {size}px: rel L2 {e}"
            );
        }
    }
}

#[test]
fn plan_without_shift_matches_per_op_path() {
    for kernel in kernels() {
        let e = plan_vs_ops(&model(18, 2, false), 1, 32, kernel);
        assert!(e < tolerance(kernel), "{kernel:?}: R18 TSN: rel L2 {e}");
    }
}

#[test]
fn shift_folds_inside_blocks_match_per_op_path() {
    // 3 frames: ratio 1/3, folds at channels 21 and 42 of 64, inside blocks of 8
    for kernel in kernels() {
        let e = plan_vs_ops(&model(18, 3, true), 2, 32, kernel);
        assert!(
            e < tolerance(kernel),
            "{kernel:?}: R18, 3 frames: rel L2 {e}"
        );
    }
}
