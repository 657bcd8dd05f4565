//! Training-mode BatchNorm: the batch's statistics and the normalisation (with an optional
//! leaky ReLU), as Paddle's `BatchNorm2D` computes them.
//!
//! On the CPU it is one op with a hand-written backward (two passes over the activations each
//! way): composed from candle's element-wise ops it took about ten passes forward and twenty
//! backward, each allocating a full-size tensor.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{leaky, leaky_grad_factor, leaky_relu_reference, LEAKY_SLOPE};
use super::timing::{timed, OpKind};
use super::{
    channel_mean, cpu_kernel, cpu_slice, has_cpu_kernel, par_fill, per_channel, reference_fwd,
    reference_vjp,
};

/// Paddle's default `epsilon`.
pub(crate) const BN_EPS: f64 = 1e-5;

/// Training-mode BatchNorm of `x [N, C, H, W]` with `weight` and `bias` `[C]`, then leaky ReLU
/// when `leaky`: `(y, batch mean, biased batch variance)`, the statistics outside the graph.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    leaky: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    timed(OpKind::BatchNormForward, x.device(), || {
        let x = x.contiguous()?;
        let stats = x.apply_op1_no_bwd(&BatchStats)?;
        let params = Tensor::stack(&[weight, bias], 0)?;
        let y = x.apply_op3(&stats, &params, BnTrain { leaky })?;
        Ok((y, stats.get(0)?, stats.get(1)?))
    })
}

/// `(N, C, H*W)` of a contiguous `[N, C, H, W]` layout, and its data.
fn nchw<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<(&'a [T], usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((cpu_slice(s, l)?, n, c, h * w))
}

/// `[f(c, plane of x at n, c) for each n]` summed per channel in f64, channels in parallel.
fn per_channel_sums<T: candle_core::WithDType>(
    x: &[T],
    (n, c, hw): (usize, usize, usize),
    f: impl Fn(usize, &[T], usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |acc, i| {
                let start = (i * c + ch) * hw;
                let (a, b) = f(ch, &x[start..start + hw], start);
                (acc.0 + a, acc.1 + b)
            })
        })
        .collect()
}

/// `(sum a(x[i], y'[i]), sum b(x[i], y'[i]))` in f64 with `y'[i] = ymap(x[i], y[i])` (in `T`),
/// each sum in 8 interleaved partial sums added in a fixed order: the compiler vectorises it
/// (one sequential f64 sum is a chain of dependent adds, a large share of a BN layer's time)
/// and it stays deterministic. Where the CPU has AVX-512 the same sums run in its registers
/// (the same adds in the same order, so the same bits; compiled for AVX2 they measured no faster
/// than the baseline's SSE2). The f32 gradient's sums have their own loop, [`grad_sums_f32`].
fn sums2<T: candle_core::WithDType>(
    x: &[T],
    y: &[T],
    ymap: impl Fn(T, T) -> T,
    a: impl Fn(f64, f64) -> f64,
    b: impl Fn(f64, f64) -> f64,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        /// [`sums2_any`] compiled for AVX-512.
        #[target_feature(enable = "avx512f")]
        fn sums2_avx512<T: candle_core::WithDType>(
            x: &[T],
            y: &[T],
            ymap: impl Fn(T, T) -> T,
            a: impl Fn(f64, f64) -> f64,
            b: impl Fn(f64, f64) -> f64,
        ) -> (f64, f64) {
            sums2_any(x, y, ymap, a, b)
        }
        // SAFETY: the CPU has AVX-512F (checked above).
        return unsafe { sums2_avx512(x, y, ymap, a, b) };
    }
    sums2_any(x, y, ymap, a, b)
}

/// [`sums2`] for any x86-64 (or other) CPU; inlined into its callers so that it takes their
/// target features.
#[inline(always)]
fn sums2_any<T: candle_core::WithDType>(
    x: &[T],
    y: &[T],
    ymap: impl Fn(T, T) -> T,
    a: impl Fn(f64, f64) -> f64,
    b: impl Fn(f64, f64) -> f64,
) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut sa, mut sb) = ([0.0; LANES], [0.0; LANES]);
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail = xc.remainder().iter().zip(yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for j in 0..LANES {
            let (u, v) = (xs[j].to_f64(), ymap(xs[j], ys[j]).to_f64());
            sa[j] += a(u, v);
            sb[j] += b(u, v);
        }
    }
    for (j, (&u, &v)) in tail.enumerate() {
        let (u, v) = (u.to_f64(), ymap(u, v).to_f64());
        sa[j] += a(u, v);
        sb[j] += b(u, v);
    }
    (sa.iter().sum(), sb.iter().sum())
}

