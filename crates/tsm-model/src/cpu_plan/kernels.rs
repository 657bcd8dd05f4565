//! The blocked-layout kernels of the CPU inference plan (x86-64 with AVX2 and FMA, or
//! AVX-512, or AVX-512 BF16).
//!
//! Activations are [`Blocked`]: `[frames][C/8][H+2][W+2][8]` f32 (or bf16), the 8 channels of
//! a pixel in one 256-bit register (or half of one), each plane framed by a one-pixel zero
//! border that is the 3x3 convs' padding. A convolution is a register tile of output pixels
//! (up to 12 of one output row) x output channels (see [`Kernel`]) that takes, per input
//! channel, one load of pre-packed weights per 16 output channels and one broadcast per pixel.
//! A stride-1 tile whose frame reads every input block whole broadcasts straight from the
//! activations (its pixels are side by side in each input row, so each (block, tap) step is
//! one offset, as in oneDNN's brgemm); the others (stride 2, and blocks the temporal shift
//! reads in part or not at all) read a panel, their input packed once per task into a buffer
//! that stays in L2 while every output tile of the task reads it. The bf16 kernel keeps
//! everything it stores as bf16 (activations, panels and weights) and sums in f32: each
//! layer's sums are rounded once, as they are stored. Bias, the residual add, the leaky ReLU
//! and the temporal shift are folded into that pass: the shift only changes which frame each
//! input channel is read from.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::amx_conv;
use crate::ops::LEAKY_SLOPE;

/// Channels per block: one AVX register of f32.
pub(super) const LANES: usize = 8;
/// Output channels per output tile (two blocks); the weights are packed in these.
pub(super) const OUT_TILE: usize = 16;
/// Channels per block of the AMX kernel: one 64-byte tile row of bf16.
pub(super) const AMX_LANES: usize = 32;

/// Activations of `n` frames of `cb` channel blocks, `h x w`, in the blocked layout with a
/// zero border (see the module docs). Only the interior is data; the border is kept zero.
pub(super) struct Blocked<E> {
    pub(super) n: usize,
    pub(super) cb: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Channels per block: [`LANES`], or [`AMX_LANES`] for the AMX kernel.
    pub(super) lanes: usize,
    /// The arena's buffer: the activations are its first [`Blocked::len`] elements (a buffer
    /// serves larger activations at other points of the pass).
    pub(super) data: Vec<E>,
    /// Where the buffer came from (the pass's arena).
    pub(super) slot: usize,
}

/// Sizes of a blocked plane (one channel block of one frame).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plane {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) lanes: usize,
}

impl Plane {
    /// Row length with the border, in pixels.
    pub(super) fn wp(self) -> usize {
        self.w + 2
    }

    pub(super) fn len(self) -> usize {
        (self.h + 2) * self.wp() * self.lanes
    }

    /// Offset of interior pixel `(y, x)`.
    pub(super) fn at(self, y: usize, x: usize) -> usize {
        ((y + 1) * self.wp() + x + 1) * self.lanes
    }

    /// Zeroes the border of `plane` (its interior is written by the producer).
    pub(super) fn zero_border<E: Elem>(self, plane: &mut [E]) {
        let (row, l) = (self.wp() * self.lanes, self.lanes);
        let zero = E::default();
        plane[..row].fill(zero);
        plane[(self.h + 1) * row..].fill(zero);
        for y in 1..=self.h {
            plane[y * row..y * row + l].fill(zero);
            plane[(y + 1) * row - l..(y + 1) * row].fill(zero);
        }
    }
}

impl<E> Blocked<E> {
    /// Elements of `n` frames of `cb` blocks of `lanes` channels, `h x w`.
    pub(super) fn len(n: usize, cb: usize, h: usize, w: usize, lanes: usize) -> usize {
        n * cb * Plane { h, w, lanes }.len()
    }

    /// Elements a buffer holds past its activations: the AMX kernel's tiles of 16 pixels
    /// read on past the last plane's end (into values whose sums it never stores).
    pub(super) fn read_past(lanes: usize) -> usize {
        64 * lanes
    }

    pub(super) fn plane(&self) -> Plane {
        Plane {
            h: self.h,
            w: self.w,
            lanes: self.lanes,
        }
    }

    fn elems(&self) -> usize {
        Self::len(self.n, self.cb, self.h, self.w, self.lanes)
    }

    pub(super) fn check(&self) {
        assert!(
            self.data.len() >= self.elems(),
            "blocked activations: buffer smaller than its sizes"
        );
    }

    /// The activations.
    pub(super) fn buf(&self) -> &[E] {
        &self.data[..self.elems()]
    }

    pub(super) fn buf_mut(&mut self) -> &mut [E] {
        let len = self.elems();
        &mut self.data[..len]
    }
}

/// A value of the frames: f32, or bf16 (read as it is, not copied to f32 first).
pub(super) trait FrameValue: Copy + Sync {
    fn value(self) -> f32;
}

impl FrameValue for f32 {
    fn value(self) -> f32 {
        self
    }
}

impl FrameValue for half::bf16 {
    fn value(self) -> f32 {
        self.to_f32()
    }
}

/// How the frames enter the blocked layout: as they are (`k` 1), or gathered for the first
/// conv (`k x k`, `stride`, `pad`), each output pixel's `k * k * c` inputs side by side as
/// one pixel's channels, so that the conv runs as a 1x1 conv of a few blocks instead of
/// `k * k` steps of blocks that hold 3 channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gather {
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
}

impl Gather {
    pub(super) const NONE: Gather = Gather {
        k: 1,
        stride: 1,
        pad: 0,
    };

    /// The size of the gathered map for an input of `n`.
    pub(super) fn out_size(self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }
}

/// `x [n, c, h, w]` (NCHW) gathered by `g` into `out` (`n` frames of `g.out_size` of `h` and `w`): lane
/// `(kh * k + kw) * c + ch` of all the blocks of a pixel is channel `ch` at tap `(kh, kw)`;
/// taps outside the image and lanes past `k * k * c` are zero.
pub(super) fn to_blocked<T: FrameValue, E: Elem>(
    x: &[T],
    [c, h, w]: [usize; 3],
    g: Gather,
    out: &mut Blocked<E>,
) {
    out.check();
    let p = out.plane();
    let (cb, hw) = (out.cb, h * w);
    assert!(
        x.len() == out.n * c * hw
            && p.h == g.out_size(h)
            && p.w == g.out_size(w)
            && cb * p.lanes >= g.k * g.k * c,
        "to_blocked: sizes"
    );
    out.buf_mut()
        .par_chunks_mut(p.len())
        .enumerate()
        .for_each(|(i, plane)| {
            let (frame, b) = (i / cb, i % cb);
            p.zero_border(plane);
            // input (y, x) of output (oy, ox) at tap (kh, kw): (oy * stride + kh - pad, ..)
            let at = |o: usize, kt: usize, n: usize| {
                (o * g.stride + kt).checked_sub(g.pad).filter(|&i| i < n)
            };
            // each lane's (tap, channel) in this plane's block, `None` past the taps
            let lanes: Vec<Option<(usize, usize)>> = (b * p.lanes..(b + 1) * p.lanes)
                .map(|i| Some((i / c, i % c)).filter(|&(tap, _)| tap < g.k * g.k))
                .collect();
            for oy in 0..p.h {
                // each lane's input row at this output row (none above or below the image)
                let rows: Vec<Option<(&[T], usize)>> = lanes
                    .iter()
                    .map(|lane| {
                        let (tap, ch) = (*lane)?;
                        let y = at(oy, tap / g.k, h)?;
                        Some((&x[((frame * c + ch) * h + y) * w..][..w], tap % g.k))
                    })
                    .collect();
                // the pixels whose every tap is inside the row, and the others
                let end = (w + g.pad).checked_sub(g.k).map_or(0, |e| e / g.stride + 1);
                let inner = g.pad.div_ceil(g.stride)..end.min(p.w);
                for ox in 0..p.w {
                    // every lane written (a zero as a value): no separate pass of zeros
                    let px = &mut plane[p.at(oy, ox)..][..p.lanes];
                    if inner.contains(&ox) {
                        let x0 = ox * g.stride - g.pad;
                        for (v, row) in px.iter_mut().zip(&rows) {
                            *v = row.map_or(E::default(), |(row, kw)| {
                                E::from_f32(row[x0 + kw].value())
                            });
                        }
                        continue;
                    }
                    for (v, row) in px.iter_mut().zip(&rows) {
                        let xi = row.and_then(|(row, kw)| Some((row, at(ox, kw, w)?)));
                        *v = xi.map_or(E::default(), |(row, xi)| E::from_f32(row[xi].value()));
                    }
                }
            }
        });
}

