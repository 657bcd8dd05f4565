//! 2-D convolution (square kernel, no bias, groups 1) on the CPU as one gemm per frame that
//! writes straight into the NCHW output, with a backward pass of the same form.
//!
//! candle 0.11's CPU `conv2d` copies layouts around its gemm, and its backward computes the input
//! gradient with a naive `conv_transpose2d` loop and the kernel gradient with a conv whose kernel
//! is a whole output map: training a ResNet spent most of its time there. Here, per frame,
//! `y[O, L] = W[O, C*k*k] @ cols[C*k*k, L]` where `cols` is the frame's im2col (the frame itself
//! for a stride-1 1x1 conv); backward is `gcols = W^T @ g` folded back by col2im (each channel
//! onto the frame the shift read it from, so the shift's gradient is no pass of its own), and
//! `gW += g @ cols^T` with `cols` recomputed rather than kept, so training memory stays at what
//! candle's own conv keeps (the input). On a large map each frame's im2col is built (and the
//! input gradient's folded back) a band of output rows at a time, small enough to stay in
//! cache; the weight gradient sums band by band too where its sums are small (the stem's convs
//! took 3-5x their forward's time with whole-frame columns). Frames are split into one
//! contiguous group per thread (whole clips for a shifted conv's input gradient), each running
//! single-threaded gemms, so the split (and any sum over frames) is deterministic.
//! With [`ProductPrecision::Bf16`] the three products round their operands to bf16 and sum in
//! f32 (`ops/gemm.rs`); everything around them is unchanged.
//! Other dtypes, and CUDA until the op has its kernel, run candle's `conv2d` (the reference).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::leaky_relu_reference;
use super::gemm::{bf16_products_run_here, matmul_strided, GemmElem, Lhs, Mat, ProductPrecision};
use super::shift::{check_shift_args, ShiftSpec};
use super::timing::{timed, OpKind};
use super::{
    cpu_kernel, cpu_slice, has_cpu_kernel, par_zeros, per_channel, reference_fwd, reference_vjp,
};

/// `x [N, C, H, W]`, temporally shifted first when `shift` is `(num_seg, ratio)`, convolved with
/// `w [O, C, k, k]`, zero padding `padding`, stride `stride`, its products (forward and both
/// gradients) in `products`. The shift is applied as the conv reads its input (no shifted
/// copy, and no graph node whose gradient candle would accumulate).
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    shift: Option<(usize, f64)>,
    products: ProductPrecision,
) -> Result<Tensor> {
    if products == ProductPrecision::Bf16 {
        if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
            candle_core::bail!(
                "conv2d: bf16 products take f32 tensors, not {:?}",
                x.dtype()
            )
        }
        if x.device().is_cpu() && !bf16_products_run_here() {
            candle_core::bail!("conv2d: bf16 products on the CPU need avx512_bf16")
        }
    }
    timed(OpKind::ConvForward, x.device(), || {
        let op = Conv::new(x, w, stride, padding, shift, Epilogue::None, products)?;
        x.contiguous()?.apply_op2(&w.contiguous()?, op)
    })
}

/// Inference only (no backward): `conv2d(x, w) + bias`, then leaky ReLU (slope `LEAKY_SLOPE`)
/// when `leaky`, applied while the output is still in cache.
pub(crate) fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    shift: Option<(usize, f64)>,
    leaky: bool,
) -> Result<Tensor> {
    timed(OpKind::ConvForward, x.device(), || {
        let f32 = ProductPrecision::F32;
        let op = Conv::new(x, w, stride, padding, shift, Epilogue::Bias { leaky }, f32)?;
        x.contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &bias.contiguous()?, &op)
    })
}

