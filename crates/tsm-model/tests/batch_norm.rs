//! BatchNorm with Paddle's running-statistics rule.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
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

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-30)
}

#[test]
fn training_output_and_gradients_match_the_composed_formula() {
    let dev = Device::Cpu;
    for (n, c, h, w) in [(2, 3, 4, 5), (5, 16, 7, 7), (3, 4, 1, 1)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let bn = BatchNorm::new(c, vb.pp("bn")).unwrap();
        // non-trivial affine parameters
        for (name, v) in varmap.data().lock().unwrap().iter() {
            if name.ends_with("weight") || name.ends_with("bias") {
                v.set(&Tensor::randn(0.5f32, 1.0, c, &dev).unwrap())
                    .unwrap();
            }
        }
        let param = |k: &str| varmap.data().lock().unwrap()[k].clone();
        let (weight, bias) = (param("bn.weight"), param("bn.bias"));
        let x = Var::from_tensor(
            &(Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 3.0).unwrap(),
        )
        .unwrap();
        let y = bn.forward_t(&x, true).unwrap();
        // Paddle's training BN from candle's element-wise ops (biased variance)
        let mean = x.mean_keepdim((0, 2, 3)).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
        let per_c = |t: &Tensor| t.reshape((1, c, 1, 1)).unwrap();
        let want = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&per_c(&weight))
            .unwrap()
            .broadcast_add(&per_c(&bias))
            .unwrap();
        assert!(rel_err(&y, &want) < 1e-5, "{n}x{c}x{h}x{w}: output");
        let r = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_want = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [
            ("x", x.as_tensor()),
            ("weight", weight.as_tensor()),
            ("bias", bias.as_tensor()),
        ] {
            let e = rel_err(g.get(v).unwrap(), g_want.get(v).unwrap());
            assert!(
                e < 1e-4,
                "{n}x{c}x{h}x{w}: {name} gradient relative error {e}"
            );
        }
    }
}
