//! Every op against its reference, value and input gradients, on each device the build has;
//! on the CPU also in f16, which runs the ops' reference bodies (the path CUDA takes until its
//! kernels land). Then the properties the references themselves must have, against Paddle.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Result, Tensor, Var};

use super::activation::{add_leaky_relu_reference, leaky_relu_reference};
use super::conv::{conv2d_bias_reference, conv2d_reference};
use super::pool::{avg_pool2x2_ceil_reference, max_pool3x3_s2_p1_reference};
use super::shift::{shift_folds, temporal_shift_reference};
use super::*;

const F32: ProductPrecision = ProductPrecision::F32;

/// Runs `test` on every device this build has: the CPU always; with feature `cuda`, GPU 0,
/// failing loudly when there is none (a CUDA build's tests are meant to run on a GPU).
pub(crate) fn on_each_device(test: impl Fn(&Device) -> Result<()>) {
    if let Err(e) = test(&Device::Cpu) {
        panic!("on the CPU: {e}")
    }
    #[cfg(feature = "cuda")]
    {
        let gpu = Device::new_cuda(0)
            .unwrap_or_else(|e| panic!("built with feature `cuda` but no GPU to test on: {e}"));
        if let Err(e) = test(&gpu) {
            panic!("on cuda:0: {e}")
        }
    }
}

/// The dtypes to test an op in on `dev`: f32 and f64 (the CPU kernels' dtypes), and on the
/// CPU f16, which goes through the ops' reference bodies (candle has no CPU bf16 matmul).
fn dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cpu() {
        vec![DType::F32, DType::F64, DType::F16]
    } else {
        vec![DType::F32, DType::F64]
    }
}

/// Seeded `N(0, 1)` values of `shape` in `dtype` on `dev`: the same inputs on every run.
fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    test_support::randn(shape).to_dtype(dtype)?.to_device(dev)
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    f64::from(test_support::rel_max_diff(a, b))
}

/// Relative errors of `op` against `reference` on the same random inputs of `shapes`: the
/// value's, then each input's gradient under the same random linear loss (labelled).
fn against_reference(
    dev: &Device,
    dtype: DType,
    shapes: &[&[usize]],
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<(String, f64)>> {
    let vars: Vec<Var> = shapes
        .iter()
        .map(|s| Var::from_tensor(&randn(s, dtype, dev)?))
        .collect::<Result<_>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (a, b) = (op(&xs)?, reference(&xs)?);
    if a.dims() != b.dims() {
        candle_core::bail!("shapes {:?} and {:?}", a.dims(), b.dims())
    }
    let mut out = vec![("value".to_string(), rel_err(&a, &b))];
    let r = randn(a.dims(), dtype, dev)?;
    let ga = (&a * &r)?.sum_all()?.backward()?;
    let gb = (&b * &r)?.sum_all()?.backward()?;
    for (i, v) in vars.iter().enumerate() {
        match (ga.get(v), gb.get(v)) {
            (Some(x), Some(y)) => out.push((format!("gradient {i}"), rel_err(x, y))),
            (x, y) => candle_core::bail!(
                "gradient {i}: op {}, reference {}",
                x.is_some(),
                y.is_some()
            ),
        }
    }
    Ok(out)
}

/// Asserts every error of [`against_reference`] is at most `tol(dtype)`.
fn check(
    what: &str,
    dev: &Device,
    shapes: &[&[usize]],
    tol: impl Fn(DType) -> f64,
    op: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    for dtype in dtypes(dev) {
        for (label, e) in against_reference(dev, dtype, shapes, &op, &reference)? {
            if e > tol(dtype) {
                candle_core::bail!("{what} {shapes:?} {dtype:?}: {label} relative error {e}")
            }
        }
    }
    Ok(())
}

/// Exact where the op only moves or selects values (and in the reference bodies).
fn exact(_: DType) -> f64 {
    0.0
}

/// Sums in another order: gemm's and f64 accumulation against candle's.
fn summed(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 2e-5,
        _ => 0.0,
    }
}

#[test]
fn leaky_relu_and_residual_join_match_their_references() {
    on_each_device(|dev| {
        for shape in [&[2, 3, 5, 7][..], &[1, 64, 40, 33], &[5]] {
            check(
                "leaky_relu",
                dev,
                &[shape],
                exact,
                |x| leaky_relu(&x[0]),
                |x| leaky_relu_reference(&x[0]),
            )?;
            check(
                "add_leaky_relu",
                dev,
                &[shape, shape],
                exact,
                |x| add_leaky_relu(&x[0], &x[1]),
                |x| add_leaky_relu_reference(&x[0], &x[1]),
            )?;
        }
        let (a, b) = (
            randn(&[2, 3], DType::F32, dev)?,
            randn(&[3, 2], DType::F32, dev)?,
        );
        let e = add_leaky_relu(&a, &b).unwrap_err().to_string();
        assert!(e.contains("shapes [2, 3] and [3, 2] differ"), "{e}");
        Ok(())
    })
}

