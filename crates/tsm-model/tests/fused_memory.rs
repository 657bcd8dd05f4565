//! The README's inference path reuses its memory: after a first call, a fused model's forward
//! allocates no activations (the CPU plan keeps its buffers), so it needs no allocator setting
//! to run at full speed. The allocator of this test binary counts live bytes.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use test_support::{peak_alloc_during, CountingAlloc};
use tsm_model::{Tsm, TsmConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn fused_forward_reuses_its_activation_buffers() {
    let varmap = VarMap::new();
    let cfg = TsmConfig::pptsm(50, 10).with_num_seg(8);
    let model = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let fused = model.fuse_for_inference().unwrap();
    let clips = test_support::randn((1, 8, 3, 64, 64));
    // the largest activation: 8 frames x 256 channels x 16x16 (the plan adds a border)
    let activation = 8 * 256 * 16 * 16 * 4;

    let (first, first_peak) = peak_alloc_during(|| fused.forward(&clips).unwrap());
    let (second, second_peak) = peak_alloc_during(|| fused.forward(&clips).unwrap());
    let (_, unfused_peak) = peak_alloc_during(|| model.forward(&clips).unwrap());
    eprintln!(
        "peak heap above start: first fused call {first_peak} B, second {second_peak} B, \
         unfused {unfused_peak} B; one activation {activation} B"
    );
    assert_eq!(test_support::max_abs_diff(&first, &second), 0.0);
    // another batch size records its own buffers; coming back gives the same values
    let two = Tensor::cat(&[&clips, &clips], 0).unwrap();
    let both = fused.forward(&two).unwrap();
    let again = fused.forward(&clips).unwrap();
    assert_eq!(test_support::max_abs_diff(&again, &first), 0.0);
    assert_eq!(
        test_support::max_abs_diff(&both.get(1).unwrap(), &first.get(0).unwrap()),
        0.0
    );
    // the per-op path allocates every activation (what the bound tells apart)
    assert!(
        unfused_peak > 2 * activation,
        "unfused peak {unfused_peak} B"
    );
    assert!(
        first_peak > 2 * activation,
        "first fused call {first_peak} B"
    );
    assert!(
        second_peak < activation / 2,
        "the second fused call allocated {second_peak} B (an activation is {activation} B)"
    );
}
