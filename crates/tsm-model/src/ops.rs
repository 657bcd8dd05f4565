//! Operators PP-TSM needs that candle lacks: Paddle's temporal shift (a [`CustomOp1`]),
//! exclusive ceil-mode 2x2 average pooling (ResNet-D shortcut), padded 3x3 max pooling, leaky ReLU.
//!
//! On the CPU (f32, f64) leaky ReLU, the residual join and max pooling are single-pass kernels
//! with single-pass backwards; candle's element-wise compositions of them take several passes
//! each way, each allocating a full-size tensor. The compositions remain for other devices and
//! as the references in tests.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Leaky ReLU's negative slope in Paddle's `F.leaky_relu` (and so in PP-TSM).
pub const LEAKY_SLOPE: f64 = 0.01;

/// Whether `x` runs on this crate's hand-written CPU kernels (CPU, f32 or f64).
pub(crate) fn cpu_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The contiguous `T` data of a kernel operand.
pub(crate) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("CPU kernel operands must be contiguous"),
    }
}

/// Element-wise kernels run in parallel chunks of this many elements.
const CHUNK: usize = 1 << 14;

/// `f(a[i], b[i])` for every `i`, in parallel.
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        });
    out
}

pub(crate) fn leaky<T: WithDType>(v: T) -> T {
    if v > T::zero() {
        v
    } else {
        v * T::from_f64(LEAKY_SLOPE)
    }
}

/// `leaky_relu(x) = max(x, 0.01 x)`.
pub fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    if cpu_kernel(x) {
        x.contiguous()?.apply_op1(LeakyRelu)
    } else {
        x.maximum(&(x * LEAKY_SLOPE)?)
    }
}

/// `leaky_relu(a + b)`: the residual join of every block, in one pass.
pub fn add_leaky_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if cpu_kernel(a) {
        if a.shape() != b.shape() {
            candle_core::bail!(
                "add_leaky_relu: shapes {:?} and {:?} differ",
                a.dims(),
                b.dims()
            )
        }
        a.contiguous()?.apply_op2(&b.contiguous()?, AddLeakyRelu)
    } else {
        leaky_relu(&(a + b)?)
    }
}

/// Leaky ReLU (CPU kernel).
#[derive(Debug, Clone, Copy)]
struct LeakyRelu;

impl LeakyRelu {
    fn fwd<T: WithDType>(&self, s: &CpuStorage, l: &Layout) -> Result<Vec<T>> {
        let x = cpu_slice::<T>(s, l)?;
        Ok(zip_map(x, x, |v, _| leaky(v)))
    }
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu_by_dtype!(s.dtype(), self.fwd(s, l)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(leaky_grad(y, grad)?))
    }
}

/// `leaky_relu(a + b)` (CPU kernel).
#[derive(Debug, Clone, Copy)]
struct AddLeakyRelu;

impl AddLeakyRelu {
    fn fwd<T: WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<Vec<T>> {
        Ok(zip_map(
            cpu_slice::<T>(s1, l1)?,
            cpu_slice(s2, l2)?,
            |a, b| leaky(a + b),
        ))
    }
}