/// The first `c` channels of `x` as NCHW `[n, c, h, w]` f32 (bf16 values are exact in f32;
/// the head sums in f32, and candle's own conversion would be one more, single-threaded, pass).
pub(super) fn from_blocked<E: Elem>(x: &Blocked<E>, c: usize) -> Vec<f32> {
    x.check();
    let p = x.plane();
    let hw = p.h * p.w;
    let mut out = vec![0.0; x.n * c * hw];
    if hw == 0 {
        return out;
    }
    out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
        let (frame, ch) = (i / c, i % c);
        let plane = &x.buf()[(frame * x.cb + ch / p.lanes) * p.len()..][..p.len()];
        for y in 0..p.h {
            for xi in 0..p.w {
                dst[y * p.w + xi] = plane[p.at(y, xi) + ch % p.lanes].to_f32();
            }
        }
    });
    out
}

/// Output size of the 3x3 stride-2 pad-1 max pool.
pub(super) fn max_pooled(n: usize) -> usize {
    (n + 2 - 3) / 2 + 1
}

/// Paddle's `MaxPool2D(3, stride=2, padding=1)`: each window clipped to the image.
pub(super) fn max_pool3x3_s2<E: Elem>(x: &Blocked<E>, out: &mut Blocked<E>) {
    assert!(out.h == max_pooled(x.h) && out.w == max_pooled(x.w));
    let window = |o: usize, n: usize| (2 * o).saturating_sub(1)..(2 * o + 2).min(n);
    let max = |m: f32, v: f32| if v > m { v } else { m };
    pool(x, out, window, f32::NEG_INFINITY, max, |m, _| m);
}

/// Paddle's `AvgPool2D(2, stride=2, ceil_mode=True)`, exclusive: a window on the last
/// row/column of an odd size averages the cells inside the image.
pub(super) fn avg_pool2x2_ceil<E: Elem>(x: &Blocked<E>, out: &mut Blocked<E>) {
    assert!(out.h == x.h.div_ceil(2) && out.w == x.w.div_ceil(2));
    let window = |o: usize, n: usize| 2 * o..(2 * o + 2).min(n);
    pool(
        x,
        out,
        window,
        0.0,
        |s, v| s + v,
        |s, cells| s * (1.0 / cells as f32),
    );
}

/// Pools every plane of `x` into `out`: output `(oy, ox)` is `finish(fold, cells)` of the
/// cells `window(oy, h) x window(ox, w)`, folded in f32 from `init` with `combine` per
/// channel.
fn pool<E: Elem>(
    x: &Blocked<E>,
    out: &mut Blocked<E>,
    window: impl Fn(usize, usize) -> std::ops::Range<usize> + Sync,
    init: f32,
    combine: impl Fn(f32, f32) -> f32 + Sync,
    finish: impl Fn(f32, usize) -> f32 + Sync,
) {
    x.check();
    out.check();
    assert!(
        x.cb * x.n == out.cb * out.n && x.lanes == out.lanes,
        "pool: planes differ"
    );
    // every kernel of the plan runs on AVX2 or a superset
    assert!(
        is_x86_feature_detected!("avx2"),
        "pool: the CPU plan without AVX2"
    );
    let (pi, po) = (x.plane(), out.plane());
    // compiled for AVX2: a pixel's 8 channels are one register (generic x86-64 code took
    // 4.7x OpenVINO's time)
    #[target_feature(enable = "avx2")]
    fn pool_plane<E: Elem>(
        (pi, po): (Plane, Plane),
        (src, dst): (&[E], &mut [E]),
        window: &impl Fn(usize, usize) -> std::ops::Range<usize>,
        init: f32,
        combine: &impl Fn(f32, f32) -> f32,
        finish: &impl Fn(f32, usize) -> f32,
    ) {
        po.zero_border(dst);
        let row_len = pi.wp() * pi.lanes;
        for oy in 0..po.h {
            let rows = window(oy, pi.h);
            // the next output row's new input rows, fetched while this row is pooled: the
            // pools were bound by the latency of their input
            for y in rows.end..window(oy + 1, pi.h).end {
                let row = &src[(y + 1) * row_len..][..row_len];
                for line in row.chunks(64 / size_of::<E>()) {
                    _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                }
            }
            for ox in 0..po.w {
                let cols = window(ox, pi.w);
                // a pixel's channels 8 at a time: one register
                for l in (0..pi.lanes).step_by(LANES) {
                    let mut acc = [init; LANES];
                    for y in rows.clone() {
                        for xi in cols.clone() {
                            let Some(v) = src[pi.at(y, xi) + l..].first_chunk::<LANES>() else {
                                unreachable!("a pixel inside its plane")
                            };
                            for (a, &v) in acc.iter_mut().zip(v) {
                                *a = combine(*a, v.to_f32());
                            }
                        }
                    }
                    let cells = rows.len() * cols.len();
                    let Some(d) = dst[po.at(oy, ox) + l..].first_chunk_mut::<LANES>() else {
                        unreachable!("a pixel inside its plane")
                    };
                    for (d, a) in d.iter_mut().zip(acc) {
                        *d = E::from_f32(finish(a, cells));
                    }
                }
            }
        }
    }
    out.buf_mut()
        .par_chunks_mut(po.len())
        .zip(x.buf().par_chunks(pi.len()))
        .for_each(|(dst, src)| {
            // SAFETY: the CPU has AVX2 (asserted above).
            unsafe { pool_plane((pi, po), (src, dst), &window, init, &combine, &finish) }
        });
}

/// The microkernel of a plan: what its weights and panels hold and which instructions multiply
/// them. Picked once per plan from the weights' dtype and this CPU (see [`Kernel::for_dtype`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// f32, AVX2 + FMA: 5 pixels x 16 output channels.
    F32Avx2,
    /// f32, AVX-512: 12 pixels x 32 output channels, the broadcasts folded into the FMAs.
    F32Avx512,
    /// bf16 weights and inputs, products summed in f32 (AVX-512 BF16's `vdpbf16ps`: two
    /// input channels per instruction and lane): 12 pixels x 32 output channels.
    Bf16Avx512,
    /// bf16 as `Bf16Avx512`, on AMX tiles (`tdpbf16ps`: 16 pixels x 16 output channels x 32
    /// input channels per instruction): 32 pixels x 32 output channels in four tiles, on
    /// blocks of [`AMX_LANES`] channels (see `amx_conv`).
    Bf16Amx,
}

