//! The gemm convolution against candle's own `conv2d`: outputs and both gradients.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use tsm_model::conv::{conv2d, conv2d_bias};
use tsm_model::ops::leaky_relu;

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().unwrap().max_all().unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    f(diff) / f(scale).max(1e-30)
}

fn randn(shape: (usize, usize, usize, usize), dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

/// (n, c, h, w, o, k, stride, padding): 3x3 and 1x1 as the ResNet uses them (stride 1 and 2,
/// "same" padding), odd and non-square sizes, one frame (gemm's own threads) and more frames
/// than threads, a padded 2x2 kernel, and maps of over 1024 pixels (one gemm per frame rather than
/// several frames per gemm). Height and width leave the same remainder under the
/// stride: candle's own backward takes its output padding from the height alone.
const CASES: [Case; 10] = [
    (3, 5, 9, 7, 4, 3, 1, 1),
    (2, 4, 8, 8, 6, 3, 2, 1),
    (1, 3, 11, 9, 8, 3, 2, 1),
    (5, 6, 7, 9, 5, 1, 2, 0),
    (4, 8, 5, 6, 7, 1, 1, 0),
    (1, 16, 4, 4, 3, 1, 1, 0),
    (3, 2, 3, 3, 4, 3, 1, 1),
    (2, 3, 7, 9, 2, 2, 2, 1),
    (2, 3, 33, 32, 4, 3, 1, 1),
    (3, 4, 32, 33, 3, 1, 1, 0),
];

fn check(dtype: DType, tol: f64) {
    for (n, c, h, w, o, k, s, p) in CASES {
        let case = format!("{dtype:?} n{n} c{c} {h}x{w} o{o} k{k} s{s} p{p}");
        let x = Var::from_tensor(&randn((n, c, h, w), dtype)).unwrap();
        let wt = Var::from_tensor(&randn((o, c, k, k), dtype)).unwrap();
        let ours = conv2d(&x, &wt, s, p).unwrap();
        let theirs = x.conv2d(&wt, p, s, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{case}");
        let e = rel_err(&ours, &theirs);
        assert!(e < tol, "{case}: forward relative error {e}");

        // a random linear loss so that every output position carries its own gradient
        let r = Tensor::randn(0f32, 1.0, ours.dims(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let g_ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (&theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("input", &x), ("weight", &wt)] {
            let a = g_ours.get(v).unwrap();
            let b = g_theirs.get(v).unwrap();
            let e = rel_err(a, b);
            assert!(e < tol, "{case}: {name} gradient relative error {e}");
        }
    }
}

#[test]
fn conv_and_gradients_match_candle_f32() {
    check(DType::F32, 1e-5);
}

#[test]
fn conv_and_gradients_match_candle_f64() {
    check(DType::F64, 1e-12);
}

#[test]
fn fused_bias_and_leaky_relu_match_separate_ops() {
    for (n, c, h, w, o, k, s, p) in CASES {
        let x = randn((n, c, h, w), DType::F32);
        let wt = randn((o, c, k, k), DType::F32);
        let b = Tensor::randn(0f32, 1.0, o, &Device::Cpu).unwrap();
        let plain = x
            .conv2d(&wt, p, s, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        for leaky in [false, true] {
            let want = if leaky {
                leaky_relu(&plain).unwrap()
            } else {
                plain.clone()
            };
            let got = conv2d_bias(&x, &wt, &b, s, p, leaky).unwrap();
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "n{n} c{c} k{k} s{s} leaky {leaky}: {e}");
        }
    }
}

#[test]
fn mismatched_shapes_are_errors() {
    let x = randn((1, 3, 5, 5), DType::F32);
    assert!(conv2d(&x, &randn((4, 2, 3, 3), DType::F32), 1, 1).is_err());
    assert!(conv2d(&x, &randn((4, 3, 3, 2), DType::F32), 1, 1).is_err());
    assert!(conv2d(&x, &randn((4, 3, 7, 7), DType::F32), 1, 0).is_err());
    assert!(conv2d(&x, &randn((4, 3, 3, 3), DType::F32), 0, 1).is_err());
}
