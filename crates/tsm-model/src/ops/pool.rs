//! Pooling: the ResNet-D shortcut's exclusive ceil-mode 2x2 average, the stem's padded 3x3
//! stride-2 maximum.

use candle_core::backend::BackendStorage;
use candle_core::WithDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::timing::{timed, OpKind};
use super::{cpu_kernel, cpu_slice, has_cpu_kernel, reference_fwd, reference_vjp};

/// Paddle's `AvgPool2D(2, stride=2, padding=0, ceil_mode=True)` (exclusive): on an odd size the
/// last row/column of windows averages only the cells inside the input. Composed from candle's
/// ops (one or three passes, 3 % of a forward), so it runs on every device as it is.
pub(crate) fn avg_pool2x2_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (ph, pw) = (h % 2, w % 2);
    if ph == 0 && pw == 0 {
        return x.avg_pool2d(2);
    }
    let padded = x.pad_with_zeros(2, 0, ph)?.pad_with_zeros(3, 0, pw)?;
    let sums = (padded.avg_pool2d(2)? * 4.0)?;
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let rows: Vec<f32> = (0..ho)
        .map(|i| if 2 * i + 1 < h { 2.0 } else { 1.0 })
        .collect();
    let cols: Vec<f32> = (0..wo)
        .map(|j| if 2 * j + 1 < w { 2.0 } else { 1.0 })
        .collect();
    let rows = Tensor::from_vec(rows, (ho, 1), x.device())?;
    let cols = Tensor::from_vec(cols, (1, wo), x.device())?;
    let counts = rows.broadcast_mul(&cols)?.to_dtype(x.dtype())?;
    sums.broadcast_div(&counts)
}

/// Paddle's `MaxPool2D(3, stride=2, padding=1)`: the window is clipped to the image (padding
/// never wins) and, as in Paddle's backward, the gradient goes to the first maximum of each
/// window in row-major order (where the reference's gradient is used, ties share it).
pub(crate) fn max_pool3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    timed(OpKind::Pool, x.device(), || {
        x.contiguous()?.apply_op1(MaxPool)
    })
}

/// Output size of the 3x3 stride-2 pad-1 pooling.
fn pooled(n: usize) -> usize {
    (n + 2 - 3) / 2 + 1
}

/// For output `(i, j)` of a `h x w` plane: the index of the first maximum in its window.
fn window_argmax<T: WithDType>(p: &[T], (h, w): (usize, usize), i: usize, j: usize) -> usize {
    let rows = (2 * i).saturating_sub(1)..(2 * i + 2).min(h);
    let cols = (2 * j).saturating_sub(1)..(2 * j + 2).min(w);
    let mut best = rows.start * w + cols.start;
    for r in rows {
        for c in cols.clone() {
            if p[r * w + c] > p[best] {
                best = r * w + c;
            }
        }
    }
    best
}

/// The first maximum of each window of one row (window `j`: columns `2j-1..=2j+1` inside it).
fn row_max<T: WithDType>(row: &[T], out: &mut [T]) {
    for (j, o) in out.iter_mut().enumerate() {
        let (lo, hi) = ((2 * j).saturating_sub(1), (2 * j + 2).min(row.len()));
        let mut m = row[lo];
        for &v in &row[lo + 1..hi] {
            if v > m {
                m = v;
            }
        }
        *o = m;
    }
}

/// The pooling; the CPU kernels' backward is [`MaxPoolGrad`].
#[derive(Debug, Clone, Copy)]
struct MaxPool;