/// `s` as f32 data, when `T` is f32.
#[cfg(target_arch = "x86_64")]
fn as_f32<T: candle_core::WithDType>(s: &[T]) -> Option<&[f32]> {
    // SAFETY: `T` is f32 (its dtype says so), so the slice is one of f32.
    (T::DTYPE == candle_core::DType::F32)
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) })
}

/// Eight f64 partial sums in vector registers: one zmm with AVX-512, two ymm with AVX2 (lanes
/// 0-3 and 4-7), the same lanes and adds either way, so the same bits.
#[cfg(target_arch = "x86_64")]
trait F64x8: Copy {
    /// # Safety
    /// Each method needs its impl's instructions (AVX-512F for `__m512d`, AVX for the pair).
    unsafe fn splat(v: f64) -> Self;
    /// The 8 f32 of `v`, widened.
    unsafe fn widen(v: std::arch::x86_64::__m256) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn lanes(self) -> [f64; 8];
}

#[cfg(target_arch = "x86_64")]
impl F64x8 for std::arch::x86_64::__m512d {
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::arch::x86_64::_mm512_set1_pd(v) }
    }
    #[inline(always)]
    unsafe fn widen(v: std::arch::x86_64::__m256) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::arch::x86_64::_mm512_cvtps_pd(v) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::arch::x86_64::_mm512_add_pd(self, o) }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::arch::x86_64::_mm512_sub_pd(self, o) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::arch::x86_64::_mm512_mul_pd(self, o) }
    }
    #[inline(always)]
    unsafe fn lanes(self) -> [f64; 8] {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::mem::transmute(self) }
    }
}

#[cfg(target_arch = "x86_64")]
impl F64x8 for [std::arch::x86_64::__m256d; 2] {
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { [std::arch::x86_64::_mm256_set1_pd(v); 2] }
    }
    #[inline(always)]
    unsafe fn widen(v: std::arch::x86_64::__m256) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe {
            use std::arch::x86_64::*;
            [
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe {
            use std::arch::x86_64::_mm256_add_pd;
            [_mm256_add_pd(self[0], o[0]), _mm256_add_pd(self[1], o[1])]
        }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe {
            use std::arch::x86_64::_mm256_sub_pd;
            [_mm256_sub_pd(self[0], o[0]), _mm256_sub_pd(self[1], o[1])]
        }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe {
            use std::arch::x86_64::_mm256_mul_pd;
            [_mm256_mul_pd(self[0], o[0]), _mm256_mul_pd(self[1], o[1])]
        }
    }
    #[inline(always)]
    unsafe fn lanes(self) -> [f64; 8] {
        // SAFETY: the caller has the instructions (the trait's contract).
        unsafe { std::mem::transmute(self) }
    }
}

/// [`BnGradSums`]' sums of one f32 plane in vector registers, when the CPU has AVX-512 or AVX2:
/// `(sum g, sum g * (x - mu) * inv_std)` with `g = dy` through the leaky ReLU (when `leaky`) at
/// the pre-activation `(x - pre[0]) * pre[1] + pre[2]`. The same operations in the same order
/// as [`sums2`] with [`PlaneCoefs::pre_grad`], so the same bits: the compiler left that generic
/// loop scalar (the f32 select, then each lane converted and summed on its own), about four
/// cycles an element and most of a BN backward's time.
#[cfg(target_arch = "x86_64")]
fn grad_sums_f32(
    x: &[f32],
    dy: &[f32],
    pre: [f32; 3],
    leaky: bool,
    mu_inv_std: (f64, f64),
) -> Option<(f64, f64)> {
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        Some(unsafe { grad_sums_f32_avx512(x, dy, pre, leaky, mu_inv_std) })
    } else if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        Some(unsafe { grad_sums_f32_avx2(x, dy, pre, leaky, mu_inv_std) })
    } else {
        None
    }
}