/// What [`Kernel::for_dtype`] found missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKernel {
    /// The dtype has no kernel at all (f16, f64).
    Dtype,
    /// This CPU lacks the named instructions.
    Cpu(&'static str),
}

impl Kernel {
    /// Every kernel, fastest first within a dtype.
    #[cfg(test)]
    pub(crate) const ALL: [Kernel; 4] = [
        Kernel::F32Avx512,
        Kernel::F32Avx2,
        Kernel::Bf16Amx,
        Kernel::Bf16Avx512,
    ];

    /// The fastest kernel for weights of `dtype` on this CPU.
    pub(crate) fn for_dtype(dtype: candle_core::DType) -> Result<Self, NoKernel> {
        let found = match dtype {
            candle_core::DType::F32 => [Kernel::F32Avx512, Kernel::F32Avx2]
                .into_iter()
                .find(|k| k.runs_here()),
            candle_core::DType::BF16 => [Kernel::Bf16Amx, Kernel::Bf16Avx512]
                .into_iter()
                .find(|k| k.runs_here()),
            _ => return Err(NoKernel::Dtype),
        };
        found.ok_or(NoKernel::Cpu(match dtype {
            candle_core::DType::BF16 => "avx512_bf16",
            _ => "avx2 and fma",
        }))
    }

    /// Whether this CPU has the kernel's instructions.
    pub(crate) fn runs_here(self) -> bool {
        let avx512 = || {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
        };
        match self {
            Kernel::F32Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            Kernel::F32Avx512 => avx512(),
            Kernel::Bf16Avx512 => avx512() && is_x86_feature_detected!("avx512bf16"),
            Kernel::Bf16Amx => {
                avx512() && is_x86_feature_detected!("avx512bf16") && crate::amx::usable()
            }
        }
    }

    /// Channels per block of the activations.
    pub(super) fn lanes(self) -> usize {
        match self {
            Kernel::Bf16Amx => AMX_LANES,
            Kernel::F32Avx2 | Kernel::F32Avx512 | Kernel::Bf16Avx512 => LANES,
        }
    }

    /// What the output channels must be a multiple of: the register tile's.
    pub(super) fn cout_multiple(self) -> usize {
        self.out_tiles() * OUT_TILE
    }

    /// Output pixels per register tile.
    fn pixels(self) -> usize {
        match self {
            Kernel::F32Avx2 => AVX2_PIXELS,
            Kernel::F32Avx512 | Kernel::Bf16Avx512 => AVX512_PIXELS,
            Kernel::Bf16Amx => 2 * amx_conv::TILE_ROWS,
        }
    }

    /// 16-channel output tiles per register tile.
    fn out_tiles(self) -> usize {
        match self {
            Kernel::F32Avx2 => 1,
            Kernel::F32Avx512 | Kernel::Bf16Avx512 | Kernel::Bf16Amx => 2,
        }
    }
}

/// Output pixels per AVX2 register tile: 5 x 2 accumulators. (With 6, 12 accumulators, LLVM
/// spills one of them on every step: measured slower.)
const AVX2_PIXELS: usize = 5;
/// Output pixels per AVX-512 register tile: 12 x 2 accumulators and 2 weight registers of 32.
/// (With 14, the bf16 tile no longer fits its broadcast in a register: measured half speed.)
const AVX512_PIXELS: usize = 12;

/// A convolution with its BN folded in, weights packed for the register tile:
/// `[cout/16][cin_blocks][k*k][8 input channels][16 output channels]` in f32, and for bf16
/// the same with each pair of input channels interleaved per output channel
/// (`[..][4 pairs][16 output channels][2]`, the operand order of `vdpbf16ps`).
pub(super) struct PackedConv {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    kernel: Kernel,
    weights: Weights,
    pub(super) bias: Vec<f32>,
}

pub(super) enum Weights {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
}

/// An element of the activations, panels and weights of a kernel: f32, or bf16 bits for the
/// bf16 kernel.
pub(super) trait Elem: TileKernel + Copy + Default + Send + Sync + 'static {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The packed weights, if they are of this type.
    fn weights(w: &Weights) -> Option<&[Self]>;
}

impl Elem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }

    fn to_f32(self) -> f32 {
        self
    }

    fn weights(w: &Weights) -> Option<&[Self]> {
        match w {
            Weights::F32(w) => Some(w),
            Weights::Bf16(_) => None,
        }
    }
}

impl Elem for u16 {
    fn from_f32(v: f32) -> Self {
        bf16_bits(v)
    }

    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }

    fn weights(w: &Weights) -> Option<&[Self]> {
        match w {
            Weights::Bf16(w) => Some(w),
            Weights::F32(_) => None,
        }
    }
}

/// Round to nearest even, as `vcvtneps2bf16` does (NaNs stay NaNs).
pub(super) fn bf16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    // both computed, one selected: no branch, so that loops of it vectorize
    let quiet = ((b >> 16) | 0x40) as u16;
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        quiet
    } else {
        rounded
    }
}

/// [`bf16_bits`] of 16 values, in AVX-512 F (so that the stores of every AVX-512 kernel share
/// one set of instructions).
#[target_feature(enable = "avx512f")]
#[inline]
fn bf16_bits16(v: __m512) -> __m256i {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let bits = _mm512_mask_mov_epi32(_mm512_srli_epi32::<16>(rounded), nan, quiet);
    _mm512_cvtepi32_epi16(bits)
}

/// Where each input channel of a frame is read from: the frame itself, or (the temporal
/// shift) a neighbour in its clip, or nowhere (zeros: past the clip's ends).
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockSources {
    pub(super) num_seg: usize,
    /// Channels `[0, c1)` come from frame `t - 1`, `[c1, c2)` from `t + 1`, the rest from `t`.
    pub(super) c1: usize,
    pub(super) c2: usize,
}

/// A run of channels of one input block that one frame supplies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source {
    pub(super) frame: usize,
    pub(super) block: usize,
    /// Lanes `lo..hi` of the block.
    pub(super) lo: usize,
    pub(super) hi: usize,
}

impl BlockSources {
    /// What output frame `frame` reads, for input blocks `0..cb` of `lanes` channels (a block
    /// that a fold boundary cuts is read in pieces).
    pub(super) fn of(&self, frame: usize, cb: usize, lanes: usize) -> Vec<Source> {
        let t = frame % self.num_seg;
        let folds = [
            (0, self.c1, t.checked_sub(1)),
            (self.c1, self.c2, Some(t + 1).filter(|&s| s < self.num_seg)),
            (self.c2, cb * lanes, Some(t)),
        ];
        let mut out = Vec::new();
        for block in 0..cb {
            let (b0, b1) = (block * lanes, (block + 1) * lanes);
            for &(f0, f1, src) in &folds {
                let (lo, hi) = (f0.max(b0), f1.min(b1));
                if let (Some(s), true) = (src, lo < hi) {
                    out.push(Source {
                        frame: frame - t + s,
                        block,
                        lo: lo - b0,
                        hi: hi - b0,
                    });
                }
            }
        }
        out
    }
}

/// Whether `reads` (of a frame with `cb` input blocks of `lanes`) read every block whole.
pub(super) fn complete(reads: &[Source], cb: usize, lanes: usize) -> bool {
    reads.len() == cb
        && reads
            .iter()
            .enumerate()
            .all(|(b, r)| r.block == b && (r.lo, r.hi) == (0, lanes))
}