#[test]
fn leaky_relu_slope_is_one_hundredth() {
    let x = Tensor::new(&[-2f32, 0.0, 3.0], &Device::Cpu).unwrap();
    assert_eq!(
        leaky_relu(&x).unwrap().to_vec1::<f32>().unwrap(),
        [-0.02, 0.0, 3.0]
    );
}

#[test]
fn shift_matches_its_reference() {
    on_each_device(|dev| {
        for (n, t, c, h, w, r) in [
            (2, 8, 16, 3, 5, 0.125),
            (1, 4, 10, 2, 3, 0.25),
            (3, 3, 7, 4, 4, 1.0 / 3.0),
            (2, 1, 8, 2, 2, 0.125),
            (1, 5, 3, 1, 1, 0.0),
        ] {
            let shape = [n * t, c, h, w];
            check(
                "temporal_shift",
                dev,
                &[&shape],
                exact,
                |x| temporal_shift(&x[0], t, r),
                |x| temporal_shift_reference(&x[0], t, r),
            )?;
            // a non-contiguous input
            check(
                "temporal_shift (transposed input)",
                dev,
                &[&[n * t, c, w, h]],
                exact,
                |x| temporal_shift(&x[0].transpose(2, 3)?, t, r),
                |x| temporal_shift_reference(&x[0].transpose(2, 3)?, t, r),
            )?;
        }
        Ok(())
    })
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
    on_each_device(|dev| {
        // N=1, T=3, C=4 (ratio 1/4: channel 0 from t-1, channel 1 from t+1), 1x1 maps
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let x = Tensor::from_vec(v, (3, 4, 1, 1), dev)?;
        #[rustfmt::skip]
        let want = [
            0., 5., 2., 3.,
            0., 9., 6., 7.,
            4., 0., 10., 11.,
        ];
        for y in [
            temporal_shift(&x, 3, 0.25)?,
            temporal_shift_reference(&x, 3, 0.25)?,
        ] {
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, want);
        }
        Ok(())
    })
}

#[test]
fn shift_rejects_bad_arguments() {
    let x = randn(&[6, 4, 2, 2], DType::F32, &Device::Cpu).unwrap();
    let err = |t: &Tensor, seg, r| temporal_shift(t, seg, r).unwrap_err().to_string();
    assert!(err(&x, 4, 0.25).contains("batch dimension 6 is not a multiple of num_seg 4"));
    assert!(err(&x, 3, 0.75).contains("ratio 0.75 must lie in [0, 0.5]"));
    let x3 = randn(&[6, 4, 2], DType::F32, &Device::Cpu).unwrap();
    assert!(err(&x3, 3, 0.25).contains("expected [N*T, C, H, W]"));
}

#[test]
fn shift_and_gradient_match_paddle() {
    let dir = test_support::reference_dir("paddle_model");
    let t = test_support::read_safetensors(&dir.join("shift.safetensors"));
    let meta = test_support::read_json(&dir.join("shift.json"));
    on_each_device(|dev| {
        let get = |k: &str| {
            let r = &t[k];
            Tensor::from_vec(r.data.clone(), r.shape.clone(), dev)
        };
        for case in meta.as_array().unwrap() {
            let i = case["index"].as_u64().unwrap();
            let num_seg = case["num_seg"].as_u64().unwrap() as usize;
            let ratio = case["ratio"].as_f64().unwrap();
            let x = Var::from_tensor(&get(&format!("{i}.x"))?)?;
            let g = get(&format!("{i}.grad_out"))?;
            let y = temporal_shift(&x, num_seg, ratio)?;
            assert_eq!(
                test_support::max_abs_diff(&y, &get(&format!("{i}.y"))?),
                0.0,
                "case {i}"
            );
            let grads = (&y * &g)?.sum_all()?.backward()?;
            let dx = grads.get(&x).unwrap();
            assert_eq!(
                test_support::max_abs_diff(dx, &get(&format!("{i}.grad_x"))?),
                0.0,
                "case {i}"
            );
        }
        Ok(())
    })
}