/// [`grad_sums_f32`] on AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn grad_sums_f32_avx512(
    x: &[f32],
    dy: &[f32],
    pre: [f32; 3],
    leaky: bool,
    mu_inv_std: (f64, f64),
) -> (f64, f64) {
    // SAFETY: this function runs only where the CPU has AVX-512F (its target feature).
    unsafe { grad_sums_f32_in::<std::arch::x86_64::__m512d>(x, dy, pre, leaky, mu_inv_std) }
}

/// [`grad_sums_f32`] on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn grad_sums_f32_avx2(
    x: &[f32],
    dy: &[f32],
    pre: [f32; 3],
    leaky: bool,
    mu_inv_std: (f64, f64),
) -> (f64, f64) {
    // SAFETY: this function runs only where the CPU has AVX2 (its target feature).
    unsafe { grad_sums_f32_in::<[std::arch::x86_64::__m256d; 2]>(x, dy, pre, leaky, mu_inv_std) }
}

/// [`grad_sums_f32`]'s loop with its f64 sums in `V`; inlined into the callers that enable
/// `V`'s instructions.
///
/// # Safety
/// The CPU has AVX and `V`'s instructions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn grad_sums_f32_in<V: F64x8>(
    x: &[f32],
    dy: &[f32],
    pre: [f32; 3],
    leaky: bool,
    (mu, inv_std): (f64, f64),
) -> (f64, f64) {
    // SAFETY: the caller's CPU has AVX and `V`'s instructions; the loads stay in bounds.
    unsafe {
        use std::arch::x86_64::*;
        const LANES: usize = 8;
        assert_eq!(x.len(), dy.len());
        let pre_grad = |v: f32, g: f32| {
            if leaky {
                g * leaky_grad_factor((v - pre[0]) * pre[1] + pre[2])
            } else {
                g
            }
        };
        let (pm, pa, pb) = (
            _mm256_set1_ps(pre[0]),
            _mm256_set1_ps(pre[1]),
            _mm256_set1_ps(pre[2]),
        );
        let (one, slope) = (_mm256_set1_ps(1.0), _mm256_set1_ps(LEAKY_SLOPE as f32));
        let (mu_v, inv_v) = (V::splat(mu), V::splat(inv_std));
        let (mut sa, mut sb) = (V::splat(0.0), V::splat(0.0));
        let whole = x.len() / LANES * LANES;
        for i in (0..whole).step_by(LANES) {
            // `i + 8 <= whole <= len` for both slices
            let (v, g) = (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(dy.as_ptr().add(i)),
            );
            let g = if leaky {
                let p = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, pm), pa), pb);
                let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(p, _mm256_setzero_ps());
                _mm256_mul_ps(g, _mm256_blendv_ps(slope, one, positive))
            } else {
                g
            };
            let (u, g) = (V::widen(v), V::widen(g));
            sa = sa.add(g);
            sb = sb.add(g.mul(u.sub(mu_v)).mul(inv_v));
        }
        let (mut la, mut lb) = (sa.lanes(), sb.lanes());
        for (j, (&v, &g)) in x[whole..].iter().zip(&dy[whole..]).enumerate() {
            let (u, g) = (v as f64, pre_grad(v, g) as f64);
            la[j] += g;
            lb[j] += g * (u - mu) * inv_std;
        }
        (la.iter().sum(), lb.iter().sum())
    }
}

/// Per-channel batch mean and biased variance `[2, C]` of `x [N, C, H, W]`, accumulated in f64
/// in two passes (mean, then squared deviations), as Paddle's kernel does. Both passes run
/// channel by channel, so the second reads the channel's planes from cache (about a tenth of
/// the layer's time, measured, when each pass went over the whole tensor).
#[derive(Debug, Clone, Copy)]
struct BatchStats;

impl BatchStats {
    fn fwd<T: candle_core::WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let (x, n, c, hw) = nchw::<T>(s, l)?;
        let m = (n * hw) as f64;
        let planes = |ch: usize| (0..n).map(move |i| &x[(i * c + ch) * hw..][..hw]);
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum = planes(ch).fold(0.0, |acc, p| {
                    acc + sums2(p, p, |_, y| y, |u, _| u, |_, _| 0.0).0
                });
                let mean = sum / m;
                let sq = planes(ch).fold(0.0, |acc, p| {
                    acc + sums2(p, p, |_, y| y, |u, _| (u - mean).powi(2), |_, _| 0.0).0
                });
                (mean, sq / m)
            })
            .collect();
        Ok(stats
            .iter()
            .map(|s| T::from_f64(s.0))
            .chain(stats.iter().map(|s| T::from_f64(s.1)))
            .collect())
    }
}