/// Where each step of a register tile's input (8 input channels of one block and tap) starts,
/// relative to the tile's first pixel.
struct StepOffsets {
    offsets: Vec<usize>,
    max: usize,
}

impl StepOffsets {
    fn new(offsets: Vec<usize>) -> Self {
        let max = offsets.iter().copied().max().unwrap_or(0);
        Self { offsets, max }
    }
}

/// A register tile's input: pixel `j` of step `s` is the 8 values at
/// `data[origin + offsets[s] + 8 j..]`, in a packed panel or in the activations themselves.
pub(super) struct TileInput<'a, E> {
    data: &'a [E],
    origin: usize,
    offsets: &'a [usize],
    /// `origin` + the largest offset.
    last_step: usize,
}

impl<'a, E> TileInput<'a, E> {
    fn new(data: &'a [E], origin: usize, steps: &'a StepOffsets) -> Self {
        Self {
            data,
            origin,
            offsets: &steps.offsets,
            last_step: origin + steps.max,
        }
    }

    /// Checks what a kernel's unchecked reads rely on: `steps` steps, each with `pixels` pixels
    /// inside `data`; returns the pointer to the tile's first pixel.
    fn start(&self, steps: usize, pixels: usize) -> *const E {
        assert!(
            self.offsets.len() == steps && self.last_step + pixels * LANES <= self.data.len(),
            "register tile input: {steps} steps of {pixels} pixels do not fit"
        );
        self.data[self.origin..].as_ptr()
    }
}

impl PackedConv {
    /// Packs `w [cout, cin, k, k]` (row-major) and `bias [cout]` for `kernel`; `cout` must be
    /// a multiple of 16 (input channels are zero-padded to whole blocks).
    pub(super) fn new(
        w: &[f32],
        bias: &[f32],
        dims: [usize; 4],
        stride: usize,
        kernel: Kernel,
    ) -> Self {
        let [cout, cin, k, k2] = dims;
        assert!(
            k == k2 && cout.is_multiple_of(OUT_TILE) && w.len() == cout * cin * k * k,
            "packed conv: unsupported weight {dims:?}"
        );
        assert_eq!(bias.len(), cout, "packed conv: bias length");
        if kernel == Kernel::Bf16Amx {
            return Self {
                cin,
                cout,
                k,
                stride,
                pad: (k - 1) / 2,
                kernel,
                weights: Weights::Bf16(amx_conv::pack_weights(w, dims)),
                bias: bias.to_vec(),
            };
        }
        let cb = cin.div_ceil(LANES);
        let kk = k * k;
        let mut packed = vec![0.0; cout / OUT_TILE * cb * kk * LANES * OUT_TILE];
        for (o, filter) in w.chunks_exact(cin * kk).enumerate() {
            let (ob, oc) = (o / OUT_TILE, o % OUT_TILE);
            for (c, taps) in filter.chunks_exact(kk).enumerate() {
                let (ib, ic) = (c / LANES, c % LANES);
                for (kp, &v) in taps.iter().enumerate() {
                    let i = (((ob * cb + ib) * kk + kp) * LANES + ic) * OUT_TILE + oc;
                    packed[i] = v;
                }
            }
        }
        let weights = match kernel {
            Kernel::F32Avx2 | Kernel::F32Avx512 => Weights::F32(packed),
            Kernel::Bf16Avx512 | Kernel::Bf16Amx => Weights::Bf16(
                packed
                    .chunks_exact(LANES * OUT_TILE)
                    .flat_map(|step| {
                        // [ic][oc] -> [ic / 2][oc][ic % 2]
                        (0..LANES * OUT_TILE).map(|i| {
                            let (pair, oc, e) = (i / (2 * OUT_TILE), i / 2 % OUT_TILE, i % 2);
                            bf16_bits(step[(2 * pair + e) * OUT_TILE + oc])
                        })
                    })
                    .collect(),
            ),
        };
        Self {
            cin,
            cout,
            k,
            stride,
            pad: (k - 1) / 2,
            kernel,
            weights,
            bias: bias.to_vec(),
        }
    }