/// [`conv2d`] without a shift, as candle computes it.
pub(crate) fn conv2d_reference(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// [`conv2d_bias`] from candle's ops.
pub(crate) fn conv2d_bias_reference(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    padding: usize,
    leaky: bool,
) -> Result<Tensor> {
    let y = conv2d_reference(x, w, stride, padding)?.broadcast_add(&per_channel(bias)?)?;
    if leaky {
        leaky_relu_reference(&y)
    } else {
        Ok(y)
    }
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    /// The temporal shift applied to the input as it is read.
    shift: Option<ShiftSpec>,
    products: ProductPrecision,
    /// Thread groups of whole clips when shifted: the input gradient writes each channel back
    /// to the frame it was read from, which must be in the same group.
    whole_clips: bool,
    /// One frame per gemm, however small the map: where several frames share one, their
    /// columns are gathered (and the output reordered) per chunk, a copy that narrow gemms
    /// do not need; the f32 gemm's efficiency collapses on them, the bf16 kernels' does not.
    /// Never for the weight gradient, whose gemm sums over the chunk's pixels and reads and
    /// writes all of `[O, C*k*k]` each time: one 7x7 frame is 49 pixels.
    one_frame_gemms: bool,
}

impl Geom {
    fn new(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        pad: usize,
        shift: Option<(usize, f64)>,
        products: ProductPrecision,
    ) -> Result<Self> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, c2, k, k2) = w.dims4()?;
        if c != c2 || k != k2 || k == 0 || stride == 0 {
            candle_core::bail!(
                "conv2d: input {:?} and kernel {:?} (stride {stride}) do not fit: need \
                 [N, C, H, W] and a square [O, C, k, k]",
                x.dims(),
                w.dims()
            )
        }
        if h + 2 * pad < k || wd + 2 * pad < k {
            candle_core::bail!(
                "conv2d: input {:?} padded by {pad} is smaller than the {k}x{k} kernel",
                x.dims()
            )
        }
        let ho = (h + 2 * pad - k) / stride + 1;
        let wo = (wd + 2 * pad - k) / stride + 1;
        let shift = match shift {
            Some((num_seg, ratio)) => {
                check_shift_args(x, num_seg, ratio)?;
                Some(ShiftSpec::new(num_seg, ratio, c))
            }
            None => None,
        };
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            k,
            stride,
            pad,
            ho,
            wo,
            shift,
            products,
            whole_clips: false,
            one_frame_gemms: products == ProductPrecision::Bf16,
        })
    }

    /// The frame whose channel `c` frame `n` reads through the shift; `None` for zeros.
    fn source_frame(&self, n: usize, c: usize) -> Option<usize> {
        match self.shift {
            Some(s) => s.source_frame(n, c, false),
            None => Some(n),
        }
    }

    /// Input plane `[H, W]` of channel `c` of frame `n` as the conv reads it, from `x
    /// [N, C, H, W]` through the shift; `None` for zeros.
    fn input_plane<'a, T>(&self, x: &'a [T], n: usize, c: usize) -> Option<&'a [T]> {
        let src = self.source_frame(n, c)?;
        let hw = self.h * self.w;
        let start = (src * self.c + c) * hw;
        Some(&x[start..start + hw])
    }

    /// Rows of a frame's im2col matrix (= columns of the flattened kernel).
    fn kk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output positions per frame.
    fn l(&self) -> usize {
        self.ho * self.wo
    }

    fn frame_in(&self) -> usize {
        self.c * self.h * self.w
    }

    fn frame_out(&self) -> usize {
        self.o * self.l()
    }

    /// A stride-1 1x1 conv: the frame `[C, H*W]` is its own im2col.
    fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Whether a one-frame chunk's im2col is the input frame itself (no copy).
    fn reads_frame_in_place(&self) -> bool {
        self.direct() && self.shift.is_none()
    }

    /// The output columns `[lo, hi)` whose input column `ow*stride + kj - pad` is inside the
    /// image (the others read zero padding).
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let lo = self
            .pad
            .saturating_sub(kj)
            .div_ceil(self.stride)
            .min(self.wo);
        let hi = (self.w + self.pad)
            .saturating_sub(kj)
            .div_ceil(self.stride)
            .clamp(lo, self.wo);
        (lo, hi)
    }

    /// The input row read by output row `oh` at kernel row `ki`, if inside the image.
    fn in_row(&self, oh: usize, ki: usize) -> Option<usize> {
        (oh * self.stride + ki)
            .checked_sub(self.pad)
            .filter(|&r| r < self.h)
    }

    /// Frames per thread group (whole clips where [`Geom::whole_clips`] asks), and the number
    /// of groups.
    fn groups(&self) -> (usize, usize) {
        let threads = candle_core::utils::get_num_threads().max(1);
        let mut per = self.n.div_ceil(threads).max(1);
        if let (true, Some(s)) = (self.whole_clips, self.shift) {
            per = per.next_multiple_of(s.num_seg());
        }
        (per, self.n.div_ceil(per))
    }

    /// gemm's own threading when there are fewer groups than threads, none otherwise.
    fn gemm_par(&self) -> Parallelism {
        let threads = candle_core::utils::get_num_threads();
        if self.groups().1 < threads {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        }
    }
}