impl CustomOp1 for BatchStats {
    fn name(&self) -> &'static str {
        "batch-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !has_cpu_kernel(s.dtype()) {
            return reference_fwd(&[(s, l)], |x| batch_stats_reference(&x[0]));
        }
        let c = l.shape().dims4()?.1;
        Ok((cpu_by_dtype!(s.dtype(), self.fwd(s, l)), (2, c).into()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s, l)], |x| batch_stats_reference(&x[0]))
    }
}

/// [`BatchStats`] from candle's ops: `[mean; biased variance]`, `[2, C]`.
pub(super) fn batch_stats_reference(x: &Tensor) -> Result<Tensor> {
    let mean = channel_mean(x)?;
    let var = channel_mean(&x.broadcast_sub(&per_channel(&mean)?)?.sqr()?)?;
    Tensor::stack(&[mean, var], 0)
}

/// [`BnTrain`] from candle's ops, given the statistics.
pub(super) fn bn_train_reference(
    x: &Tensor,
    stats: &Tensor,
    params: &Tensor,
    leaky: bool,
) -> Result<Tensor> {
    let (mean, var) = (stats.get(0)?, stats.get(1)?);
    let scale = (params.get(0)? * (var + BN_EPS)?.sqrt()?.recip()?)?;
    let y = x
        .broadcast_sub(&per_channel(&mean)?)?
        .broadcast_mul(&per_channel(&scale)?)?
        .broadcast_add(&per_channel(&params.get(1)?)?)?;
    if leaky {
        leaky_relu_reference(&y)
    } else {
        Ok(y)
    }
}

/// Per-channel `scale = weight / sqrt(var + eps)` from the `[2, C]` stats and params, in f64.
fn scales(stats: &[f64], params: &[f64], c: usize) -> Vec<f64> {
    (0..c)
        .map(|ch| params[ch] / (stats[c + ch] + BN_EPS).sqrt())
        .collect()
}

fn to_f64<T: candle_core::WithDType>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Per-channel mean, scale and bias of the normalisation, in f64.
struct PlaneCoefs<'a> {
    stats: &'a [f64],
    params: &'a [f64],
    scale: Vec<f64>,
    c: usize,
}

impl<'a> PlaneCoefs<'a> {
    /// From the `[2, C]` stats (mean; variance) and params (weight; bias).
    fn new(stats: &'a [f64], params: &'a [f64], c: usize) -> Self {
        let scale = scales(stats, params, c);
        Self {
            stats,
            params,
            scale,
            c,
        }
    }

    /// Channel `ch`'s `[mean, scale, bias]` in `T`.
    fn pre_coefs<T: candle_core::WithDType>(&self, ch: usize) -> [T; 3] {
        [
            T::from_f64(self.stats[ch]),
            T::from_f64(self.scale[ch]),
            T::from_f64(self.params[self.c + ch]),
        ]
    }

    /// Channel `ch`'s `x -> (x - mean) * scale + bias` in `T`: the forward's normalisation,
    /// which the backward repeats bit for bit to know where the leaky ReLU was negative.
    fn pre_activation<T: candle_core::WithDType>(&self, ch: usize) -> impl Fn(T) -> T {
        let [mu, a, b] = self.pre_coefs::<T>(ch);
        move |v| (v - mu) * a + b
    }

    /// Channel `ch`'s `(x, dy) -> dL/d(pre-activation)`: `dy` through the leaky ReLU when
    /// `leaky` (its mask recomputed from `x`, so the backward needs no pass of its own for it).
    fn pre_grad<T: candle_core::WithDType>(&self, ch: usize, leaky: bool) -> impl Fn(T, T) -> T {
        let pre = self.pre_activation::<T>(ch);
        move |v, g| {
            if leaky {
                g * leaky_grad_factor(pre(v))
            } else {
                g
            }
        }
    }
}

/// `y = (x - mean) * weight / sqrt(var + eps) + bias` from `(x, stats [2, C], params [2, C])`
/// (params = weight; bias), then leaky ReLU when `leaky`. The stats are the batch's, computed
/// from `x`; the backward treats them as functions of `x` (the full BN gradient) and returns
/// none for them.
#[derive(Debug, Clone, Copy)]
struct BnTrain {
    leaky: bool,
}

