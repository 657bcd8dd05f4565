//! The blocked-layout kernels of the CPU inference plan (x86-64 with AVX2 and FMA).
//!
//! Activations are [`Blocked`]: `[frames][C/8][H+2][W+2][8]`, the 8 channels of a pixel in one
//! 256-bit register, each plane framed by a one-pixel zero border that is the 3x3 convs'
//! padding. A convolution is a register tile of 5 output pixels x 16 output channels (10
//! accumulators) that takes, per input channel, two loads of pre-packed weights and 5
//! broadcasts from a panel: the tile's input pixels for every tap and channel, packed once per
//! task into a buffer that stays in L2 while every output tile of the task reads it. (With 6
//! pixels, 12 accumulators, LLVM spills one of them on every step: measured slower.) Bias, the
//! residual add, the leaky ReLU and the temporal shift are folded into that pass: the shift
//! only changes which frame the packing reads each input channel from.

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::ops::LEAKY_SLOPE;

/// Channels per block: one AVX register of f32.
pub(super) const LANES: usize = 8;
/// Output channels per register tile (two blocks).
pub(super) const OUT_TILE: usize = 16;
/// Output pixels per register tile.
const PIX_TILE: usize = 5;

/// Whether this CPU runs the kernels.
pub(super) fn supported() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Activations of `n` frames of `cb` channel blocks, `h x w`, in the blocked layout with a
/// zero border (see the module docs). Only the interior is data; the border is kept zero.
pub(super) struct Blocked {
    pub(super) n: usize,
    pub(super) cb: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// The arena's buffer: the activations are its first [`Blocked::len`] elements (a buffer
    /// serves larger activations at other points of the pass).
    pub(super) data: Vec<f32>,
    /// Where the buffer came from (the pass's arena).
    pub(super) slot: usize,
}

/// Sizes of a blocked plane (one channel block of one frame).
#[derive(Debug, Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
}

impl Plane {
    /// Row length with the border, in pixels.
    fn wp(self) -> usize {
        self.w + 2
    }

    fn len(self) -> usize {
        (self.h + 2) * self.wp() * LANES
    }

    /// Offset of interior pixel `(y, x)`.
    fn at(self, y: usize, x: usize) -> usize {
        ((y + 1) * self.wp() + x + 1) * LANES
    }

    /// Zeroes the border of `plane` (its interior is written by the producer).
    fn zero_border(self, plane: &mut [f32]) {
        let row = self.wp() * LANES;
        plane[..row].fill(0.0);
        plane[(self.h + 1) * row..].fill(0.0);
        for y in 1..=self.h {
            plane[y * row..y * row + LANES].fill(0.0);
            plane[(y + 1) * row - LANES..(y + 1) * row].fill(0.0);
        }
    }
}

impl Blocked {
    /// Elements of `n` frames of `cb` blocks of `h x w`.
    pub(super) fn len(n: usize, cb: usize, h: usize, w: usize) -> usize {
        n * cb * Plane { h, w }.len()
    }

    fn plane(&self) -> Plane {
        Plane {
            h: self.h,
            w: self.w,
        }
    }

    fn check(&self) {
        assert!(
            self.data.len() >= Self::len(self.n, self.cb, self.h, self.w),
            "blocked activations: buffer smaller than its sizes"
        );
    }

    /// The activations.
    fn buf(&self) -> &[f32] {
        &self.data[..Self::len(self.n, self.cb, self.h, self.w)]
    }

    fn buf_mut(&mut self) -> &mut [f32] {
        let len = Self::len(self.n, self.cb, self.h, self.w);
        &mut self.data[..len]
    }
}