/// The element types the fast path runs in.
trait Elem: GemmElem {
    /// Runs `f` on `len` elements of this thread's scratch buffer `slot` (0 or 1), whose contents
    /// are left from earlier calls: kept across calls, so the im2col and reordering buffers are
    /// neither allocated nor zeroed per call.
    fn with_scratch<R>(slot: usize, len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! elem_with_scratch {
    ($t:ty) => {
        impl Elem for $t {
            fn with_scratch<R>(slot: usize, len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                thread_local! {
                    static SCRATCH: [std::cell::RefCell<Vec<$t>>; 2] = Default::default();
                }
                SCRATCH.with(|s| match s[slot].try_borrow_mut() {
                    Ok(mut buf) => {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                        f(&mut buf[..len])
                    }
                    // in use further up this thread's stack: rayon ran another group here while
                    // a gemm of the first waited
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }
        }
    };
}
elem_with_scratch!(f32);
elem_with_scratch!(f64);

/// Frame `n` of `x [N, C, H, W]` (through the shift) -> its im2col `[C*k*k, Ho*Wo]`, row
/// `(c*k + ki)*k + kj` starting at `dst[row * row_stride]` (a stride above `Ho*Wo` interleaves
/// several frames' columns); only the columns of output rows `out_rows` (all of them: `0..Ho`).
fn im2col<T: Elem>(
    g: &Geom,
    x: &[T],
    n: usize,
    dst: &mut [T],
    row_stride: usize,
    out_rows: Range<usize>,
) {
    let k = g.k;
    let l = out_rows.len() * g.wo;
    for row in 0..g.kk() {
        let out = &mut dst[row * row_stride..row * row_stride + l];
        let (c, ki, kj) = (row / (k * k), (row / k) % k, row % k);
        let Some(plane) = g.input_plane(x, n, c) else {
            out.fill(T::zero());
            continue;
        };
        let (lo, hi) = g.valid_cols(kj);
        for (oh, orow) in out_rows.clone().zip(out.chunks_exact_mut(g.wo)) {
            let Some(ih) = g.in_row(oh, ki) else {
                orow.fill(T::zero());
                continue;
            };
            let irow = &plane[ih * g.w..(ih + 1) * g.w];
            orow[..lo].fill(T::zero());
            orow[hi..].fill(T::zero());
            // lo*stride + kj >= pad by construction of `lo`
            let first = lo * g.stride + kj - g.pad;
            if g.stride == 1 {
                orow[lo..hi].copy_from_slice(&irow[first..first + hi - lo]);
            } else {
                for (o, i) in orow[lo..hi]
                    .iter_mut()
                    .zip(irow[first..].iter().step_by(g.stride))
                {
                    *o = *i;
                }
            }
        }
    }
}

/// The adjoint of [`im2col`] for channel `c` and output rows `out_rows`: adds each column entry
/// of the channel's rows back onto the pixel of `plane` (`[H, W]`, starting at zero) it was
/// read from.
fn col2im<T: Elem>(
    g: &Geom,
    cols: &[T],
    row_stride: usize,
    c: usize,
    plane: &mut [T],
    out_rows: Range<usize>,
) {
    let (k, l) = (g.k, out_rows.len() * g.wo);
    for ki in 0..k {
        for kj in 0..k {
            let row = (c * k + ki) * k + kj;
            let src = &cols[row * row_stride..row * row_stride + l];
            let (lo, hi) = g.valid_cols(kj);
            for (oh, srow) in out_rows.clone().zip(src.chunks_exact(g.wo)) {
                let Some(ih) = g.in_row(oh, ki) else {
                    continue;
                };
                let irow = &mut plane[ih * g.w..(ih + 1) * g.w];
                let first = lo * g.stride + kj - g.pad;
                // stride 1 apart: a plain slice zip, which vectorises (step_by does not)
                if g.stride == 1 {
                    for (i, s) in irow[first..first + hi - lo].iter_mut().zip(&srow[lo..hi]) {
                        *i += *s;
                    }
                    continue;
                }
                for (i, s) in irow[first..]
                    .iter_mut()
                    .step_by(g.stride)
                    .zip(&srow[lo..hi])
                {
                    *i += *s;
                }
            }
        }
    }
}

/// Output columns per gemm: on small maps several frames share one gemm, whose efficiency
/// collapses when it is only a few columns wide (ResNet's last stage at 64 px has 2x2 maps).
const GEMM_COLS: usize = 1024;

/// Elements of a band of the forward's im2col: half of a core's L2, so that the gemm reads it
/// from cache (a whole large map's im2col, 9x its input, goes out to memory and back).
const BAND_ELEMS: usize = 1 << 17;

/// A run of `f` frames from `first` that share one gemm.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    first: usize,
    f: usize,
}

impl Geom {
    /// Frames per chunk (the last chunk of a group may have fewer).
    fn chunk_frames(&self) -> usize {
        if self.one_frame_gemms {
            return 1;
        }
        let (per, _) = self.groups();
        GEMM_COLS.div_ceil(self.l().max(1)).clamp(1, per)
    }

    /// The chunks of the frames of thread group `grp`.
    fn chunks(&self, grp: usize) -> impl Iterator<Item = Chunk> {
        let (per, _) = self.groups();
        let (a, b) = (grp * per, ((grp + 1) * per).min(self.n));
        let f = self.chunk_frames();
        (a..b).step_by(f).map(move |first| Chunk {
            first,
            f: f.min(b - first),
        })
    }

    /// Scratch elements for the largest chunk's im2col `[C*k*k, f*L]`.
    fn cols_len(&self) -> usize {
        let f = self.chunk_frames();
        if self.reads_frame_in_place() && f == 1 {
            0
        } else {
            self.kk() * f * self.l()
        }
    }

    /// Output rows per band when a one-frame im2col is built (or folded back) a band at a time.
    fn band_rows(&self) -> usize {
        (BAND_ELEMS / (self.kk() * self.wo).max(1)).clamp(1, self.ho.max(1))
    }

    /// Whether the forward and the input gradient build (or fold back) their im2col in bands of
    /// output rows (one-frame chunks).
    fn banded(&self) -> bool {
        !self.reads_frame_in_place() && self.chunk_frames() == 1 && self.band_rows() < self.ho
    }

    /// Whether the weight gradient also sums band by band: only where its `[O, C*k*k]` sums,
    /// read and written once per band, are no larger than a band.
    fn grad_weight_banded(&self) -> bool {
        self.banded() && self.o * self.kk() <= BAND_ELEMS
    }

    /// The output rows of each band.
    fn bands(&self) -> impl Iterator<Item = Range<usize>> {
        let (band, ho) = (self.band_rows(), self.ho);
        (0..ho).step_by(band).map(move |r0| r0..(r0 + band).min(ho))
    }

    /// Scratch elements for an im2col that is `banded`: one band, or [`Geom::cols_len`].
    fn band_cols_len(&self, banded: bool) -> usize {
        if banded {
            self.kk() * self.band_rows() * self.wo
        } else {
            self.cols_len()
        }
    }

    /// Scratch elements for the largest chunk's output (or output gradient) as one `[O, f*L]`
    /// matrix, when chunks have several frames.
    fn out_mat_len(&self) -> usize {
        let f = self.chunk_frames();
        if f == 1 {
            0
        } else {
            self.o * f * self.l()
        }
    }

    /// The im2col `[C*k*k, f*L]` of chunk `ch` of `x` (frame `j`'s columns at `j*L`), in `buf`
    /// or, for one frame of an unshifted stride-1 1x1 conv, `x` itself.
    fn cols<'a, T: Elem>(&self, x: &'a [T], ch: Chunk, buf: &'a mut [T]) -> &'a [T] {
        let fin = self.frame_in();
        if self.reads_frame_in_place() && ch.f == 1 {
            return &x[ch.first * fin..(ch.first + 1) * fin];
        }
        let stride = ch.f * self.l();
        for j in 0..ch.f {
            im2col(
                self,
                x,
                ch.first + j,
                &mut buf[j * self.l()..],
                stride,
                0..self.ho,
            );
        }
        &buf[..self.kk() * stride]
    }

    /// The output gradient of chunk `ch` as one `[O, f*L]` matrix, in `buf` (at least
    /// [`Geom::out_mat_len`] long) when `f > 1`.
    fn grad_mat<'a, T: Elem>(&self, grad: &'a [T], ch: Chunk, buf: &'a mut [T]) -> Mat<'a, T> {
        let (l, fout) = (self.l(), self.frame_out());
        let frames = &grad[ch.first * fout..(ch.first + ch.f) * fout];
        if ch.f == 1 {
            return Mat::new(frames, self.o, l);
        }
        for (j, frame) in frames.chunks_exact(fout).enumerate() {
            for (o, row) in frame.chunks_exact(l).enumerate() {
                buf[(o * ch.f + j) * l..(o * ch.f + j + 1) * l].copy_from_slice(row);
            }
        }
        Mat::new(&buf[..self.o * ch.f * l], self.o, ch.f * l)
    }
}

/// `dst[a.rows, b.cols] (+)= a @ b`, `dst` contiguous (accumulating when `acc`), in the
/// precision `a` was made for (the conv's).
fn matmul<T: Elem>(g: &Geom, dst: &mut [T], acc: bool, a: &Lhs<T>, b: Mat<T>) {
    matmul_strided(dst, b.cols, acc, a, b, g.gemm_par())
}

/// What the forward applies to the conv output in place.
#[derive(Debug, Clone, Copy)]
enum Epilogue {
    None,
    /// `+ bias[o]`, then leaky ReLU when `leaky` (the third operand is the bias).
    Bias {
        leaky: bool,
    },
}

/// The convolution op (forward; its backward runs [`ConvGradInput`] and [`ConvGradWeight`]).
#[derive(Debug, Clone, Copy)]
struct Conv {
    g: Geom,
    epilogue: Epilogue,
}

impl Conv {
    fn reference(&self, x: &[Tensor]) -> Result<Tensor> {
        let (stride, pad) = (self.g.stride, self.g.pad);
        let input = match self.g.shift {
            Some(s) => s.apply(&x[0])?,
            None => x[0].clone(),
        };
        match self.epilogue {
            Epilogue::None if self.g.products == ProductPrecision::Bf16 => {
                // products of bf16 values are exact in f32: the same sums from f32 operands
                let bf16 = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(t.dtype());
                conv2d_reference(&bf16(&input)?, &bf16(&x[1])?, stride, pad)
            }
            Epilogue::None => conv2d_reference(&input, &x[1], stride, pad),
            Epilogue::Bias { leaky } => {
                conv2d_bias_reference(&input, &x[1], &x[2], stride, pad, leaky)
            }
        }
    }

    fn new(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        pad: usize,
        shift: Option<(usize, f64)>,
        epilogue: Epilogue,
        products: ProductPrecision,
    ) -> Result<Self> {
        Ok(Self {
            g: Geom::new(x, w, stride, pad, shift, products)?,
            epilogue,
        })
    }

    fn out_shape(&self) -> Shape {
        (self.g.n, self.g.o, self.g.ho, self.g.wo).into()
    }

    fn fwd<T: Elem>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<Vec<T>> {
        let (x, w) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
        let bias = bias.map(|(s, l)| cpu_slice::<T>(s, l)).transpose()?;
        let g = self.g;
        let (per, _) = g.groups();
        let wm = Lhs::new(Mat::new(w, g.o, g.kk()), g.products);
        let out = par_zeros(g.n * g.frame_out(), per * g.frame_out(), |grp, outs| {
            T::with_scratch(0, g.band_cols_len(g.banded()), |cols| {
                T::with_scratch(1, g.out_mat_len(), |tmp| {
                    self.fwd_group(x, &wm, bias, grp, outs, cols, tmp)
                })
            })
        });
        Ok(out)
    }

    /// The output frames `outs` of thread group `grp`.
    #[allow(clippy::too_many_arguments)]
    fn fwd_group<T: Elem>(
        &self,
        x: &[T],
        wm: &Lhs<T>,
        bias: Option<&[T]>,
        grp: usize,
        outs: &mut [T],
        cols: &mut [T],
        tmp: &mut [T],
    ) {
        let g = self.g;
        let (kk, l, fout) = (g.kk(), g.l(), g.frame_out());
        let ((per, _), par) = (g.groups(), g.gemm_par());
        let epilogue = |row: &mut [T], b: T| {
            if let Epilogue::Bias { leaky } = self.epilogue {
                bias_row(row, b, leaky)
            }
        };
        for ch in g.chunks(grp) {
            let ys = &mut outs[(ch.first - grp * per) * fout..][..ch.f * fout];
            if g.banded() {
                for rows in g.bands() {
                    let (c0, nt) = (rows.start * g.wo, rows.len() * g.wo);
                    im2col(&g, x, ch.first, cols, nt, rows);
                    let src = Mat::new(&cols[..kk * nt], kk, nt);
                    matmul_strided(&mut ys[c0..], l, false, wm, src, par);
                    if let Some(b) = bias {
                        for (row, &b) in ys.chunks_exact_mut(l).zip(b) {
                            epilogue(&mut row[c0..c0 + nt], b);
                        }
                    }
                }
                continue;
            }
            let ncols = ch.f * l;
            let src = Mat::new(g.cols(x, ch, cols), kk, ncols);
            if ch.f == 1 {
                matmul(&g, ys, false, wm, src);
            } else {
                // [O, f*L] -> f frames of [O, L]
                let tmp = &mut tmp[..g.o * ncols];
                matmul(&g, tmp, false, wm, src);
                for (j, y) in ys.chunks_exact_mut(fout).enumerate() {
                    for (o, row) in y.chunks_exact_mut(l).enumerate() {
                        row.copy_from_slice(&tmp[o * ncols + j * l..][..l]);
                    }
                }
            }
            if let Some(b) = bias {
                // f frames of [O, L]: row i is channel i % O
                for (i, row) in ys.chunks_exact_mut(l).enumerate() {
                    epilogue(row, b[i % g.o]);
                }
            }
        }
    }
}

/// `row + b`, then leaky ReLU when `leaky`, in place.
fn bias_row<T: Elem>(row: &mut [T], b: T, leaky: bool) {
    let slope = T::from_f64(crate::ops::LEAKY_SLOPE);
    if leaky {
        for v in row {
            let s = *v + b;
            *v = if s > T::zero() { s } else { s * slope };
        }
    } else {
        for v in row {
            *v += b;
        }
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !has_cpu_kernel(s1.dtype()) {
            return reference_fwd(&[(s1, l1), (s2, l2)], |x| self.reference(x));
        }
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2, None));
        Ok((out, self.out_shape()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s1, l1), (s2, l2)], |x| self.reference(x))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        timed(OpKind::ConvBackward, x.device(), || {
            if !cpu_kernel(x) {
                let g = reference_vjp(&[x, w], grad, |x| self.reference(x))?;
                return Ok((g.first().cloned(), g.get(1).cloned()));
            }
            let grad = grad.contiguous()?;
            // only the gradients some variable depends on: the clips entering the stem's
            // first conv need none (computed, it was 0.45 % of a bf16 training step)
            let gx = if x.track_op() {
                let gin = ConvGradInput(Geom {
                    whole_clips: true,
                    ..self.g
                });
                Some(grad.apply_op2_no_bwd(w, &gin)?)
            } else {
                None
            };
            let gw = if w.track_op() {
                let gw = ConvGradWeight(Geom {
                    one_frame_gemms: false,
                    ..self.g
                });
                Some(x.apply_op2_no_bwd(&grad, &gw)?)
            } else {
                None
            };
            Ok((gx, gw))
        })
    }
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm-bias"
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
        if l3.shape().elem_count() != self.g.o {
            candle_core::bail!("conv2d: bias {:?} for {} channels", l3.dims(), self.g.o)
        }
        if !has_cpu_kernel(s1.dtype()) {
            return reference_fwd(&[(s1, l1), (s2, l2), (s3, l3)], |x| self.reference(x));
        }
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2, Some((s3, l3))));
        Ok((out, self.out_shape()))
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
        reference_fwd(&[(s1, l1), (s2, l2), (s3, l3)], |x| self.reference(x))
    }
}