impl BnTrain {
    fn fwd<T: candle_core::WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<Vec<T>> {
        let (x, _, c, hw) = nchw::<T>(s1, l1)?;
        let stats = to_f64(cpu_slice::<T>(s2, l2)?);
        let params = to_f64(cpu_slice::<T>(s3, l3)?);
        let coefs = PlaneCoefs::new(&stats, &params, c);
        let y = par_fill(x.len(), hw, |plane, yp| {
            let pre = coefs.pre_activation::<T>(plane % c);
            let xp = &x[plane * hw..];
            if self.leaky {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    o.write(leaky(pre(v)));
                }
            } else {
                for (o, &v) in yp.iter_mut().zip(xp) {
                    o.write(pre(v));
                }
            }
        });
        Ok(y)
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !has_cpu_kernel(s1.dtype()) {
            return reference_fwd(&[(s1, l1), (s2, l2), (s3, l3)], |x| {
                bn_train_reference(&x[0], &x[1], &x[2], self.leaky)
            });
        }
        let y = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2, s3, l3));
        Ok((y, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s1, l1), (s2, l2), (s3, l3)], |x| {
            bn_train_reference(&x[0], &x[1], &x[2], self.leaky)
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        stats: &Tensor,
        params: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        timed(OpKind::BatchNormBackward, x.device(), || {
            self.backward(x, stats, params, dy)
        })
    }
}

impl BnTrain {
    fn backward(
        &self,
        x: &Tensor,
        stats: &Tensor,
        params: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !cpu_kernel(x) {
            // The statistics are functions of x: differentiate through them too.
            let g = reference_vjp(&[x, params], dy, |x| {
                let stats = batch_stats_reference(&x[0])?;
                bn_train_reference(&x[0], &stats, &x[1], self.leaky)
            })?;
            return Ok((g.first().cloned(), None, g.get(1).cloned()));
        }
        let dy = dy.contiguous()?;
        let leaky = self.leaky;
        let packed = Tensor::cat(&[stats, params], 0)?;
        // [sum dy, sum dy * xhat] per channel (dy through the leaky ReLU): the bias and weight
        // gradients
        let sums = x.apply_op3_no_bwd(&dy, &packed, &BnGradSums { leaky })?;
        let packed = Tensor::cat(&[&packed, &sums], 0)?;
        let dx = x.apply_op3_no_bwd(&dy, &packed, &BnGradInput { leaky })?;
        let dparams = Tensor::stack(&[sums.get(1)?, sums.get(0)?], 0)?;
        Ok((Some(dx), None, Some(dparams)))
    }
}

/// `[sum dy, sum dy * xhat]` per channel from `(x, dy, [stats; params])`, `dy` taken through
/// the leaky ReLU first when `leaky`.
#[derive(Debug, Clone, Copy)]
struct BnGradSums {
    leaky: bool,
}

impl BnGradSums {
    fn fwd<T: candle_core::WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<Vec<T>> {
        let (x, n, c, hw) = nchw::<T>(s1, l1)?;
        let (dy, ..) = nchw::<T>(s2, l2)?;
        let packed = to_f64(cpu_slice::<T>(s3, l3)?);
        let coefs = PlaneCoefs::new(&packed[..2 * c], &packed[2 * c..], c);
        let sums = per_channel_sums(x, (n, c, hw), |ch, xp, start| {
            let (mu, inv_std) = (packed[ch], 1.0 / (packed[c + ch] + BN_EPS).sqrt());
            let dyp = &dy[start..start + xp.len()];
            #[cfg(target_arch = "x86_64")]
            if let (Some(xp), Some(dyp)) = (as_f32(xp), as_f32(dyp)) {
                let pre = coefs.pre_coefs::<f32>(ch);
                if let Some(sums) = grad_sums_f32(xp, dyp, pre, self.leaky, (mu, inv_std)) {
                    return sums;
                }
            }
            let pre_grad = coefs.pre_grad::<T>(ch, self.leaky);
            sums2(xp, dyp, pre_grad, |_, g| g, |v, g| g * (v - mu) * inv_std)
        });
        Ok(sums
            .iter()
            .map(|s| T::from_f64(s.0))
            .chain(sums.iter().map(|s| T::from_f64(s.1)))
            .collect())
    }
}

