//! Pooling: the ResNet-D shortcut's exclusive ceil-mode 2x2 average, the stem's padded 3x3
//! stride-2 maximum.

use candle_core::backend::BackendStorage;
use candle_core::WithDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::timing::{timed, OpKind};
use super::{cpu_kernel, cpu_slice, has_cpu_kernel, par_fill, reference_fwd, reference_vjp};

/// Paddle's `AvgPool2D(2, stride=2, padding=0, ceil_mode=True)` (exclusive): on an odd size the
/// last row/column of windows averages only the cells inside the input.
pub(crate) fn avg_pool2x2_ceil(x: &Tensor) -> Result<Tensor> {
    timed(OpKind::Pool, x.device(), || {
        x.contiguous()?.apply_op1(AvgPool)
    })
}

/// [`avg_pool2x2_ceil`] composed from candle's ops (one or three passes), on every device: the
/// reference for tests and the body where the CPU kernels do not run. (As the op itself it
/// cost about a twentieth of a training step: candle's pooling, its backward's upsampling and
/// scaling each run on one thread.)
pub(crate) fn avg_pool2x2_ceil_reference(x: &Tensor) -> Result<Tensor> {
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

/// The 2x2 average pooling, planes in parallel; its backward is [`AvgPoolGrad`].
#[derive(Debug, Clone, Copy)]
struct AvgPool;

impl AvgPool {
    fn fwd<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let x = cpu_slice::<T>(s, l)?;
        let (_, _, h, w) = l.shape().dims4()?;
        let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
        let planes = x.len() / (h * w).max(1);
        Ok(par_fill(planes * ho * wo, ho * wo, |plane, yp| {
            let xp = &x[plane * h * w..(plane + 1) * h * w];
            for (i, yrow) in yp.chunks_exact_mut(wo).enumerate() {
                let top = &xp[2 * i * w..(2 * i + 1) * w];
                let below = (2 * i + 1 < h).then(|| &xp[(2 * i + 1) * w..(2 * i + 2) * w]);
                for (j, y) in yrow.iter_mut().enumerate() {
                    let (c0, c1) = (2 * j, (2 * j + 1 < w).then_some(2 * j + 1));
                    // the cells in row-major order, as candle's pooling adds them
                    let mut sum = top[c0];
                    if let Some(c1) = c1 {
                        sum += top[c1];
                    }
                    if let Some(b) = below {
                        sum += b[c0];
                        if let Some(c1) = c1 {
                            sum += b[c1];
                        }
                    }
                    y.write(sum / window_cells(i, j, h, w));
                }
            }
        }))
    }
}

/// How many cells of the `h x w` plane window `(i, j)` of the 2x2 pooling covers, as `T`.
fn window_cells<T: WithDType>(i: usize, j: usize, h: usize, w: usize) -> T {
    let rows = if 2 * i + 1 < h { 2 } else { 1 };
    let cols = if 2 * j + 1 < w { 2 } else { 1 };
    T::from_f64((rows * cols) as f64)
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-ceil"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if !has_cpu_kernel(s.dtype()) {
            return reference_fwd(&[(s, l)], |x| avg_pool2x2_ceil_reference(&x[0]));
        }
        let (b, c, h, w) = l.shape().dims4()?;
        let y = cpu_by_dtype!(s.dtype(), self.fwd(s, l));
        Ok((y, (b, c, h.div_ceil(2), w.div_ceil(2)).into()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s, l)], |x| avg_pool2x2_ceil_reference(&x[0]))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        timed(OpKind::Pool, x.device(), || {
            if !cpu_kernel(x) {
                let g = reference_vjp(&[x], grad, |x| avg_pool2x2_ceil_reference(&x[0]))?;
                return Ok(g.into_iter().next());
            }
            let (_, _, h, w) = x.dims4()?;
            Ok(Some(
                grad.contiguous()?.apply_op1_no_bwd(&AvgPoolGrad { h, w })?,
            ))
        })
    }
}

/// `dL/dx [N, C, h, w]` of [`AvgPool`] from `dL/dy`: each cell gets its window's gradient over
/// the window's cells.
#[derive(Debug, Clone, Copy)]
struct AvgPoolGrad {
    h: usize,
    w: usize,
}

impl AvgPoolGrad {
    fn fwd<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let g = cpu_slice::<T>(s, l)?;
        let (_, _, ho, wo) = l.shape().dims4()?;
        let (h, w) = (self.h, self.w);
        let planes = g.len() / (ho * wo).max(1);
        Ok(par_fill(planes * h * w, h * w, |plane, gp| {
            let gy = &g[plane * ho * wo..(plane + 1) * ho * wo];
            for (r, row) in gp.chunks_exact_mut(w).enumerate() {
                let i = r / 2;
                for (c, v) in row.iter_mut().enumerate() {
                    let j = c / 2;
                    v.write(gy[i * wo + j] / window_cells(i, j, h, w));
                }
            }
        }))
    }
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-ceil-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = l.shape().dims4()?;
        let gx = cpu_by_dtype!(s.dtype(), self.fwd(s, l));
        Ok((gx, (b, c, self.h, self.w).into()))
    }
}

