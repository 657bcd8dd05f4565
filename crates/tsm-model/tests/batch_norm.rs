//! BatchNorm with Paddle's running-statistics rule.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tsm_model::BatchNorm;

#[test]
fn training_updates_running_stats_like_paddle() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = BatchNorm::new(2, vb.pp("bn")).unwrap();
    // channel 0 holds 1..=8, channel 1 holds 2 * (1..=8), over B=2, H=2, W=2
    let v: Vec<f32> = (0..16)
        .map(|i| {
            let (b, c, k) = (i / 8, (i / 4) % 2, i % 4);
            let base = (b * 4 + k + 1) as f32;
            if c == 0 {
                base
            } else {
                2.0 * base
            }
        })
        .collect();
    let x = Tensor::from_vec(v, (2, 2, 2, 2), &Device::Cpu).unwrap();
    let y = bn.forward_t(&x, true).unwrap();
    // mean 4.5, biased variance 5.25 (channel 0); 9 and 21 (channel 1)
    let rm = bn.running_mean().to_vec1::<f32>().unwrap();
    let rv = bn.running_var().to_vec1::<f32>().unwrap();
    assert!(
        (rm[0] - 0.45).abs() < 1e-6 && (rm[1] - 0.9).abs() < 1e-6,
        "{rm:?}"
    );
    assert!(
        (rv[0] - (0.9 + 0.525)).abs() < 1e-5 && (rv[1] - (0.9 + 2.1)).abs() < 1e-5,
        "{rv:?}"
    );
    // the output is normalised with the batch statistics
    let y0 = y
        .get(0)
        .unwrap()
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = (1.0 - 4.5) / (5.25f32 + 1e-5).sqrt();
    assert!((y0[0] - want).abs() < 1e-5);
    // the statistics live in the VarMap (so they are saved with it)
    let data = varmap.data().lock().unwrap();
    let stored = data["bn.running_mean"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(stored, rm);
    drop(data);
    // eval uses the running statistics and changes nothing
    let _ = bn.forward_t(&x, false).unwrap();
    assert_eq!(bn.running_mean().to_vec1::<f32>().unwrap(), rm);
}
