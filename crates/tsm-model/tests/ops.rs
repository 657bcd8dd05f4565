//! The ops candle lacks, checked against slow references and against Paddle.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var, D};
use tsm_model::ops::{
    add_leaky_relu, avg_pool2x2_ceil, leaky_relu, max_pool3x3_s2_p1, max_pool3x3_s2_p1_reference,
    shift_folds, temporal_shift, temporal_shift_reference,
};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

#[test]
fn shift_folds_match_paddle() {
    assert_eq!(shift_folds(64, 1.0 / 8.0), (8, 16));
    assert_eq!(shift_folds(256, 1.0 / 16.0), (16, 32));
    assert_eq!(shift_folds(7, 1.0 / 3.0), (2, 4));
    assert_eq!(shift_folds(10, 0.25), (2, 5));
}

#[test]
fn shift_direction_is_paddles() {
    // N=1, T=3, C=4 (ratio 1/4: channel 0 from t-1, channel 1 from t+1), 1x1 maps
    let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let x = Tensor::from_vec(v, (3, 4, 1, 1), &Device::Cpu).unwrap();
    let y = temporal_shift(&x, 3, 0.25)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    #[rustfmt::skip]
    let want = [
        0., 5., 2., 3.,
        0., 9., 6., 7.,
        4., 0., 10., 11.,
    ];
    assert_eq!(y, want);
}

#[test]
fn shift_fast_equals_reference() {
    for (n, t, c, h, w, r) in [
        (2, 8, 16, 3, 5, 0.125),
        (1, 4, 10, 2, 3, 0.25),
        (3, 3, 7, 4, 4, 1.0 / 3.0),
        (2, 1, 8, 2, 2, 0.125),
        (1, 5, 3, 1, 1, 0.0),
    ] {
        let x = randn(&[n * t, c, h, w]);
        let fast = temporal_shift(&x, t, r).unwrap();
        let slow = temporal_shift_reference(&x, t, r).unwrap();
        assert_eq!(max_diff(&fast, &slow), 0.0, "{n} {t} {c} {r}");
        // non-contiguous input
        let xt = randn(&[n * t, c, w, h]).transpose(2, 3).unwrap();
        let fast = temporal_shift(&xt, t, r).unwrap();
        let slow = temporal_shift_reference(&xt, t, r).unwrap();
        assert_eq!(max_diff(&fast, &slow), 0.0);
    }
}

#[test]
fn shift_gradient_is_the_opposite_shift() {
    let (t, c) = (4, 8);
    let x = Var::from_tensor(&randn(&[2 * t, c, 3, 2])).unwrap();
    let g = randn(&[2 * t, c, 3, 2]);
    let loss = (temporal_shift(&x, t, 0.25).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap();
    let fast = loss.backward().unwrap().get(&x).unwrap().clone();
    let loss = (temporal_shift_reference(&x, t, 0.25).unwrap() * &g)
        .unwrap()
        .sum_all()
        .unwrap();
    let slow = loss.backward().unwrap().get(&x).unwrap().clone();
    assert_eq!(max_diff(&fast, &slow), 0.0);
}

#[test]
fn shift_rejects_bad_arguments() {
    let x = randn(&[6, 4, 2, 2]);
    assert!(temporal_shift(&x, 4, 0.25).is_err()); // 6 frames, not a multiple of 4
    assert!(temporal_shift(&x, 3, 0.75).is_err());
    assert!(temporal_shift(&randn(&[6, 4, 2]), 3, 0.25).is_err());
}

#[test]
fn shift_and_gradient_match_paddle() {
    let dir = test_support::reference_dir("paddle_model");
    let t = test_support::read_safetensors(&dir.join("shift.safetensors"));
    let meta = test_support::read_json(&dir.join("shift.json"));
    let get = |k: &str| {
        let r = &t[k];
        Tensor::from_vec(r.data.clone(), r.shape.clone(), &Device::Cpu).unwrap()
    };
    for case in meta.as_array().unwrap() {
        let i = case["index"].as_u64().unwrap();
        let num_seg = case["num_seg"].as_u64().unwrap() as usize;
        let ratio = case["ratio"].as_f64().unwrap();
        let x = Var::from_tensor(&get(&format!("{i}.x"))).unwrap();
        let g = get(&format!("{i}.grad_out"));
        let y = temporal_shift(&x, num_seg, ratio).unwrap();
        assert_eq!(
            max_diff(&y, &get(&format!("{i}.y"))),
            0.0,
            "case {i} forward"
        );
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = grads.get(&x).unwrap();
        assert_eq!(
            max_diff(dx, &get(&format!("{i}.grad_x"))),
            0.0,
            "case {i} gradient"
        );
    }
}

#[test]
fn avg_pool_ceil_is_exclusive() {
    let x = Tensor::arange(0f32, 9.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 3, 3))
        .unwrap();
    let y = avg_pool2x2_ceil(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(y, [2.0, 3.5, 6.5, 8.0]);
    // even sizes: plain 2x2 average pooling
    let x = randn(&[2, 3, 4, 6]);
    assert!(max_diff(&avg_pool2x2_ceil(&x).unwrap(), &x.avg_pool2d(2).unwrap()) < 1e-6);
    // mixed: 5x4
    let x = Tensor::arange(0f32, 20.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 5, 4))
        .unwrap();
    let y = avg_pool2x2_ceil(&x).unwrap();
    assert_eq!(y.dims(), &[1, 1, 3, 2]);
    let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, [2.5, 4.5, 10.5, 12.5, 16.5, 18.5]);
}