#[test]
fn max_pool_matches_its_reference() {
    on_each_device(|dev| {
        // random values: no ties, so both put each window's gradient on its single maximum
        // (summed in another order where windows overlap)
        for shape in [[2, 3, 7, 6], [1, 4, 8, 8], [3, 2, 1, 5], [1, 1, 2, 2]] {
            check(
                "max pool",
                dev,
                &[&shape],
                |d| if d == DType::F32 { 1e-6 } else { summed(d) },
                |x| max_pool3x3_s2_p1(&x[0]),
                |x| max_pool3x3_s2_p1_reference(&x[0]),
            )?;
        }
        Ok(())
    })
}

#[test]
fn max_pool_pads_like_paddle() {
    // against a direct loop with -inf padding
    let (h, w) = (7usize, 6usize);
    let x = randn(&[1, 2, h, w], DType::F32, &Device::Cpu).unwrap();
    let y = max_pool3x3_s2_p1(&x).unwrap();
    let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    assert_eq!(y.dims(), &[1, 2, ho, wo]);
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
fn max_pool_gradient_goes_to_the_first_maximum_like_paddle() {
    // one 3x3 window of equal values (plus the padded row and column of the 2x2 output grid)
    let x = Tensor::ones((1, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let y = max_pool3x3_s2_p1(&x).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g.get(&x).unwrap().flatten_all().unwrap();
    // windows: rows/cols {0,1} for output 0, {1,2} for output 1: first maxima at
    // (0,0), (0,1), (1,0), (1,1)
    assert_eq!(
        gx.to_vec1::<f32>().unwrap(),
        [1., 1., 0., 1., 1., 0., 0., 0., 0.]
    );
}

#[test]
fn avg_pool_matches_its_reference() {
    on_each_device(|dev| {
        // even, odd, mixed, one-row and one-cell planes
        for shape in [
            [2, 3, 8, 6],
            [1, 4, 7, 7],
            [3, 2, 5, 4],
            [2, 2, 1, 5],
            [1, 1, 1, 1],
        ] {
            check(
                "avg pool",
                dev,
                &[&shape],
                |d| if d == DType::F32 { 1e-6 } else { summed(d) },
                |x| avg_pool2x2_ceil(&x[0]),
                |x| avg_pool2x2_ceil_reference(&x[0]),
            )?;
        }
        Ok(())
    })
}

#[test]
fn avg_pool_ceil_is_exclusive() {
    on_each_device(|dev| {
        let x = Tensor::arange(0f32, 9.0, dev)?.reshape((1, 1, 3, 3))?;
        let y = avg_pool2x2_ceil(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [2.0, 3.5, 6.5, 8.0]);
        // even sizes: plain 2x2 average pooling
        let x = randn(&[2, 3, 4, 6], DType::F32, dev)?;
        assert!(test_support::max_abs_diff(&avg_pool2x2_ceil(&x)?, &x.avg_pool2d(2)?) < 1e-6);
        // mixed: 5x4
        let x = Tensor::arange(0f32, 20.0, dev)?.reshape((1, 1, 5, 4))?;
        let y = avg_pool2x2_ceil(&x)?;
        assert_eq!(y.dims(), &[1, 1, 3, 2]);
        let y = y.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [2.5, 4.5, 10.5, 12.5, 16.5, 18.5]);
        Ok(())
    })
}

type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// (n, c, h, w, o, k, stride, padding): 3x3 and 1x1 as the ResNet uses them (stride 1 and 2,
/// "same" padding), odd and non-square sizes, one frame (gemm's own threads) and more frames
/// than threads, a padded 2x2 kernel, and maps of over 1024 pixels (one gemm per frame rather
/// than several frames per gemm), two of them large enough to be built a band of rows at a time
/// (strided, and with weight-gradient sums too large to be summed band by band). Height and
/// width leave the same remainder under the stride: candle's own backward takes its output
/// padding from the height alone.
const CONV_CASES: [ConvCase; 12] = [
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
    (2, 16, 80, 82, 5, 3, 2, 1),
    (1, 64, 32, 33, 256, 3, 1, 1),
];

#[test]
fn conv_matches_candles() {
    on_each_device(|dev| {
        for (n, c, h, w, o, k, s, p) in CONV_CASES {
            check(
                &format!("conv2d k{k} s{s} p{p}"),
                dev,
                &[&[n, c, h, w], &[o, c, k, k]],
                summed,
                |x| conv2d(&x[0], &x[1], s, p, None, F32),
                |x| conv2d_reference(&x[0], &x[1], s, p),
            )?;
        }
        Ok(())
    })
}

/// A conv's backward gives a gradient only to the operands that a variable depends on (the
/// clips entering the stem's first conv get none), and the other operand's is unchanged.
#[test]
fn conv_gradients_skip_operands_that_need_none() {
    on_each_device(|dev| {
        let (x, w) = (
            randn(&[2, 8, 9, 9], DType::F32, dev)?,
            randn(&[16, 8, 3, 3], DType::F32, dev)?,
        );
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let loss = |x: &Tensor, w: &Tensor| conv2d(x, w, 1, 1, None, F32)?.sqr()?.sum_all();
        let both = loss(xv.as_tensor(), wv.as_tensor())?.backward()?;
        let only_w = loss(&x, wv.as_tensor())?.backward()?;
        let only_x = loss(xv.as_tensor(), &w)?.backward()?;
        assert!(only_w.get(&x).is_none() && only_x.get(&w).is_none());
        let same = |a: Option<&Tensor>, b: Option<&Tensor>| -> Result<()> {
            let (Some(a), Some(b)) = (a, b) else {
                candle_core::bail!("a gradient is missing")
            };
            assert_eq!(rel_err(a, b), 0.0);
            Ok(())
        };
        same(only_w.get(wv.as_tensor()), both.get(wv.as_tensor()))?;
        same(only_x.get(xv.as_tensor()), both.get(xv.as_tensor()))
    })
}

/// bf16 products: the forward against candle's conv of the operands rounded to bf16 (the same
/// products, exact in f32, summed in another order); the gradients, whose fast path also rounds
/// the output gradient to bf16, within bf16's rounding of it. On a CPU without avx512_bf16, the
/// one-line error.
#[test]
fn conv_with_bf16_products_matches_candles_on_rounded_operands() {
    let bf16 = ProductPrecision::Bf16;
    on_each_device(|dev| {
        if dev.is_cpu() && !bf16_products_run_here() {
            let x = randn(&[1, 2, 3, 3], DType::F32, dev)?;
            let e = conv2d(
                &x,
                &randn(&[2, 2, 1, 1], DType::F32, dev)?,
                1,
                0,
                None,
                bf16,
            );
            let e = e.unwrap_err().to_string();
            assert!(e.contains("avx512_bf16"), "{e}");
            return Ok(());
        }
        let cases = CONV_CASES
            .iter()
            .map(|&(n, c, h, w, o, k, s, p)| (n, c, h, w, o, k, s, p, None));
        let shifted = [
            (6, 8, 9, 7, 3, 3, 2, 1, Some((3, 0.25))),
            (4, 16, 40, 40, 4, 3, 1, 1, Some((2, 0.125))),
            // one frame per gemm: the input gradient by runs of shifted channels
            (6, 16, 33, 32, 8, 1, 1, 0, Some((3, 0.25))),
            // blocks of k and rows past the kernels' own (AMX: 512 and 256)
            (4, 64, 12, 12, 300, 3, 1, 1, None),
            (2, 600, 7, 7, 40, 1, 1, 0, None),
            (2, 40, 7, 7, 600, 1, 1, 0, None),
        ];
        for (n, c, h, w, o, k, s, p, shift) in cases.chain(shifted) {
            let rounded = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
            let errs = against_reference(
                dev,
                DType::F32,
                &[&[n, c, h, w], &[o, c, k, k]],
                |x| conv2d(&x[0], &x[1], s, p, shift, bf16),
                |x| {
                    let input = match shift {
                        Some((t, ratio)) => temporal_shift_reference(&x[0], t, ratio)?,
                        None => x[0].clone(),
                    };
                    conv2d_reference(&rounded(&input)?, &rounded(&x[1])?, s, p)
                },
            )?;
            for (label, e) in errs {
                let tol = if label == "value" {
                    summed(DType::F32)
                } else {
                    1e-2
                };
                if e > tol {
                    candle_core::bail!("bf16 conv {n}x{c}x{h}x{w} k{k} s{s}: {label} error {e}")
                }
            }
        }
        let x = randn(&[1, 2, 3, 3], DType::F64, dev)?;
        let e = conv2d(
            &x,
            &randn(&[2, 2, 1, 1], DType::F64, dev)?,
            1,
            0,
            None,
            bf16,
        );
        assert!(e.unwrap_err().to_string().contains("take f32 tensors"));
        Ok(())
    })
}

/// `[frames, num_seg, C, H, W, O, k, stride, pad]`: a 1x1 conv on a map large enough to be
/// one frame per gemm (read in bands) and on small maps several frames share, a 3x3 banded
/// one, a strided one, and ratio-sized folds of 1 and 0 channels.
const SHIFTED_CONV_CASES: [[usize; 9]; 5] = [
    [6, 3, 8, 33, 32, 5, 1, 1, 0],
    [8, 4, 16, 5, 6, 7, 1, 1, 0],
    [4, 2, 16, 40, 40, 4, 3, 1, 1],
    [6, 3, 8, 9, 7, 3, 3, 2, 1],
    [3, 3, 3, 4, 4, 2, 1, 1, 0],
];

#[test]
fn conv_reading_a_shifted_input_matches_shift_then_conv() {
    on_each_device(|dev| {
        for [n, t, c, h, w, o, k, s, p] in SHIFTED_CONV_CASES {
            for ratio in [0.125, 0.25] {
                check(
                    &format!("shifted conv2d {n}x{c}x{h}x{w} k{k} s{s} ratio {ratio}"),
                    dev,
                    &[&[n, c, h, w], &[o, c, k, k]],
                    summed,
                    |x| conv2d(&x[0], &x[1], s, p, Some((t, ratio)), F32),
                    |x| conv2d_reference(&temporal_shift_reference(&x[0], t, ratio)?, &x[1], s, p),
                )?;
                for dtype in dtypes(dev) {
                    let x = randn(&[n, c, h, w], dtype, dev)?;
                    let wt = randn(&[o, c, k, k], dtype, dev)?;
                    let b = randn(&[o], dtype, dev)?;
                    let got = conv2d_bias(&x, &wt, &b, s, p, Some((t, ratio)), true)?;
                    let shifted = temporal_shift_reference(&x, t, ratio)?;
                    let want = conv2d_bias_reference(&shifted, &wt, &b, s, p, true)?;
                    let e = rel_err(&got, &want);
                    assert!(e <= summed(dtype), "{dtype:?} bias, shifted k{k}: {e}");
                }
            }
        }
        let x = randn(&[5, 4, 3, 3], DType::F32, dev)?;
        let wt = randn(&[2, 4, 1, 1], DType::F32, dev)?;
        let e = conv2d(&x, &wt, 1, 0, Some((2, 0.25)), F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a multiple of num_seg"), "{e}");
        Ok(())
    })
}

#[test]
fn conv_with_fused_bias_and_leaky_relu_matches_separate_ops() {
    on_each_device(|dev| {
        for (n, c, h, w, o, k, s, p) in CONV_CASES {
            for dtype in dtypes(dev) {
                let x = randn(&[n, c, h, w], dtype, dev)?;
                let wt = randn(&[o, c, k, k], dtype, dev)?;
                let b = randn(&[o], dtype, dev)?;
                for leaky in [false, true] {
                    let got = conv2d_bias(&x, &wt, &b, s, p, None, leaky)?;
                    let want = conv2d_bias_reference(&x, &wt, &b, s, p, leaky)?;
                    let e = rel_err(&got, &want);
                    assert!(e <= summed(dtype), "{dtype:?} k{k} s{s} leaky {leaky}: {e}");
                }
            }
        }
        Ok(())
    })
}

#[test]
fn mismatched_conv_shapes_are_errors() {
    let r = |s: &[usize]| randn(s, DType::F32, &Device::Cpu).unwrap();
    let x = r(&[1, 3, 5, 5]);
    let err = |w: &Tensor, s, p| conv2d(&x, w, s, p, None, F32).unwrap_err().to_string();
    assert!(err(&r(&[4, 2, 3, 3]), 1, 1).contains("do not fit"));
    assert!(err(&r(&[4, 3, 3, 2]), 1, 1).contains("do not fit"));
    assert!(err(&r(&[4, 3, 7, 7]), 1, 0).contains("smaller than the 7x7 kernel"));
    assert!(err(&r(&[4, 3, 3, 3]), 0, 1).contains("(stride 0) do not fit"));
}

#[test]
fn training_batch_norm_matches_its_reference() {
    on_each_device(|dev| {
        for (n, c, h, w) in [(2, 3, 4, 5), (5, 16, 7, 7), (3, 4, 1, 1)] {
            for leaky in [false, true] {
                check(
                    &format!("batch_norm_train leaky {leaky}"),
                    dev,
                    &[&[n, c, h, w], &[c], &[c]],
                    |d| if d == DType::F32 { 1e-4 } else { summed(d) },
                    |x| Ok(batch_norm_train(&((&x[0] * 2.0)? + 3.0)?, &x[1], &x[2], leaky)?.0),
                    |x| {
                        let x0 = ((&x[0] * 2.0)? + 3.0)?;
                        let stats = batch_norm::batch_stats_reference(&x0)?;
                        let params = Tensor::stack(&[&x[1], &x[2]], 0)?;
                        batch_norm::bn_train_reference(&x0, &stats, &params, leaky)
                    },
                )?;
            }
        }
        Ok(())
    })
}