impl MaxPool {
    fn fwd<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let x = cpu_slice::<T>(s, l)?;
        let (_, _, h, w) = l.shape().dims4()?;
        let (ho, wo) = (pooled(h), pooled(w));
        let mut y = vec![T::zero(); x.len() / (h * w).max(1) * ho * wo];
        if y.is_empty() {
            return Ok(y);
        }
        // Row maxima of each window row, then the first of them that is largest, down the
        // window: the value at the window's first maximum in row-major order (what
        // `window_argmax` picks), without tracking indices.
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each_init(
                || vec![T::zero(); wo],
                |hm, (yp, xp)| {
                    for (i, yrow) in yp.chunks_exact_mut(wo).enumerate() {
                        let rows = (2 * i).saturating_sub(1)..(2 * i + 2).min(h);
                        for (k, r) in rows.enumerate() {
                            row_max(&xp[r * w..(r + 1) * w], hm);
                            if k == 0 {
                                yrow.copy_from_slice(hm);
                            } else {
                                for (o, &m) in yrow.iter_mut().zip(hm.iter()) {
                                    if m > *o {
                                        *o = m;
                                    }
                                }
                            }
                        }
                    }
                },
            );
        Ok(y)
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !has_cpu_kernel(s.dtype()) {
            return reference_fwd(&[(s, l)], |x| max_pool3x3_s2_p1_reference(&x[0]));
        }
        let (b, c, h, w) = l.shape().dims4()?;
        let y = cpu_by_dtype!(s.dtype(), self.fwd(s, l));
        Ok((y, (b, c, pooled(h), pooled(w)).into()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s, l)], |x| max_pool3x3_s2_p1_reference(&x[0]))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        timed(OpKind::Pool, x.device(), || {
            if !cpu_kernel(x) {
                let g = reference_vjp(&[x], grad, |x| max_pool3x3_s2_p1_reference(&x[0]))?;
                return Ok(g.into_iter().next());
            }
            Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad)?))
        })
    }
}

/// `dL/dx` of [`MaxPool`] from `(x, dL/dy)`.
#[derive(Debug, Clone, Copy)]
struct MaxPoolGrad;

impl MaxPoolGrad {
    fn fwd<T: WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<Vec<T>> {
        let (x, g) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
        let (_, _, h, w) = l1.shape().dims4()?;
        let (ho, wo) = (pooled(h), pooled(w));
        let mut gx = vec![T::zero(); x.len()];
        gx.par_chunks_mut((h * w).max(1))
            .zip(
                x.par_chunks((h * w).max(1))
                    .zip(g.par_chunks((ho * wo).max(1))),
            )
            .for_each(|(gp, (xp, g))| {
                for (k, &v) in g.iter().enumerate() {
                    gp[window_argmax(xp, (h, w), k / wo, k % wo)] += v;
                }
            });
        Ok(gx)
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2));
        Ok((out, l1.shape().clone()))
    }
}

/// The same pooling built from strided views and `maximum` (any device; candle's `max_pool2d`
/// has no backward when kernel != stride). Ties split the gradient rather than going to the
/// first maximum. The reference for tests.
pub(crate) fn max_pool3x3_s2_p1_reference(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = ((h + 2 - 3) / 2 + 1, (w + 2 - 3) / 2 + 1);
    // pad with -inf to 2*(ho+1) rows and 2*(wo+1) columns (1 in front, the rest behind)
    let (hp, wp) = (2 * (ho + 1), 2 * (wo + 1));
    let neg = |rows: usize, cols: usize| {
        Tensor::full(f32::NEG_INFINITY, (b, c, rows, cols), x.device())?.to_dtype(x.dtype())
    };
    let x = Tensor::cat(&[neg(h, 1)?, x.clone(), neg(h, wp - w - 1)?], 3)?;
    let x = Tensor::cat(&[neg(1, wp)?, x, neg(hp - h - 1, wp)?], 2)?;
    // [b, c, ho+1, 2, wo+1, 2]: row 2i+d is (i + d/2, d%2)
    let x = x.reshape((b, c, ho + 1, 2, wo + 1, 2))?;
    let mut out: Option<Tensor> = None;
    for di in 0..3 {
        let rows = x.narrow(2, di / 2, ho)?.narrow(3, di % 2, 1)?;
        for dj in 0..3 {
            let v = rows.narrow(4, dj / 2, wo)?.narrow(5, dj % 2, 1)?;
            out = Some(match out {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
    }
    match out {
        Some(m) => m.reshape((b, c, ho, wo)),
        None => candle_core::bail!("unreachable: empty pooling window"),
    }
}