impl CustomOp3 for BnGradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let c = l1.shape().dims4()?.1;
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2, s3, l3));
        Ok((out, (2, c).into()))
    }
}

/// `dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat))` from
/// `(x, dy, [stats; params; sums])`, the means over `N*H*W`, `dy` taken through the leaky ReLU
/// first when `leaky`.
#[derive(Debug, Clone, Copy)]
struct BnGradInput {
    leaky: bool,
}

impl BnGradInput {
    fn fwd<T: candle_core::WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<Vec<T>> {
        let (x, n, c, hw) = nchw::<T>(s1, l1)?;
        let (dy, ..) = nchw::<T>(s2, l2)?;
        let p = to_f64(cpu_slice::<T>(s3, l3)?);
        let (stats, params, sums) = (&p[..2 * c], &p[2 * c..4 * c], &p[4 * c..]);
        let coefs = PlaneCoefs::new(stats, params, c);
        let m = (n * hw) as f64;
        let dx = par_fill(x.len(), hw, |plane, out| {
            let ch = plane % c;
            let inv_std = 1.0 / (stats[c + ch] + BN_EPS).sqrt();
            let scale = coefs.scale[ch];
            // dx = scale * (dy - sum_dy / m) - scale * inv_std * sum_dyxhat / m * (x - mean)
            let a = T::from_f64(scale);
            let b = T::from_f64(scale * sums[ch] / m);
            let k = T::from_f64(scale * inv_std * sums[c + ch] / m);
            let mu = T::from_f64(stats[ch]);
            let pre_grad = coefs.pre_grad::<T>(ch, self.leaky);
            let start = plane * hw;
            for ((o, &v), &g) in out.iter_mut().zip(&x[start..]).zip(&dy[start..]) {
                o.write(pre_grad(v, g) * a - b - (v - mu) * k);
            }
        });
        Ok(dx)
    }
}

impl CustomOp3 for BnGradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2, s3, l3));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector gradient sums (each this CPU runs) give the generic loop's bits, tails and
    /// signs included.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f32_gradient_sums_are_the_generic_sums() {
        type Sums = unsafe fn(&[f32], &[f32], [f32; 3], bool, (f64, f64)) -> (f64, f64);
        let kernels: Vec<(&str, Sums)> = [
            (
                "avx512f",
                std::arch::is_x86_feature_detected!("avx512f"),
                grad_sums_f32_avx512 as Sums,
            ),
            (
                "avx2",
                std::arch::is_x86_feature_detected!("avx2"),
                grad_sums_f32_avx2 as Sums,
            ),
        ]
        .into_iter()
        .filter_map(|(feature, here, sums)| here.then_some((feature, sums)))
        .collect();
        assert!(
            !kernels.is_empty(),
            "this CPU has neither AVX-512F nor AVX2"
        );
        let stats = [0.3, 1.7];
        let params = [0.9, -0.2];
        let coefs = PlaneCoefs::new(&stats, &params, 1);
        let (mu, inv_std) = (stats[0], 1.0 / (stats[1] + BN_EPS).sqrt());
        let wave = |i: usize, f: f32| ((i as f32 * f).sin() * 3.0 + 0.3).round() / 2.0 + 0.01;
        for len in [0, 1, 7, 8, 9, 49, 200] {
            let x: Vec<f32> = (0..len).map(|i| wave(i, 1.3)).collect();
            let dy: Vec<f32> = (0..len).map(|i| wave(i, 0.7)).collect();
            for leaky in [false, true] {
                let pre_grad = coefs.pre_grad::<f32>(0, leaky);
                let want = sums2_any(&x, &dy, pre_grad, |_, g| g, |v, g| g * (v - mu) * inv_std);
                let pre = coefs.pre_coefs::<f32>(0);
                for (feature, sums) in &kernels {
                    // SAFETY: the CPU has the kernel's feature (filtered above).
                    let got = unsafe { sums(&x, &dy, pre, leaky, (mu, inv_std)) };
                    let at = format!("{feature}, len {len}, leaky {leaky}");
                    assert_eq!(got.0.to_bits(), want.0.to_bits(), "{at}");
                    assert_eq!(got.1.to_bits(), want.1.to_bits(), "{at}");
                }
            }
        }
    }
}