    pub(super) fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Output size for an input of `n`.
    pub(super) fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }

    /// `out = act(conv(x) + bias [+ residual])`, with `act` the leaky ReLU when `act`;
    /// `sources` (the temporal shift) says which frame each input block is read from.
    pub(super) fn run<E: Elem>(
        &self,
        x: &Blocked<E>,
        sources: Option<BlockSources>,
        residual: Option<&Blocked<E>>,
        act: bool,
        out: &mut Blocked<E>,
    ) {
        let Some(weights) = E::weights(&self.weights) else {
            panic!(
                "packed conv: activations of another type than the {:?} kernel's",
                self.kernel
            )
        };
        x.check();
        out.check();
        let (pi, po) = (x.plane(), out.plane());
        let lanes = self.kernel.lanes();
        assert!(
            x.lanes == lanes
                && out.lanes == lanes
                && x.cb == self.cin.div_ceil(lanes)
                && out.cb * lanes == self.cout
                && out.n == x.n
                && po.h == self.out_size(pi.h)
                && po.w == self.out_size(pi.w)
                && self.pad <= 1,
            "packed conv: activations do not fit the conv"
        );
        if let Some(r) = residual {
            r.check();
            assert!(r.n == out.n && r.cb == out.cb && r.h == out.h && r.w == out.w);
            assert!(r.lanes == out.lanes);
        }
        let sources = sources.unwrap_or(BlockSources {
            num_seg: 1,
            c1: 0,
            c2: 0,
        });
        assert!(
            x.n.is_multiple_of(sources.num_seg),
            "packed conv: partial clip"
        );
        let slope = act.then_some(LEAKY_SLOPE as f32);
        if self.kernel == Kernel::Bf16Amx {
            return E::amx_conv(self, weights, (x, sources, residual), slope, out);
        }
        let (pix, nt) = (self.kernel.pixels(), self.kernel.out_tiles());
        let obs = self.cout / OUT_TILE;
        let groups = conv_groups(x.n, obs / nt, size_of_val(weights), weight_group_bytes());
        let per_group = obs.div_ceil(groups).next_multiple_of(nt);
        let frame_len = out.cb * po.len();
        let k = x.cb * self.k * self.k * LANES;
        let tiles_per_panel = (PANEL_BYTES / (k * pix * size_of::<E>())).max(1);
        let tiles = row_tiles(po, pix);
        // a packed panel's steps, one after another
        let packed = StepOffsets::new((0..k / LANES).map(|s| s * pix * LANES).collect());
        conv_tasks(out.buf_mut(), frame_len, per_group * 2 * po.len())
            .into_par_iter()
            .for_each(|(frame, g, dst)| {
                let ob0 = g * per_group;
                let reads = sources.of(frame, x.cb, LANES);
                let residual = residual
                    .map(|r| &r.buf()[frame * frame_len + ob0 * 2 * po.len()..][..dst.len()]);
                for plane in dst.chunks_exact_mut(po.len()) {
                    po.zero_border(plane);
                }
                // with every block read whole, a tile inside one input row reads the
                // activations themselves: step (block, tap) at that block's plane and tap
                let complete = complete(&reads, x.cb, LANES);
                let direct = (self.stride == 1 && complete).then(|| {
                    StepOffsets::new(
                        reads
                            .iter()
                            .flat_map(|r| {
                                let plane = (r.frame * x.cb + r.block) * pi.len();
                                self.taps()
                                    .map(move |(kh, kw)| plane + (kh * pi.wp() + kw) * LANES)
                            })
                            .collect(),
                    )
                });
                let panel_tiles = tiles_per_panel.min(tiles.len());
                with_panel(panel_tiles * k * pix, |panel: &mut [E]| {
                    for chunk in tiles.chunks(tiles_per_panel) {
                        // each tile's place in the activations where it reads them directly;
                        // the others are packed
                        let origins: Vec<Option<usize>> = chunk
                            .iter()
                            .zip(panel.chunks_exact_mut(k * pix))
                            .map(|(&(p0, px), tile)| {
                                let at = self.tile_pixels(p0, px, (pi, po));
                                let one_run = at[..px].windows(2).all(|p| p[1] == p[0] + LANES);
                                if direct.is_some() && one_run {
                                    return Some(at[0]);
                                }
                                self.pack((x, &reads, complete), (&at, px, one_run), pi, tile);
                                None
                            })
                            .collect();
                        // register tiles of `nt` output tiles (one fewer at an odd end)
                        let span = nt * 2 * po.len();
                        for (i, out_tiles) in dst.chunks_mut(span).enumerate() {
                            let ob = ob0 + i * nt;
                            let n = out_tiles.len() / (2 * po.len());
                            let job = Job {
                                weights: &weights[ob * k * OUT_TILE..][..n * k * OUT_TILE],
                                bias: &self.bias[ob * OUT_TILE..][..n * OUT_TILE],
                                residual: residual.map(|r| &r[i * span..][..out_tiles.len()]),
                                slope,
                                po,
                            };
                            let panels = panel.chunks_exact(k * pix);
                            for ((&(p0, px), origin), tile) in
                                chunk.iter().zip(&origins).zip(panels)
                            {
                                let input = match (origin, &direct) {
                                    (Some(o), Some(offsets)) => {
                                        TileInput::new(x.buf(), *o, offsets)
                                    }
                                    _ => TileInput::new(tile, 0, &packed),
                                };
                                // the residual the tile adds, fetched while its sums run
                                if let Some(r) = job.residual {
                                    job.prefetch_pixels(r, p0, px, 2 * n);
                                }
                                // SAFETY: the plan checked `runs_here()` of this kernel.
                                unsafe { E::tile(self.kernel, &job, p0, px, n, &input, out_tiles) }
                            }
                        }
                    }
                });
            });
    }

    /// The offset in a plane of tap (0, 0) of each pixel of the register tile of output
    /// pixels `p0..p0 + px` (padded coordinates: the border is the padding; past the last
    /// pixel, the last).
    fn tile_pixels(
        &self,
        p0: usize,
        px: usize,
        (pi, po): (Plane, Plane),
    ) -> [usize; AVX512_PIXELS] {
        let origin = 1 - self.pad;
        std::array::from_fn(|j| {
            let q = p0 + j.min(px - 1);
            let (oy, ox) = (q / po.w, q % po.w);
            ((oy * self.stride + origin) * pi.wp() + ox * self.stride + origin) * LANES
        })
    }

    /// The taps `(kh, kw)` in the weights' order.
    fn taps(&self) -> impl Iterator<Item = (usize, usize)> + Clone {
        let k = self.k;
        (0..k).flat_map(move |kh| (0..k).map(move |kw| (kh, kw)))
    }

    /// The panel of a register tile (`at` as [`Self::tile_pixels`] gives it, `npx` pixels;
    /// `one_run`: the pixels side by side in one input row): for each input block, tap and
    /// pixel, the 8 channels the conv multiplies, in the weights' order `[block][tap][pixel][8]`.
    /// Channels that the shift leaves empty (`complete`: none) are zeros.
    fn pack<E: Elem>(
        &self,
        (x, reads, complete): (&Blocked<E>, &[Source], bool),
        (at, npx, one_run): (&[usize; AVX512_PIXELS], usize, bool),
        pi: Plane,
        panel: &mut [E],
    ) {
        let kk = self.k * self.k;
        let pix = self.kernel.pixels();
        if !complete {
            // blocks or lanes the shift leaves empty (pixels past the end need no zeros: their
            // sums are never stored)
            panel.fill(E::default());
        }
        let taps = self.taps();
        for r in reads {
            let plane = &x.buf()[(r.frame * x.cb + r.block) * pi.len()..][..pi.len()];
            let full = (r.lo, r.hi) == (0, LANES);
            for (tap, (kh, kw)) in taps.clone().enumerate() {
                let dst = &mut panel[(r.block * kk + tap) * pix * LANES..][..pix * LANES];
                let d = (kh * pi.wp() + kw) * LANES;
                if full && one_run {
                    let src = &plane[at[0] + d..][..npx * LANES];
                    copy_run(&mut dst[..npx * LANES], src);
                    continue;
                }
                for (px, &o) in dst.chunks_exact_mut(LANES).zip(at).take(npx) {
                    let src = &plane[o + d..o + d + LANES];
                    if full {
                        px.copy_from_slice(src);
                    } else {
                        px[r.lo..r.hi].copy_from_slice(&src[r.lo..r.hi]);
                    }
                }
            }
        }
    }
}

/// Bytes of weights per group of a conv's output channels (see [`conv_groups`]): half of a
/// core's L2 where the L2 holds 2 MiB or more, and `None` (no weight groups) where it is smaller
/// or unknown. Measured on the f32 plan: on a Xeon with 2 MiB of L2, 1 MiB groups made a forward
/// 12 % faster (the late layers' weights stay in L2 instead of coming from L3 for every frame);
/// on an EPYC (Zen 4) with 1 MiB, groups of 1 MiB and of 512 KiB were both slower than none
/// (each group reads the input again and repacks its strided tiles, and the L3 serves the
/// weights fast enough).
pub(super) fn weight_group_bytes() -> Option<usize> {
    static BYTES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| l2_bytes().filter(|&b| b >= 2 << 20).map(|b| b / 2))
}

/// A core's L2 cache in bytes, as the C library reports it.
fn l2_bytes() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sysconf only reads a configuration value.
    let bytes = unsafe { libc::sysconf(libc::_SC_LEVEL2_CACHE_SIZE) };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let bytes = -1;
    usize::try_from(bytes).ok().filter(|&b| b > 0)
}

/// Into how many groups a conv's `units` register tiles of output channels are split, for
/// `frames` frames and `weight_bytes` of weights: enough (frame, group) tasks to keep every
/// thread busy and, given `group_bytes` ([`weight_group_bytes`]), groups whose weights fit it
/// (the late layers' weights are megabytes for a few pixels).
pub(super) fn conv_groups(
    frames: usize,
    units: usize,
    weight_bytes: usize,
    group_bytes: Option<usize>,
) -> usize {
    let threads = rayon::current_num_threads();
    (2 * threads)
        .div_ceil(frames.max(1))
        .max(group_bytes.map_or(1, |g| weight_bytes.div_ceil(g)))
        .clamp(1, units.max(1))
}

/// A conv's tasks `(frame, group, its output)`: `out` cut into frames of `frame_len` and
/// those into groups of `group_len`, group by group, so that a thread (which takes a run of
/// the list) reuses one group's weights across frames.
pub(super) fn conv_tasks<E>(
    out: &mut [E],
    frame_len: usize,
    group_len: usize,
) -> Vec<(usize, usize, &mut [E])> {
    let mut tasks: Vec<_> = out
        .chunks_mut(frame_len)
        .enumerate()
        .flat_map(|(frame, dst)| {
            dst.chunks_mut(group_len)
                .enumerate()
                .map(move |(g, d)| (frame, g, d))
        })
        .collect();
    tasks.sort_by_key(|t| t.1);
    tasks
}