impl CustomOp2 for AddLeakyRelu {
    fn name(&self) -> &'static str {
        "add-leaky-relu"
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

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = leaky_grad(y, grad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// The gradient through a leaky ReLU from its output `y` (CPU kernels only).
pub(crate) fn leaky_grad(y: &Tensor, grad: &Tensor) -> Result<Tensor> {
    y.apply_op2_no_bwd(&grad.contiguous()?, &LeakyGrad)
}

/// The leaky ReLU gradient from its output `y` (same sign as its input): `grad` where `y > 0`,
/// `0.01 grad` elsewhere.
#[derive(Debug, Clone, Copy)]
struct LeakyGrad;

impl LeakyGrad {
    fn fwd<T: WithDType>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<Vec<T>> {
        let slope = T::from_f64(LEAKY_SLOPE);
        Ok(zip_map(
            cpu_slice::<T>(s1, l1)?,
            cpu_slice(s2, l2)?,
            |y, g| {
                if y > T::zero() {
                    g
                } else {
                    g * slope
                }
            },
        ))
    }
}

impl CustomOp2 for LeakyGrad {
    fn name(&self) -> &'static str {
        "leaky-relu-grad"
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

/// Paddle's channel split for a shift ratio: `(int(C*ratio), int(C*2*ratio))`, computed in f32
/// as Paddle's kernel does.
pub fn shift_folds(channels: usize, ratio: f64) -> (usize, usize) {
    let r = ratio as f32;
    let c = channels as f32;
    ((c * r) as usize, (c * 2.0 * r) as usize)
}

/// The op: forward, or (`reverse`) the opposite shift, which is the forward's gradient.
#[derive(Debug, Clone, Copy)]
struct TemporalShift {
    num_seg: usize,
    ratio: f64,
    reverse: bool,
}

impl TemporalShift {
    /// Source frame offset for channel `c`: -1, +1 or 0.
    fn offset(&self, c: usize, c1: usize, c2: usize) -> isize {
        let o = if c < c1 {
            -1
        } else if c < c2 {
            1
        } else {
            0
        };
        if self.reverse {
            -o
        } else {
            o
        }
    }

    fn run<T: WithDType>(&self, src: &[T], dims: &[usize]) -> Vec<T> {
        let (nt, c, hw) = (dims[0], dims[1], dims[2] * dims[3]);
        let (c1, c2) = shift_folds(c, self.ratio);
        let t_len = self.num_seg;
        let mut dst = vec![T::zero(); nt * c * hw];
        if hw == 0 {
            return dst;
        }
        dst.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let (frame, ch) = (plane / c, plane % c);
            let t = (frame % t_len) as isize;
            let src_t = t + self.offset(ch, c1, c2);
            if (0..t_len as isize).contains(&src_t) {
                let src_frame = (frame as isize - t + src_t) as usize;
                let start = (src_frame * c + ch) * hw;
                out.copy_from_slice(&src[start..start + hw]);
            }
        });
        dst
    }
}

impl CustomOp1 for TemporalShift {
    fn name(&self) -> &'static str {
        "temporal-shift"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("temporal_shift: input must be contiguous")
        };
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(self.run(&v[start..end], dims)),
            CpuStorage::F64(v) => CpuStorage::F64(self.run(&v[start..end], dims)),
            CpuStorage::F16(v) => CpuStorage::F16(self.run(&v[start..end], dims)),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.run(&v[start..end], dims)),
            _ => candle_core::bail!("temporal_shift: only f32, f64, f16 and bf16 are supported"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = TemporalShift {
            reverse: !self.reverse,
            ..*self
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

fn check_shift_args(x: &Tensor, num_seg: usize, ratio: f64) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 {
        candle_core::bail!("temporal_shift: expected [N*T, C, H, W], got {:?}", dims)
    }
    if num_seg == 0 || !dims[0].is_multiple_of(num_seg) {
        candle_core::bail!(
            "temporal_shift: batch dimension {} is not a multiple of num_seg {num_seg}",
            dims[0]
        )
    }
    if !(0.0..=0.5).contains(&ratio) {
        candle_core::bail!("temporal_shift: ratio {ratio} must lie in [0, 0.5]")
    }
    Ok(())
}

/// Paddle's `F.temporal_shift(x, num_seg, ratio)` on `x: [N*T, C, H, W]`.
///
/// With `c1 = int(C*ratio)`, `c2 = int(C*2*ratio)`: channels `[0, c1)` at frame `t` take frame
/// `t-1` (zeros at `t = 0`), channels `[c1, c2)` take frame `t+1` (zeros at the last frame), the
/// rest stay. This is the opposite fold order from MIT's TSM. The gradient is the opposite shift.
///
/// On the CPU this is one kernel; on other devices (until their kernels exist) it is
/// [`temporal_shift_reference`], the same values from candle's own ops.
pub fn temporal_shift(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    if !x.device().is_cpu() {
        return temporal_shift_reference(x, num_seg, ratio);
    }
    x.contiguous()?.apply_op1(TemporalShift {
        num_seg,
        ratio,
        reverse: false,
    })
}

/// The same shift from `narrow`/`cat`/zero padding: slow, the reference for tests.
pub fn temporal_shift_reference(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    let (nt, c, h, w) = x.dims4()?;
    let (c1, c2) = shift_folds(c, ratio);
    let x5 = x.reshape((nt / num_seg, num_seg, c, h, w))?;
    let mut parts = Vec::new();
    if c1 > 0 {
        // from t-1: drop the last frame, pad a zero frame in front
        let a = x5.narrow(2, 0, c1)?;
        let a = a.narrow(1, 0, num_seg - 1)?.pad_with_zeros(1, 1, 0)?;
        parts.push(a);
    }
    if c2 > c1 {
        // from t+1: drop the first frame, pad a zero frame at the end
        let b = x5.narrow(2, c1, c2 - c1)?;
        let b = b.narrow(1, 1, num_seg - 1)?.pad_with_zeros(1, 0, 1)?;
        parts.push(b);
    }
    if c > c2 {
        parts.push(x5.narrow(2, c2, c - c2)?);
    }
    Tensor::cat(&parts, 2)?.reshape((nt, c, h, w))
}

/// Paddle's `AvgPool2D(2, stride=2, padding=0, ceil_mode=True)` (exclusive): on an odd size the
/// last row/column of windows averages only the cells inside the input.
pub fn avg_pool2x2_ceil(x: &Tensor) -> Result<Tensor> {
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
/// window in row-major order.
pub fn max_pool3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if cpu_kernel(x) {
        x.dims4()?;
        x.contiguous()?.apply_op1(MaxPool)
    } else {
        max_pool3x3_s2_p1_reference(x)
    }
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

/// The pooling (CPU kernel); backward: [`MaxPoolGrad`].
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
        let (b, c, h, w) = l.shape().dims4()?;
        let y = cpu_by_dtype!(s.dtype(), self.fwd(s, l));
        Ok((y, (b, c, pooled(h), pooled(w)).into()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad)?))
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
pub fn max_pool3x3_s2_p1_reference(x: &Tensor) -> Result<Tensor> {
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