/// `x [n, c, h, w]` (NCHW) into `out` (`n` frames, `c.div_ceil(8)` blocks, channels past `c`
/// zero).
pub(super) fn to_blocked(x: &[f32], c: usize, out: &mut Blocked) {
    out.check();
    let p = out.plane();
    let (cb, hw) = (out.cb, p.h * p.w);
    assert_eq!(x.len(), out.n * c * hw, "to_blocked: input size");
    out.buf_mut()
        .par_chunks_mut(p.len())
        .enumerate()
        .for_each(|(i, plane)| {
            let (frame, b) = (i / cb, i % cb);
            p.zero_border(plane);
            for y in 0..p.h {
                for xi in 0..p.w {
                    let px = &mut plane[p.at(y, xi)..][..LANES];
                    for (l, v) in px.iter_mut().enumerate() {
                        let ch = b * LANES + l;
                        *v = if ch < c {
                            x[(frame * c + ch) * hw + y * p.w + xi]
                        } else {
                            0.0
                        };
                    }
                }
            }
        });
}

/// The first `c` channels of `x` as NCHW `[n, c, h, w]`.
pub(super) fn from_blocked(x: &Blocked, c: usize) -> Vec<f32> {
    x.check();
    let p = x.plane();
    let hw = p.h * p.w;
    let mut out = vec![0.0; x.n * c * hw];
    if hw == 0 {
        return out;
    }
    out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
        let (frame, ch) = (i / c, i % c);
        let plane = &x.buf()[(frame * x.cb + ch / LANES) * p.len()..][..p.len()];
        for y in 0..p.h {
            for xi in 0..p.w {
                dst[y * p.w + xi] = plane[p.at(y, xi) + ch % LANES];
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
pub(super) fn max_pool3x3_s2(x: &Blocked, out: &mut Blocked) {
    assert!(out.h == max_pooled(x.h) && out.w == max_pooled(x.w));
    let window = |o: usize, n: usize| (2 * o).saturating_sub(1)..(2 * o + 2).min(n);
    let max = |m: f32, v: f32| if v > m { v } else { m };
    pool(x, out, window, f32::NEG_INFINITY, max, |m, _| m);
}

/// Paddle's `AvgPool2D(2, stride=2, ceil_mode=True)`, exclusive: a window on the last
/// row/column of an odd size averages the cells inside the image.
pub(super) fn avg_pool2x2_ceil(x: &Blocked, out: &mut Blocked) {
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
/// cells `window(oy, h) x window(ox, w)`, folded from `init` with `combine` per channel.
fn pool(
    x: &Blocked,
    out: &mut Blocked,
    window: impl Fn(usize, usize) -> std::ops::Range<usize> + Sync,
    init: f32,
    combine: impl Fn(f32, f32) -> f32 + Sync,
    finish: impl Fn(f32, usize) -> f32 + Sync,
) {
    x.check();
    out.check();
    assert_eq!(x.cb * x.n, out.cb * out.n, "pool: planes differ");
    let (pi, po) = (x.plane(), out.plane());
    out.buf_mut()
        .par_chunks_mut(po.len())
        .zip(x.buf().par_chunks(pi.len()))
        .for_each(|(dst, src)| {
            po.zero_border(dst);
            for oy in 0..po.h {
                let rows = window(oy, pi.h);
                for ox in 0..po.w {
                    let cols = window(ox, pi.w);
                    let mut acc = [init; LANES];
                    for y in rows.clone() {
                        for xi in cols.clone() {
                            for (a, &v) in acc.iter_mut().zip(&src[pi.at(y, xi)..][..LANES]) {
                                *a = combine(*a, v);
                            }
                        }
                    }
                    let cells = rows.len() * cols.len();
                    for (d, a) in dst[po.at(oy, ox)..][..LANES].iter_mut().zip(acc) {
                        *d = finish(a, cells);
                    }
                }
            }
        });
}

/// A convolution with its BN folded in, weights packed for the register tile:
/// `[cout/16][cin_blocks][k*k][8 input channels][16 output channels]`.
pub(super) struct PackedConv {
    pub(super) cin: usize,
    pub(super) cout: usize,
    pub(super) k: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
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
struct Source {
    frame: usize,
    block: usize,
    /// Lanes `lo..hi` of the block.
    lo: usize,
    hi: usize,
}

impl BlockSources {
    /// What output frame `frame` reads, for input blocks `0..cb` (a block that a fold boundary
    /// cuts is read in pieces).
    fn of(&self, frame: usize, cb: usize) -> Vec<Source> {
        let t = frame % self.num_seg;
        let folds = [
            (0, self.c1, t.checked_sub(1)),
            (self.c1, self.c2, Some(t + 1).filter(|&s| s < self.num_seg)),
            (self.c2, cb * LANES, Some(t)),
        ];
        let mut out = Vec::new();
        for block in 0..cb {
            let (b0, b1) = (block * LANES, (block + 1) * LANES);
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

impl PackedConv {
    /// Packs `w [cout, cin, k, k]` (row-major) and `bias [cout]`; `cout` must be a multiple of
    /// 16 (input channels are zero-padded to whole blocks).
    pub(super) fn new(w: &[f32], bias: &[f32], dims: [usize; 4], stride: usize) -> Self {
        let [cout, cin, k, k2] = dims;
        assert!(
            k == k2 && cout.is_multiple_of(OUT_TILE) && w.len() == cout * cin * k * k,
            "packed conv: unsupported weight {dims:?}"
        );
        assert_eq!(bias.len(), cout, "packed conv: bias length");
        let cb = cin.div_ceil(LANES);
        let kk = k * k;
        let mut weights = vec![0.0; cout / OUT_TILE * cb * kk * LANES * OUT_TILE];
        for (o, filter) in w.chunks_exact(cin * kk).enumerate() {
            let (ob, oc) = (o / OUT_TILE, o % OUT_TILE);
            for (c, taps) in filter.chunks_exact(kk).enumerate() {
                let (ib, ic) = (c / LANES, c % LANES);
                for (kp, &v) in taps.iter().enumerate() {
                    let i = (((ob * cb + ib) * kk + kp) * LANES + ic) * OUT_TILE + oc;
                    weights[i] = v;
                }
            }
        }
        Self {
            cin,
            cout,
            k,
            stride,
            pad: (k - 1) / 2,
            weights,
            bias: bias.to_vec(),
        }
    }

    /// Output size for an input of `n`.
    pub(super) fn out_size(&self, n: usize) -> usize {
        (n + 2 * self.pad - self.k) / self.stride + 1
    }

    /// `out = act(conv(x) + bias [+ residual])`, with `act` the leaky ReLU when `act`;
    /// `sources` (the temporal shift) says which frame each input block is read from.
    pub(super) fn run(
        &self,
        x: &Blocked,
        sources: Option<BlockSources>,
        residual: Option<&Blocked>,
        act: bool,
        out: &mut Blocked,
    ) {
        x.check();
        out.check();
        let (pi, po) = (x.plane(), out.plane());
        assert!(
            x.cb == self.cin.div_ceil(LANES)
                && out.cb * LANES == self.cout
                && out.n == x.n
                && po.h == self.out_size(pi.h)
                && po.w == self.out_size(pi.w)
                && self.pad <= 1,
            "packed conv: activations do not fit the conv"
        );
        if let Some(r) = residual {
            r.check();
            assert!(r.n == out.n && r.cb == out.cb && r.h == out.h && r.w == out.w);
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
        let obs = self.cout / OUT_TILE;
        // tasks: (frame, group of output tiles); enough of them to keep every thread busy
        let threads = rayon::current_num_threads();
        let groups = (2 * threads).div_ceil(x.n.max(1)).clamp(1, obs);
        let per_group = obs.div_ceil(groups);
        let frame_len = out.cb * po.len();
        let k = x.cb * self.k * self.k * LANES;
        let tiles_per_panel = (PANEL_BYTES / (k * PIX_TILE * 4)).max(1);
        let slope = act.then_some(LEAKY_SLOPE as f32);
        out.buf_mut()
            .par_chunks_mut(frame_len)
            .enumerate()
            .flat_map(|(frame, dst)| {
                dst.par_chunks_mut(per_group * 2 * po.len())
                    .enumerate()
                    .map(move |(g, dst)| (frame, g * per_group, dst))
            })
            .for_each(|(frame, ob0, dst)| {
                let reads = sources.of(frame, x.cb);
                let residual = residual
                    .map(|r| &r.buf()[frame * frame_len + ob0 * 2 * po.len()..][..dst.len()]);
                for plane in dst.chunks_exact_mut(po.len()) {
                    po.zero_border(plane);
                }
                let pixels = po.h * po.w;
                let tiles = pixels.div_ceil(PIX_TILE);
                with_panel(tiles_per_panel.min(tiles) * k * PIX_TILE, |panel| {
                    for t0 in (0..tiles).step_by(tiles_per_panel) {
                        let t1 = (t0 + tiles_per_panel).min(tiles);
                        for t in t0..t1 {
                            let tile = &mut panel[(t - t0) * k * PIX_TILE..][..k * PIX_TILE];
                            self.pack(x, &reads, t * PIX_TILE, pixels, (pi, po), tile);
                        }
                        for (i, out_tile) in dst.chunks_exact_mut(2 * po.len()).enumerate() {
                            let ob = ob0 + i;
                            let job = Job {
                                weights: &self.weights[ob * k * OUT_TILE..][..k * OUT_TILE],
                                bias: &self.bias[ob * OUT_TILE..][..OUT_TILE],
                                residual: residual.map(|r| &r[i * 2 * po.len()..][..2 * po.len()]),
                                slope,
                                po,
                            };
                            for t in t0..t1 {
                                let tile = &panel[(t - t0) * k * PIX_TILE..][..k * PIX_TILE];
                                // SAFETY: `supported()` is checked before a plan is built.
                                unsafe { job.tile(t * PIX_TILE, pixels, tile, out_tile) }
                            }
                        }
                    }
                });
            });
    }

    /// The panel of output pixels `p0..p0 + PIX_TILE` (fewer at the end): for each input
    /// block, tap and pixel, the 8 channels the conv multiplies, in the weights' order
    /// `[block][tap][pixel][8]`. Channels that the shift leaves empty are zeros.
    fn pack(
        &self,
        x: &Blocked,
        reads: &[Source],
        p0: usize,
        pixels: usize,
        (pi, po): (Plane, Plane),
        panel: &mut [f32],
    ) {
        let kk = self.k * self.k;
        let complete = reads.len() == x.cb && reads.iter().all(|r| (r.lo, r.hi) == (0, LANES));
        if !complete {
            // blocks or lanes the shift leaves empty (pixels past the end need no zeros: their
            // sums are never stored)
            panel.fill(0.0);
        }
        let npx = PIX_TILE.min(pixels - p0);
        let origin = 1 - self.pad;
        // offset in a plane of each pixel's tap (0, 0) (padded coordinates: the border is the
        // padding)
        let at: [usize; PIX_TILE] = std::array::from_fn(|j| {
            let q = (p0 + j).min(pixels - 1);
            let (oy, ox) = (q / po.w, q % po.w);
            ((oy * self.stride + origin) * pi.wp() + ox * self.stride + origin) * LANES
        });
        let taps = (0..self.k).flat_map(|kh| (0..self.k).map(move |kw| (kh, kw)));
        for r in reads {
            let plane = &x.buf()[(r.frame * x.cb + r.block) * pi.len()..][..pi.len()];
            let full = (r.lo, r.hi) == (0, LANES);
            for (tap, (kh, kw)) in taps.clone().enumerate() {
                let dst = &mut panel[(r.block * kk + tap) * PIX_TILE * LANES..][..PIX_TILE * LANES];
                let d = (kh * pi.wp() + kw) * LANES;
                for (px, &o) in dst.chunks_exact_mut(LANES).zip(&at).take(npx) {
                    let src = &plane[o + d..o + d + LANES];
                    if full {
                        // a fixed-size copy: two moves, not a call
                        px.copy_from_slice(src);
                    } else {
                        px[r.lo..r.hi].copy_from_slice(&src[r.lo..r.hi]);
                    }
                }
            }
        }
    }
}

/// Bytes of a task's packed input panel: a few tiles, so that the panel and one output tile's
/// weights stay in a core's L2 while every output tile of the task reuses the panel.
const PANEL_BYTES: usize = 160 << 10;

/// Runs `f` on this thread's panel buffer of `len` elements (kept between calls).
fn with_panel<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PANEL.with(|p| match p.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // in use further up this thread's stack (rayon ran another task here while waiting)
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// One output tile (16 channels, both blocks) of a task.
struct Job<'a> {
    /// `[k][16]`, in the panel's order.
    weights: &'a [f32],
    bias: &'a [f32],
    /// The residual's two planes for this output tile.
    residual: Option<&'a [f32]>,
    slope: Option<f32>,
    po: Plane,
}

impl Job<'_> {
    /// Output pixels `p0..p0 + PIX_TILE` (fewer at the end) from their panel, into `dst` (the two
    /// output planes).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(&self, p0: usize, pixels: usize, panel: &[f32], dst: &mut [f32]) {
        match pixels - p0 {
            1 => self.tile_n::<1>(p0, panel, dst),
            2 => self.tile_n::<2>(p0, panel, dst),
            3 => self.tile_n::<3>(p0, panel, dst),
            4 => self.tile_n::<4>(p0, panel, dst),
            _ => self.tile_n::<PIX_TILE>(p0, panel, dst),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn tile_n<const TW: usize>(&self, p0: usize, panel: &[f32], dst: &mut [f32]) {
        let k = self.weights.len() / OUT_TILE;
        assert!(panel.len() >= k * PIX_TILE && self.bias.len() == OUT_TILE);
        let b0 = unsafe { _mm256_loadu_ps(self.bias.as_ptr()) };
        let b1 = unsafe { _mm256_loadu_ps(self.bias.as_ptr().add(LANES)) };
        let mut acc = [[b0, b1]; TW];
        for (wb, xb) in self
            .weights
            .chunks_exact(LANES * OUT_TILE)
            .zip(panel.chunks_exact(LANES * PIX_TILE))
        {
            let (w, x) = (wb.as_ptr(), xb.as_ptr());
            for ic in 0..LANES {
                // SAFETY: `w` holds 8 x 16 weights and `x` PIX_TILE x 8 values (the zips' chunks).
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_ps(w.add(ic * OUT_TILE)),
                        _mm256_loadu_ps(w.add(ic * OUT_TILE + LANES)),
                    )
                };
                for (j, a) in acc.iter_mut().enumerate() {
                    let v = unsafe { _mm256_broadcast_ss(&*x.add(j * LANES + ic)) };
                    a[0] = _mm256_fmadd_ps(w0, v, a[0]);
                    a[1] = _mm256_fmadd_ps(w1, v, a[1]);
                }
            }
        }
        let plane = self.po.len();
        for (j, acc) in acc.iter().enumerate() {
            let q = p0 + j;
            let at = self.po.at(q / self.po.w, q % self.po.w);
            for (half, &a) in acc.iter().enumerate() {
                let o = half * plane + at;
                let mut v = a;
                if let Some(r) = self.residual {
                    v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(r[o..o + LANES].as_ptr()) });
                }
                if let Some(s) = self.slope {
                    v = _mm256_max_ps(v, _mm256_mul_ps(v, _mm256_set1_ps(s)));
                }
                unsafe { _mm256_storeu_ps(dst[o..o + LANES].as_mut_ptr(), v) };
            }
        }
    }
}