/// `dL/dx` from `(dL/dy, w)`, written back through the shift: each channel's gradient goes to
/// the frame the conv read that channel from.
#[derive(Debug, Clone, Copy)]
struct ConvGradInput(Geom);

impl ConvGradInput {
    fn fwd<T: Elem>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<Vec<T>> {
        let (grad, w) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
        let g = self.0;
        let (kk, l, fin, hw) = (g.kk(), g.l(), g.frame_in(), g.h * g.w);
        let (per, _) = g.groups();
        let wt = Mat::new(w, g.o, kk).t();
        // a one-frame stride-1 1x1 conv's `W^T @ g` is the input gradient itself: by runs of
        // channels that come from one frame, each run's rows go straight to that frame
        let in_place = g.direct() && g.chunk_frames() == 1;
        let runs = match g.shift {
            Some(s) => s.runs(g.c),
            None => [0..g.c, 0..0, 0..0],
        };
        let run_wt: Vec<_> = runs
            .into_iter()
            .filter(|r| in_place && !r.is_empty())
            .map(|r| (r.clone(), Lhs::new(wt.row_range(r), g.products)))
            .collect();
        let wt = (!in_place).then(|| Lhs::new(wt, g.products));
        let banded = !in_place && g.banded();
        let gx = par_zeros(g.n * fin, per * fin, |grp, gxs| {
            let base = grp * per;
            T::with_scratch(0, g.band_cols_len(banded), |cols| {
                T::with_scratch(1, g.out_mat_len(), |gbuf| {
                    for ch in g.chunks(grp) {
                        let gm = g.grad_mat(grad, ch, gbuf);
                        let Some(wt) = &wt else {
                            for (run, wt) in &run_wt {
                                let Some(src) = g.source_frame(ch.first, run.start) else {
                                    continue;
                                };
                                let at = (src - base) * fin + run.start * hw;
                                matmul(&g, &mut gxs[at..at + run.len() * hw], false, wt, gm);
                            }
                            continue;
                        };
                        // frame `n`'s columns of output rows `rows`, `stride` apart, onto the
                        // frames each channel was read from
                        let mut fold_back = |n, cols: &[T], stride, rows: Range<usize>| {
                            for c in 0..g.c {
                                let Some(src) = g.source_frame(n, c) else {
                                    continue;
                                };
                                let at = (src - base) * fin + c * hw;
                                col2im(&g, cols, stride, c, &mut gxs[at..at + hw], rows.clone());
                            }
                        };
                        if banded {
                            for rows in g.bands() {
                                let (c0, nt) = (rows.start * g.wo, rows.len() * g.wo);
                                let gband = gm.col_range(c0..c0 + nt);
                                matmul(&g, &mut cols[..kk * nt], false, wt, gband);
                                fold_back(ch.first, cols, nt, rows);
                            }
                            continue;
                        }
                        let ncols = ch.f * l;
                        matmul(&g, &mut cols[..kk * ncols], false, wt, gm);
                        for j in 0..ch.f {
                            fold_back(ch.first + j, &cols[j * l..], ncols, 0..g.ho);
                        }
                    }
                })
            })
        });
        Ok(gx)
    }
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2));
        Ok((out, (g.n, g.c, g.h, g.w).into()))
    }
}