/// The register tiles `(first pixel, pixels)` of an output plane: each inside one row (so that a
/// stride-1 tile reads one run of each input row), a row split into tiles of at most `pix`
/// pixels, as even as they go (14 -> 7 + 7 at 12 pixels, not 12 + 2: a short tile has fewer
/// sums to hide each weight load behind).
fn row_tiles(po: Plane, pix: usize) -> Vec<(usize, usize)> {
    let per_row = po.w.div_ceil(pix);
    let (base, wider) = (po.w / per_row.max(1), po.w % per_row.max(1));
    (0..po.h)
        .flat_map(|oy| {
            (0..per_row).scan(0, move |x0, i| {
                let px = base + usize::from(i < wider);
                let tile = (oy * po.w + *x0, px);
                *x0 += px;
                Some(tile)
            })
        })
        .collect()
}

/// `dst = src` (whole pixels) in pieces of a fixed size, which the compiler moves with vector
/// registers: a call to `memmove` per run was a third of the packing time.
fn copy_run<E: Copy>(dst: &mut [E], src: &[E]) {
    const PIECE: usize = 2 * LANES;
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(PIECE);
    let mut s = src.chunks_exact(PIECE);
    for (d, s) in (&mut d).zip(&mut s) {
        if let (Some(d), Some(s)) = (d.first_chunk_mut::<PIECE>(), s.first_chunk::<PIECE>()) {
            *d = *s;
        }
    }
    for (d, s) in d
        .into_remainder()
        .chunks_exact_mut(LANES)
        .zip(s.remainder().chunks_exact(LANES))
    {
        if let (Some(d), Some(s)) = (d.first_chunk_mut::<LANES>(), s.first_chunk::<LANES>()) {
            *d = *s;
        }
    }
}

/// Bytes of a task's packed input panel: a few tiles, so that the panel and one output tile's
/// weights stay in a core's L2 while every output tile of the task reuses the panel.
const PANEL_BYTES: usize = 160 << 10;

thread_local! {
    /// This thread's packed input panels.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a panel of `len` elements, this thread's (kept between calls).
fn with_panel<E: Elem, R>(len: usize, f: impl FnOnce(&mut [E]) -> R) -> R {
    const { assert!(size_of::<E>() <= size_of::<f32>() && align_of::<E>() <= align_of::<f32>()) };
    let words = (len * size_of::<E>()).div_ceil(size_of::<f32>());
    let as_elems = |buf: &mut [f32]| {
        // SAFETY: `E` is f32 or u16 (the trait is private), for which every bit pattern is a
        // value; it is no larger nor more aligned than f32 (checked above), and `buf` holds at
        // least `len` of them.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<E>(), len) }
    };
    PANEL.with(|p| match p.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < words {
                buf.resize(words, 0.0);
            }
            f(as_elems(&mut buf[..words]))
        }
        // in use further up this thread's stack (rayon ran another task here while waiting)
        Err(_) => f(as_elems(&mut vec![0.0; words])),
    })
}

/// One register tile's output tiles (1 or 2 of 16 channels, two blocks each) of a task.
pub(super) struct Job<'a, E> {
    /// `[tiles][k][16]`, in the panel's order.
    weights: &'a [E],
    bias: &'a [f32],
    /// The residual's planes for these output tiles.
    residual: Option<&'a [E]>,
    slope: Option<f32>,
    po: Plane,
}

/// The register tiles of an element type's kernels.
pub(super) trait TileKernel: Sized {
    /// Output pixels `p0..p0 + px` of `nt` output tiles from `input`, into `dst` (their
    /// planes).
    ///
    /// # Safety
    /// The CPU has `kernel`'s instructions, and `kernel` takes inputs of `Self`.
    unsafe fn tile(
        kernel: Kernel,
        job: &Job<Self>,
        p0: usize,
        px: usize,
        nt: usize,
        input: &TileInput<Self>,
        dst: &mut [Self],
    );

    /// Stores the 16 sums of output tile `tile` for output pixel `q` (its two blocks), adding
    /// the residual and applying the activation.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, DQ and BW.
    unsafe fn store16(job: &Job<Self>, q: usize, tile: usize, sums: __m512, dst: &mut [Self]);

    /// The AMX kernel's `conv.run` (see `amx_conv::run`).
    fn amx_conv(
        conv: &PackedConv,
        weights: &[Self],
        input: (&Blocked<Self>, BlockSources, Option<&Blocked<Self>>),
        slope: Option<f32>,
        out: &mut Blocked<Self>,
    );
}

/// `$body::<PIXELS, TILES>` for the runtime `(px, nt)`: one instance per width, so a short
/// last tile does no more work than its pixels.
macro_rules! dispatch {
    ($f:ident, $job:expr, $p0:expr, $px:expr, $nt:expr, $input:expr, $dst:expr; $($w:literal)*) => {
        match ($px, $nt) {
            $(($w, 1) => $job.$f::<$w, 1>($p0, $input, $dst),
              ($w, _) => $job.$f::<$w, 2>($p0, $input, $dst),)*
            _ => unreachable!("register tile of {} pixels", $px),
        }
    };
}

impl TileKernel for f32 {
    unsafe fn tile(
        kernel: Kernel,
        job: &Job<f32>,
        p0: usize,
        px: usize,
        nt: usize,
        input: &TileInput<f32>,
        dst: &mut [f32],
    ) {
        // SAFETY (all arms): the caller checked the kernel's instructions.
        unsafe {
            match kernel {
                Kernel::F32Avx2 => job.tile_avx2(p0, px, input, dst),
                Kernel::F32Avx512 => dispatch!(tile_avx512, job, p0, px, nt, input, dst;
                    1 2 3 4 5 6 7 8 9 10 11 12),
                Kernel::Bf16Avx512 | Kernel::Bf16Amx => {
                    unreachable!("bf16 kernel with f32 activations")
                }
            }
        }
    }

    fn amx_conv(
        _: &PackedConv,
        _: &[f32],
        _: (&Blocked<f32>, BlockSources, Option<&Blocked<f32>>),
        _: Option<f32>,
        _: &mut Blocked<f32>,
    ) {
        unreachable!("the AMX kernel with f32 activations")
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512bw")]
    #[inline]
    unsafe fn store16(job: &Job<f32>, q: usize, tile: usize, sums: __m512, dst: &mut [f32]) {
        job.store(q, 2 * tile, _mm512_castps512_ps256(sums), dst);
        job.store(q, 2 * tile + 1, _mm512_extractf32x8_ps::<1>(sums), dst);
    }
}

impl TileKernel for u16 {
    unsafe fn tile(
        kernel: Kernel,
        job: &Job<u16>,
        p0: usize,
        px: usize,
        nt: usize,
        input: &TileInput<u16>,
        dst: &mut [u16],
    ) {
        assert_eq!(
            kernel,
            Kernel::Bf16Avx512,
            "an f32 kernel with bf16 activations"
        );
        // SAFETY: the caller checked the kernel's instructions.
        unsafe { dispatch!(tile_bf16, job, p0, px, nt, input, dst; 1 2 3 4 5 6 7 8 9 10 11 12) }
    }