#[test]
fn max_pool_pads_like_paddle() {
    // compare with a direct loop using -inf padding
    let x = randn(&[1, 2, 7, 6]);
    let y = max_pool3x3_s2_p1(&x).unwrap();
    let (h, w) = (7usize, 6usize);
    let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(y.dims(), &[1, 2, ho, wo]);
    let xv = x.to_vec3::<f32>().err(); // x is 4-D; read via flatten
    assert!(xv.is_some());
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for c in 0..2 {
        for i in 0..ho {
            for j in 0..wo {
                let mut m = f32::NEG_INFINITY;
                for di in 0..3 {
                    for dj in 0..3 {
                        let (r, s) = ((2 * i + di) as isize - 1, (2 * j + dj) as isize - 1);
                        if (0..h as isize).contains(&r) && (0..w as isize).contains(&s) {
                            m = m.max(xv[c * h * w + r as usize * w + s as usize]);
                        }
                    }
                }
                assert_eq!(yv[(c * ho + i) * wo + j], m);
            }
        }
    }
}

#[test]
fn leaky_relu_slope_is_one_hundredth() {
    let x = Tensor::new(&[-2f32, 0.0, 3.0], &Device::Cpu).unwrap();
    assert_eq!(
        leaky_relu(&x).unwrap().to_vec1::<f32>().unwrap(),
        [-0.02, 0.0, 3.0]
    );
}

/// Value and input gradients of `f` and `g` under the same random linear loss.
fn value_and_grads(
    f: impl Fn(&[Tensor]) -> Tensor,
    g: impl Fn(&[Tensor]) -> Tensor,
    shapes: &[&[usize]],
) -> Vec<(f32, String)> {
    let vars: Vec<Var> = shapes
        .iter()
        .map(|s| Var::from_tensor(&randn(s)).unwrap())
        .collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (f(&xs), g(&xs));
    let mut out = vec![(max_diff(&a, &b), "value".to_string())];
    let r = randn(a.dims());
    let ga = (&a * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let d = max_diff(ga.get(v).unwrap(), gb.get(v).unwrap());
        out.push((d, format!("gradient {i}")));
    }
    out
}

#[test]
fn cpu_kernels_match_their_compositions() {
    let composed_leaky = |x: &Tensor| x.maximum(&(x * 0.01).unwrap()).unwrap();
    for shape in [&[2, 3, 5, 7][..], &[1, 64, 40, 33], &[5]] {
        for (d, what) in value_and_grads(
            |x| leaky_relu(&x[0]).unwrap(),
            |x| composed_leaky(&x[0]),
            &[shape],
        ) {
            assert_eq!(d, 0.0, "leaky_relu {shape:?}: {what}");
        }
        for (d, what) in value_and_grads(
            |x| add_leaky_relu(&x[0], &x[1]).unwrap(),
            |x| composed_leaky(&(&x[0] + &x[1]).unwrap()),
            &[shape, shape],
        ) {
            assert_eq!(d, 0.0, "add_leaky_relu {shape:?}: {what}");
        }
    }
    assert!(add_leaky_relu(&randn(&[2, 3]), &randn(&[3, 2])).is_err());
    // random values: no ties, so both put each window's gradient on its single maximum (summed
    // in another order where windows overlap)
    for shape in [[2, 3, 7, 6], [1, 4, 8, 8], [3, 2, 1, 5], [1, 1, 2, 2]] {
        for (d, what) in value_and_grads(
            |x| max_pool3x3_s2_p1(&x[0]).unwrap(),
            |x| max_pool3x3_s2_p1_reference(&x[0]).unwrap(),
            &[&shape],
        ) {
            assert!(d < 1e-6, "max pool {shape:?}: {what}: {d}");
        }
    }
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum_like_paddle() {
    // one 3x3 window of equal values (plus the padded row and column of the 2x2 output grid)
    let x = Tensor::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let y = max_pool3x3_s2_p1(&x).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // windows: rows/cols {0,1} for output 0, {1,2} for output 1: first maxima at
    // (0,0), (0,1), (1,0), (1,1)
    assert_eq!(gx, [1., 1., 0., 1., 1., 0., 0., 0., 0.]);
}