/// `dL/dw` from `(x, dL/dy)`: per-group partial sums over frames, then summed in group order.
#[derive(Debug, Clone, Copy)]
struct ConvGradWeight(Geom);

impl ConvGradWeight {
    fn fwd<T: Elem>(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<Vec<T>> {
        let (x, grad) = (cpu_slice::<T>(s1, l1)?, cpu_slice::<T>(s2, l2)?);
        let g = self.0;
        let (kk, l) = (g.kk(), g.l());
        let (_, groups) = g.groups();
        let partials: Vec<Vec<T>> = (0..groups)
            .into_par_iter()
            .map(|grp| {
                let mut gw = vec![T::zero(); g.o * kk];
                let banded = g.grad_weight_banded();
                T::with_scratch(0, g.band_cols_len(banded), |cols| {
                    T::with_scratch(1, g.out_mat_len(), |gbuf| {
                        for ch in g.chunks(grp) {
                            let gm = g.grad_mat(grad, ch, gbuf);
                            if banded {
                                for rows in g.bands() {
                                    let (c0, nt) = (rows.start * g.wo, rows.len() * g.wo);
                                    im2col(&g, x, ch.first, cols, nt, rows);
                                    let src = Mat::new(&cols[..kk * nt], kk, nt);
                                    let gband = Lhs::new(gm.col_range(c0..c0 + nt), g.products);
                                    matmul(&g, &mut gw, true, &gband, src.t());
                                }
                                continue;
                            }
                            let src = Mat::new(g.cols(x, ch, cols), kk, ch.f * l);
                            matmul(&g, &mut gw, true, &Lhs::new(gm, g.products), src.t());
                        }
                    })
                });
                gw
            })
            .collect();
        let mut it = partials.into_iter();
        let mut total = it.next().unwrap_or_else(|| vec![T::zero(); g.o * kk]);
        for p in it {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        Ok(total)
    }
}

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-gemm-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2));
        Ok((out, (g.o, g.c, g.k, g.k).into()))
    }
}