/// Paddle's `MaxPool2D(3, stride=2, padding=1)`: the window is clipped to the image (padding
/// never wins) and, as in Paddle's backward, the gradient goes to the first maximum of each
/// window in row-major order (where the reference's gradient is used, ties share it).
pub(crate) fn max_pool3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 {
        candle_core::bail!("max pool: an empty {h}x{w} plane")
    }
    timed(OpKind::Pool, x.device(), || {
        x.contiguous()?.apply_op1(MaxPool)
    })
}

/// Output size of the 3x3 stride-2 pad-1 pooling.
fn pooled(n: usize) -> usize {
    (n + 2 - 3) / 2 + 1
}

/// The first maximum in row-major order of each window of output row `i` of the `h x w`
/// plane `p`: its value in `best[j]` and, when `at` is given, its position in the window in
/// `at[j]` (see [`window_index`]). Window position by position, each a branch-free pass over
/// the row's windows (a later position taken only when strictly larger), which the compiler
/// vectorises; one clipped window at a time it does not.
fn window_maxima<T: WithDType>(
    p: &[T],
    (h, w): (usize, usize),
    i: usize,
    best: &mut [T],
    mut at: Option<&mut [u32]>,
) {
    let r0 = (2 * i).saturating_sub(1);
    // the window's first position: column 2j - 1, or 0 for j = 0
    best[0] = p[r0 * w];
    for (b, pair) in best[1..].iter_mut().zip(p[r0 * w + 1..].chunks_exact(2)) {
        *b = pair[0];
    }
    // positions count from the unclipped window's corner (row 2i - 1, column 2j - 1)
    let pos0 = 3 * (r0 + 1 - 2 * i) as u32;
    if let Some(at) = at.as_deref_mut() {
        at.fill(pos0);
        at[0] = pos0 + 1;
    }
    for r in r0..(2 * i + 2).min(h) {
        let row = &p[r * w..(r + 1) * w];
        let pos = 3 * (r + 1 - 2 * i) as u32;
        // columns 2j - 1 (from j = 1), 2j, 2j + 1 (while inside the row), in that order
        let at1 = at.as_deref_mut().map(|a| &mut a[1..]);
        let odd = row[1..].chunks_exact(2).map(|c| &c[0]);
        take_larger(odd, pos, &mut best[1..], at1);
        let even = row.chunks(2).map(|c| &c[0]);
        take_larger(even, pos + 1, best, at.as_deref_mut());
        let next = row.chunks_exact(2).map(|c| &c[1]);
        take_larger(next, pos + 2, best, at.as_deref_mut());
    }
}

/// The plane index of position `pos` (`3 * row + column` in the window, from its top left
/// corner at row `2i - 1`, column `2j - 1`) of window `(i, j)` of a plane `w` wide.
fn window_index((i, j): (usize, usize), pos: u32, w: usize) -> usize {
    let (dr, dc) = ((pos / 3) as usize, (pos % 3) as usize);
    (2 * i + dr - 1) * w + (2 * j + dc) - 1
}

/// `best[j]` becomes `vals[j]` where that is strictly larger, and then `at[j]` becomes `pos`.
#[inline]
fn take_larger<'a, T: WithDType>(
    vals: impl Iterator<Item = &'a T>,
    pos: u32,
    best: &mut [T],
    at: Option<&mut [u32]>,
) {
    match at {
        None => {
            for (b, &v) in best.iter_mut().zip(vals) {
                *b = if v > *b { v } else { *b };
            }
        }
        Some(at) => {
            for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(vals) {
                let larger = v > *b;
                *b = if larger { v } else { *b };
                // a select as arithmetic: written as one, it compiles to a branch per store
                *a ^= (*a ^ pos) & 0u32.wrapping_sub(u32::from(larger));
            }
        }
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
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(yp, xp)| {
                for (i, yrow) in yp.chunks_exact_mut(wo).enumerate() {
                    window_maxima(xp, (h, w), i, yrow, None);
                }
            });
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
            .for_each_init(
                || (vec![T::zero(); wo], vec![0u32; wo]),
                |(best, at), (gp, (xp, g))| {
                    for (i, grow) in g.chunks_exact(wo).enumerate() {
                        window_maxima(xp, (h, w), i, best, Some(at));
                        for (j, (&pos, &v)) in at.iter().zip(grow).enumerate() {
                            gp[window_index((i, j), pos, w)] += v;
                        }
                    }
                },
            );
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