    fn amx_conv(
        conv: &PackedConv,
        weights: &[u16],
        input: (&Blocked<u16>, BlockSources, Option<&Blocked<u16>>),
        slope: Option<f32>,
        out: &mut Blocked<u16>,
    ) {
        amx_conv::run(conv, weights, input, slope, out)
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512bw")]
    #[inline]
    unsafe fn store16(job: &Job<u16>, q: usize, tile: usize, sums: __m512, dst: &mut [u16]) {
        let (lo, hi) = (job.offset(q, 2 * tile), job.offset(q, 2 * tile + 1));
        let mut v = sums;
        if let Some(r) = job.residual {
            // SAFETY: each slice holds the 8 bf16 of a block.
            let bits = unsafe {
                let r_lo = _mm_loadu_si128(r[lo..lo + LANES].as_ptr().cast());
                let r_hi = _mm_loadu_si128(r[hi..hi + LANES].as_ptr().cast());
                _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(r_lo), r_hi)
            };
            let r = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits));
            v = _mm512_add_ps(v, _mm512_castsi512_ps(r));
        }
        if let Some(s) = job.slope {
            v = _mm512_max_ps(v, _mm512_mul_ps(v, _mm512_set1_ps(s)));
        }
        let out = bf16_bits16(v);
        // SAFETY: as above.
        unsafe {
            _mm_storeu_si128(
                dst[lo..lo + LANES].as_mut_ptr().cast(),
                _mm256_castsi256_si128(out),
            );
            _mm_storeu_si128(
                dst[hi..hi + LANES].as_mut_ptr().cast(),
                _mm256_extracti128_si256::<1>(out),
            );
        }
    }
}

impl<E: Elem> Job<'_, E> {
    /// Where the 8 channels of output pixel `q` in block `block` of these output tiles are.
    fn offset(&self, q: usize, block: usize) -> usize {
        block * self.po.len() + self.po.at(q / self.po.w, q % self.po.w)
    }

    /// Fetches pixels `p0..p0 + px` (one run of a row) of `blocks` blocks of `planes` (laid
    /// out as these output tiles).
    fn prefetch_pixels(&self, planes: &[E], p0: usize, px: usize, blocks: usize) {
        for block in 0..blocks {
            let run = &planes[self.offset(p0, block)..][..px * LANES];
            for line in run.chunks(64 / size_of::<E>()) {
                // SAFETY: a prefetch of memory inside `planes`; it cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
            }
        }
    }

    /// The start of an AVX-512 register tile of `TW` pixels and `NT` output tiles: checks the
    /// lengths the kernel's loads rely on and returns the weights per output tile, the steps
    /// of 8 input channels, the input's first pixel and the sums started at the bias.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::type_complexity)]
    fn start512<const TW: usize, const NT: usize>(
        &self,
        input: &TileInput<E>,
    ) -> (usize, usize, *const E, [[__m512; NT]; TW]) {
        let tile_len = self.weights.len() / NT;
        let steps = tile_len / (LANES * OUT_TILE);
        assert!(self.bias.len() == NT * OUT_TILE && TW <= AVX512_PIXELS);
        let x = input.start(steps, TW);
        let bias: [__m512; NT] = std::array::from_fn(|t| unsafe {
            _mm512_loadu_ps(self.bias[t * OUT_TILE..][..OUT_TILE].as_ptr())
        });
        (tile_len, steps, x, [bias; TW])
    }

    /// Stores an AVX-512 register tile's sums for pixels `p0..p0 + TW`.
    #[target_feature(enable = "avx512f,avx512dq,avx512bw")]
    #[inline]
    fn finish512<const TW: usize, const NT: usize>(
        &self,
        p0: usize,
        acc: &[[__m512; NT]; TW],
        dst: &mut [E],
    ) {
        for (j, acc) in acc.iter().enumerate() {
            for (t, &a) in acc.iter().enumerate() {
                // SAFETY: this function's features.
                unsafe { E::store16(self, p0 + j, t, a, dst) };
            }
        }
    }
}

impl Job<'_, f32> {
    /// Stores 8 sums of output pixel `q` (plane offset of block `block` of these output
    /// tiles), adding the residual and applying the activation.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store(&self, q: usize, block: usize, sums: __m256, dst: &mut [f32]) {
        let o = self.offset(q, block);
        let mut v = sums;
        if let Some(r) = self.residual {
            v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(r[o..o + LANES].as_ptr()) });
        }
        if let Some(s) = self.slope {
            v = _mm256_max_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(s)));
        }
        unsafe { _mm256_storeu_ps(dst[o..o + LANES].as_mut_ptr(), v) };
    }

    /// One output tile (16 channels), pixels `p0..p0 + px` (`px <= 5`), AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(&self, p0: usize, px: usize, input: &TileInput<f32>, dst: &mut [f32]) {
        match px {
            1 => self.tile_avx2_n::<1>(p0, input, dst),
            2 => self.tile_avx2_n::<2>(p0, input, dst),
            3 => self.tile_avx2_n::<3>(p0, input, dst),
            4 => self.tile_avx2_n::<4>(p0, input, dst),
            _ => self.tile_avx2_n::<AVX2_PIXELS>(p0, input, dst),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn tile_avx2_n<const TW: usize>(&self, p0: usize, input: &TileInput<f32>, dst: &mut [f32]) {
        assert!(self.bias.len() == OUT_TILE);
        let x = input.start(self.weights.len() / (LANES * OUT_TILE), TW);
        let b0 = unsafe { _mm256_loadu_ps(self.bias.as_ptr()) };
        let b1 = unsafe { _mm256_loadu_ps(self.bias.as_ptr().add(LANES)) };
        let mut acc = [[b0, b1]; TW];
        for (wb, &offset) in self
            .weights
            .chunks_exact(LANES * OUT_TILE)
            .zip(input.offsets)
        {
            let w = wb.as_ptr();
            for ic in 0..LANES {
                // SAFETY: `w` holds 8 x 16 weights (the chunk), and the step `TW` x 8 values
                // (checked by `start`).
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_ps(w.add(ic * OUT_TILE)),
                        _mm256_loadu_ps(w.add(ic * OUT_TILE + LANES)),
                    )
                };
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = unsafe { _mm256_broadcast_ss(&*x.add(offset + j * LANES + ic)) };
                    a[0] = _mm256_fmadd_ps(w0, v, a[0]);
                    a[1] = _mm256_fmadd_ps(w1, v, a[1]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (block, &a) in acc.iter().enumerate() {
                self.store(p0 + j, block, a, dst);
            }
        }
    }

    /// `NT` output tiles (16 channels each), pixels `p0..p0 + TW`, AVX-512.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
    #[inline]
    fn tile_avx512<const TW: usize, const NT: usize>(
        &self,
        p0: usize,
        input: &TileInput<f32>,
        dst: &mut [f32],
    ) {
        let (tile_len, _, x, mut acc) = self.start512::<TW, NT>(input);
        let w = self.weights.as_ptr();
        for (step, &offset) in input.offsets.iter().enumerate() {
            for ic in 0..LANES {
                // SAFETY: within the lengths checked by `start512`: tile t's weights are
                // `tile_len` long, each step 8 x 16 of them and `TW` x 8 input values.
                let wv: [__m512; NT] = std::array::from_fn(|t| unsafe {
                    _mm512_loadu_ps(w.add(t * tile_len + (step * LANES + ic) * OUT_TILE))
                });
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = unsafe { _mm512_set1_ps(*x.add(offset + j * LANES + ic)) };
                    for (a, &wv) in a.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(wv, v, *a);
                    }
                }
            }
        }
        self.finish512(p0, &acc, dst);
    }
}

impl Job<'_, u16> {
    /// `NT` output tiles (16 channels each), pixels `p0..p0 + TW`, AVX-512 BF16: each
    /// `vdpbf16ps` adds two input channels' products to 16 f32 sums.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx512bf16")]
    #[inline]
    fn tile_bf16<const TW: usize, const NT: usize>(
        &self,
        p0: usize,
        input: &TileInput<u16>,
        dst: &mut [u16],
    ) {
        let (tile_len, steps, x, mut acc) = self.start512::<TW, NT>(input);
        let (w, offsets) = (self.weights.as_ptr(), input.offsets.as_ptr());
        // one flat loop over (step, pair): with the pair loop inside, LLVM unrolls it, hoists
        // its weight loads and spills sums to the stack
        for i in 0..steps * LANES / 2 {
            let (step, pair) = (i / (LANES / 2), i % (LANES / 2));
            // SAFETY: as in `tile_avx512`, with 4 pairs x 16 x 2 weights per step.
            let wv: [__m512bh; NT] = std::array::from_fn(|t| unsafe {
                let p = w.add(t * tile_len + i * 2 * OUT_TILE);
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast()))
            });
            for (j, a) in acc.iter_mut().enumerate() {
                let v = unsafe {
                    let p = x.add(*offsets.add(step) + j * LANES + 2 * pair);
                    let pair_bits = p.cast::<i32>().read_unaligned();
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair_bits))
                };
                for (a, &wv) in a.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, wv, v);
                }
            }
        }
        self.finish512(p0, &acc, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::{
        bf16_bits, bf16_bits16, conv_groups, conv_tasks, l2_bytes, row_tiles, weight_group_bytes,
        Kernel, Plane,
    };
    use std::arch::x86_64::*;

    #[test]
    fn vector_bf16_rounding_is_the_scalar_one() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("this CPU lacks AVX-512 F: the vector rounding is not tested here");
            return;
        }
        // ties to even both ways, the largest finite value (rounds to infinity), infinities,
        // zeros, a denormal, NaNs (quiet and signalling, each sign), and a sweep of bits
        let mut values: Vec<f32> = [0x3f80_8000u32, 0x3f81_8000, 0x3f80_7fff, 0x7f7f_ffff]
            .into_iter()
            .map(f32::from_bits)
            .chain([f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e-40, f32::NAN])
            .chain([0x7f80_0001u32, 0xffc0_0001].map(f32::from_bits))
            .collect();
        values.extend((0..4096u32).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
        values.resize(values.len().next_multiple_of(16), 1.0);
        for chunk in values.chunks_exact(16) {
            let mut got = [0u16; 16];
            // SAFETY: the CPU has AVX-512 F (checked above); both arrays hold 16 values.
            unsafe {
                let bits = bf16_bits16(_mm512_loadu_ps(chunk.as_ptr()));
                _mm256_storeu_si256(got.as_mut_ptr().cast(), bits);
            }
            let want: Vec<u16> = chunk.iter().map(|&v| bf16_bits(v)).collect();
            assert_eq!(got.as_slice(), want.as_slice(), "{chunk:?}");
        }
    }

    #[test]
    fn row_tiles_cover_each_row_once_in_even_tiles() {
        for (h, w, pix) in [
            (3, 56, 12),
            (2, 14, 12),
            (1, 7, 12),
            (4, 33, 12),
            (2, 1, 12),
            (3, 9, 5),
        ] {
            let tiles = row_tiles(Plane { h, w, lanes: 8 }, pix);
            let mut next = 0;
            for row in 0..h {
                let in_row: Vec<_> = tiles.iter().filter(|t| t.0 / w == row).collect();
                let widths: Vec<usize> = in_row.iter().map(|t| t.1).collect();
                let (lo, hi) = (widths.iter().min().unwrap(), widths.iter().max().unwrap());
                assert!(*hi <= pix && hi - lo <= 1, "{h}x{w}: row {row}: {widths:?}");
                for &&(p0, px) in &in_row {
                    assert_eq!(p0, next, "{h}x{w}: tiles not in order, or a gap");
                    assert!((p0 + px - 1) / w == row, "{h}x{w}: a tile across rows");
                    next += px;
                }
            }
            assert_eq!(next, h * w, "{h}x{w}: pixels not covered");
        }
        assert!(row_tiles(
            Plane {
                h: 0,
                w: 5,
                lanes: 8
            },
            12
        )
        .is_empty());
        assert!(row_tiles(
            Plane {
                h: 5,
                w: 0,
                lanes: 8
            },
            12
        )
        .is_empty());
    }

    #[test]
    fn conv_tasks_cover_the_output_once_group_by_group() {
        // 3 frames of 10 elements in groups of 4: the last group of each frame is short
        let mut out: Vec<u32> = (0..30).collect();
        let tasks = conv_tasks(&mut out, 10, 4);
        let order: Vec<(usize, usize)> = tasks.iter().map(|t| (t.0, t.1)).collect();
        let want: Vec<(usize, usize)> = (0..3).flat_map(|g| (0..3).map(move |f| (f, g))).collect();
        assert_eq!(
            order, want,
            "group by group, frames in order within a group"
        );
        for (frame, g, d) in tasks {
            let start = (frame * 10 + g * 4) as u32;
            let len = if g == 2 { 2 } else { 4 };
            assert_eq!(d, (start..start + len).collect::<Vec<_>>().as_slice());
        }
    }

    #[test]
    fn conv_groups_keep_every_thread_busy_and_each_groups_weights_in_l2() {
        let threads = rayon::current_num_threads();
        let mib = Some(1 << 20);
        for group_bytes in [mib, None] {
            // one frame: two tasks per thread, as far as the units go
            assert_eq!(conv_groups(1, 64, 1, group_bytes), (2 * threads).min(64));
            assert_eq!(conv_groups(1, 1, 1, group_bytes), 1);
            // many frames, small weights: one group
            assert_eq!(conv_groups(64 * threads, 64, 1 << 10, group_bytes), 1);
        }
        // 9.4 MB of weights (f32 3x3 512->512): groups of at most 1 MiB, or one without a size
        assert_eq!(conv_groups(64 * threads, 16, 9_437_184, mib), 9);
        assert_eq!(conv_groups(64 * threads, 16, 9_437_184, None), 1);
        // never more groups than units
        assert_eq!(conv_groups(64 * threads, 4, 9_437_184, mib), 4);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_l2_size_is_the_one_linux_reports() {
        // the weight groups' size follows it: check the C library's reading against the kernel's
        let dir = "/sys/devices/system/cpu/cpu0/cache/index2";
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
        assert_eq!(read("level").trim(), "2");
        let kib: usize = read("size")
            .trim()
            .strip_suffix('K')
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(l2_bytes(), Some(kib << 10));
        let want = (kib << 10 >= 2 << 20).then_some(kib << 9);
        assert_eq!(weight_group_bytes(), want);
    }

    #[test]
    fn bf16_weights_take_amx_where_it_runs() {
        let want = if Kernel::Bf16Amx.runs_here() {
            Kernel::Bf16Amx
        } else {
            Kernel::Bf16Avx512
        };
        match Kernel::for_dtype(candle_core::DType::BF16) {
            Ok(k) => assert_eq!(k, want),
            Err(_) => assert!(!Kernel::Bf16Avx512.runs_here()),
        }
    }
}
