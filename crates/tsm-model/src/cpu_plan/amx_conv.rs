//! The plan's convolution on AMX tiles (`Kernel::Bf16Amx`).
//!
//! Activations are blocked as for the other kernels, but in blocks of 32 bf16 channels
//! ([`AMX_LANES`]): one pixel's channels of a block are one 64-byte tile row. A tile of A is
//! then 16 pixels read straight from the activations, rows `stride x 64` bytes apart, with no
//! packing: for stride 1 the 16 pixels run on through the right border into the next row
//! (a row of the padded plane is `w + 2` pixels, so every tap is one offset for the whole tile,
//! as in oneDNN's brgemm), for stride 2 a tile is up to 16 pixels of one output row. Rows that
//! land on the border or past the last pixel are computed and never stored. A tile of B is
//! the weights of 16 output channels for the tile's 32 input channels and one tap, pair
//! interleaved as `tdpbf16ps` reads them; the register tile is 2 x 2 of these 16 x 16 sums,
//! so each step loads four tiles for four products. A block that the temporal shift reads from
//! more than one frame is one step per frame, with the weights of the other channels zeroed.
//! The f32 sums start at the bias and are stored once per register tile, with the residual and
//! the activation, rounded to bf16.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::kernels::{
    bf16_bits, conv_groups, conv_tasks, weight_group_bytes, BlockSources, Blocked, PackedConv,
    Plane, Source, AMX_LANES,
};
use crate::amx::Tiles;

/// Pixels (rows) per tile of A and of sums.
pub(super) const TILE_ROWS: usize = 16;
/// Output channels per tile of B and of sums.
const TILE_COLS: usize = 16;
/// Elements of one tile of B: 16 pairs of input channels x 16 output channels x 2.
const B_TILE: usize = AMX_LANES * TILE_COLS;
/// Bytes of input that the register tiles of a task's chunk read, so that the chunk stays in
/// L2 while every output block of the task passes over it.
const CHUNK_BYTES: usize = 256 << 10;

/// `w [cout, cin, k, k]` as tiles of B: `[cout / 16][cin / 32][k * k][16 pairs][16][2]`, input
/// channels past `cin` zero.
pub(super) fn pack_weights(w: &[f32], [cout, cin, k, _]: [usize; 4]) -> Vec<u16> {
    let (cb, kk) = (cin.div_ceil(AMX_LANES), k * k);
    let mut out = vec![0; cout / TILE_COLS * cb * kk * B_TILE];
    for (o, filter) in w.chunks_exact(cin * kk).enumerate() {
        let (ot, oc) = (o / TILE_COLS, o % TILE_COLS);
        for (c, taps) in filter.chunks_exact(kk).enumerate() {
            let (b, l) = (c / AMX_LANES, c % AMX_LANES);
            for (tap, &v) in taps.iter().enumerate() {
                let tile = ((ot * cb + b) * kk + tap) * B_TILE;
                out[tile + (l / 2) * 2 * TILE_COLS + oc * 2 + l % 2] = bf16_bits(v);
            }
        }
    }
    out
}

/// A tile of 16 output pixels: where its first pixel's tap (0, 0) is in an input plane, where
/// the pixel is in the output plane (pixels, padded), and which of its rows are pixels.
#[derive(Debug, Clone, Copy)]
struct PixelTile {
    input: usize,
    output: usize,
    valid: u16,
}

/// One step of a register tile: where its A tiles start in the input (less the pixel tile's
/// offset), and its two B tiles.
struct Step {
    input: usize,
    b: [*const u16; 2],
}

/// `out = act(conv(x) + bias [+ residual])` (see [`PackedConv::run`], which checked the
/// sizes) on AMX; `weights` as [`pack_weights`] packs them.
pub(super) fn run(
    conv: &PackedConv,
    weights: &[u16],
    (x, sources, residual): (&Blocked<u16>, BlockSources, Option<&Blocked<u16>>),
    slope: Option<f32>,
    out: &mut Blocked<u16>,
) {
    let (pi, po) = (x.plane(), out.plane());
    let kk = conv.k * conv.k;
    let tile_len = x.cb * kk * B_TILE;
    assert!(
        weights.len() == conv.cout / TILE_COLS * tile_len && conv.bias.len() == conv.cout,
        "AMX conv: packed weights"
    );
    let tiles = pixel_tiles(conv, pi, po);
    let origin = 1 - conv.pad;
    let taps: Vec<usize> = (0..conv.k)
        .flat_map(|kh| (0..conv.k).map(move |kw| (kh, kw)))
        .map(|(kh, kw)| ((kh + origin) * pi.wp() + kw + origin) * AMX_LANES)
        .collect();
    // every tile row that any step reads lies inside the buffer (past the activations, in
    // the values `Blocked::read_past` keeps for this)
    let row_step = conv.stride * AMX_LANES;
    let last_read = (x.n * x.cb).saturating_sub(1) * pi.len()
        + taps.iter().max().unwrap_or(&0)
        + tiles.iter().map(|t| t.input).max().unwrap_or(0)
        + (TILE_ROWS - 1) * row_step
        + AMX_LANES;
    assert!(
        last_read <= x.data.len(),
        "AMX conv: tiles read past the buffer"
    );
    // tasks: (frame, group of 32-channel output blocks)
    let groups = conv_groups(x.n, out.cb, size_of_val(weights), weight_group_bytes());
    let per_group = out.cb.div_ceil(groups);
    let chunk_pairs = (CHUNK_BYTES / (2 * TILE_ROWS * x.cb * AMX_LANES * 2 * conv.k)).max(1);
    let frame_len = out.cb * po.len();
    let data = x.data.as_slice();
    conv_tasks(out.buf_mut(), frame_len, per_group * po.len())
        .into_par_iter()
        .for_each(|(frame, g, dst)| {
            let b0 = g * per_group;
            for plane in dst.chunks_exact_mut(po.len()) {
                po.zero_border(plane);
            }
            let nb = dst.len() / po.len();
            let reads = sources.of(frame, x.cb, AMX_LANES);
            let masked = masked_weights(weights, &reads, (b0, nb), (tile_len, kk));
            // the steps of each output block of the task
            let steps: Vec<Vec<Step>> = (b0..b0 + nb)
                .map(|b| {
                    let mut partial = 0;
                    let mut steps = Vec::new();
                    for r in &reads {
                        let plane = (r.frame * x.cb + r.block) * pi.len();
                        let whole = (r.lo, r.hi) == (0, AMX_LANES);
                        for (tap, &at) in taps.iter().enumerate() {
                            let b_tile = |t: usize| -> *const u16 {
                                let tile = if whole {
                                    &weights
                                        [(2 * b + t) * tile_len + (r.block * kk + tap) * B_TILE..]
                                } else {
                                    let i = ((partial * nb + b - b0) * 2 + t) * kk + tap;
                                    &masked[i * B_TILE..]
                                };
                                tile[..B_TILE].as_ptr()
                            };
                            steps.push(Step {
                                input: plane + at,
                                b: [b_tile(0), b_tile(1)],
                            });
                        }
                        partial += usize::from(!whole);
                    }
                    steps
                })
                .collect();
            let _tiles = Tiles::configure();
            // written whole by each register tile before it is read
            let mut sums = [0f32; 2 * TILE_ROWS * AMX_LANES];
            for chunk in tiles.chunks(2 * chunk_pairs) {
                for (j, (steps, plane)) in
                    steps.iter().zip(dst.chunks_exact_mut(po.len())).enumerate()
                {
                    let b = b0 + j;
                    let bias = &conv.bias[b * AMX_LANES..][..AMX_LANES];
                    let res =
                        residual.map(|r| &r.buf()[(frame * r.cb + b) * po.len()..][..po.len()]);
                    for pair in chunk.chunks_exact(2) {
                        // SAFETY: every step's tile rows lie in `data` (asserted above), its B
                        // tiles are whole tiles of `weights` or `masked`, and the tiles are
                        // configured on this thread.
                        unsafe {
                            register_tile(
                                data,
                                [pair[0].input, pair[1].input],
                                row_step,
                                (bias, steps),
                                &mut sums,
                            )
                        };
                        // SAFETY: the plan's kernel runs here, so AVX-512 BF16 does.
                        unsafe { store([pair[0], pair[1]], &sums, res, slope, plane) };
                    }
                }
            }
        });
}

/// The output plane's pixel tiles, an even number of them (the last repeated with no rows
/// to store): stride 1 runs across the padded rows, other strides tile each output row.
fn pixel_tiles(conv: &PackedConv, pi: Plane, po: Plane) -> Vec<PixelTile> {
    let mut tiles = Vec::new();
    if po.h > 0 && po.w > 0 {
        if conv.stride == 1 {
            // output (oy, ox) is pixel q = oy * wp + ox of the run; q with ox >= w is border
            let (wp, end) = (po.wp(), (po.h - 1) * po.wp() + po.w);
            for q0 in (0..end).step_by(TILE_ROWS) {
                let valid = (0..TILE_ROWS)
                    .filter(|r| q0 + r < end && (q0 + r) % wp < po.w)
                    .fold(0u16, |m, r| m | 1 << r);
                tiles.push(PixelTile {
                    input: q0 * AMX_LANES,
                    output: q0 + wp + 1,
                    valid,
                });
            }
        } else {
            let s = conv.stride;
            for oy in 0..po.h {
                for ox0 in (0..po.w).step_by(TILE_ROWS) {
                    let rows = TILE_ROWS.min(po.w - ox0);
                    tiles.push(PixelTile {
                        input: (s * oy * pi.wp() + s * ox0) * AMX_LANES,
                        output: (oy + 1) * po.wp() + ox0 + 1,
                        valid: ((1u32 << rows) - 1) as u16,
                    });
                }
            }
        }
    }
    if let Some(&last) = tiles.last().filter(|_| tiles.len() % 2 == 1) {
        tiles.push(PixelTile { valid: 0, ..last });
    }
    tiles
}

/// For each read of part of a block (in `reads`' order), the B tiles of output blocks
/// `b0..b0 + nb` with the weights of the channels it does not supply zeroed:
/// `[partial read][block][2 tiles][k * k][B_TILE]`.
fn masked_weights(
    weights: &[u16],
    reads: &[Source],
    (b0, nb): (usize, usize),
    (tile_len, kk): (usize, usize),
) -> Vec<u16> {
    let mut out = Vec::new();
    for r in reads.iter().filter(|r| (r.lo, r.hi) != (0, AMX_LANES)) {
        for t in 2 * b0..2 * (b0 + nb) {
            let taps = &weights[t * tile_len + r.block * kk * B_TILE..][..kk * B_TILE];
            out.extend(taps.iter().enumerate().map(|(i, &v)| {
                // element i of a tile: pair i / 32, channel 2 * pair + i % 2
                let lane = (i % B_TILE) / (2 * TILE_COLS) * 2 + i % 2;
                if (r.lo..r.hi).contains(&lane) {
                    v
                } else {
                    0
                }
            }));
        }
    }
    out
}

/// The 32 x 32 sums of two pixel tiles (A at `data[step.input + input[m]..]`, rows `row_step`
/// elements apart) and one output block (the steps' two B tiles), started at the block's 32
/// biases, into `sums` (`[32][32]`).
///
/// # Safety
/// Every tile row read lies inside `data`, each B pointer starts a whole tile, and the tiles
/// are configured on this thread.
unsafe fn register_tile(
    data: &[u16],
    input: [usize; 2],
    row_step: usize,
    (bias, steps): (&[f32], &[Step]),
    sums: &mut [f32; 2 * TILE_ROWS * AMX_LANES],
) {
    assert!(bias.len() == AMX_LANES);
    let x = data.as_ptr();
    let stride = row_step * 2;
    // SAFETY: the caller's contract. The tiles keep their contents between the blocks: the
    // compiler never uses them, and the OS saves them with the thread.
    unsafe {
        // every row of the sums their 32 biases
        crate::amx::load_sums(bias.as_ptr(), 0);
        for s in steps {
            std::arch::asm!(
                // each load just before its first product: the tiles are not renamed, so a
                // load waits for the products reading its tile; this order overlaps the
                // loads with the products before them
                "tileloadd tmm4, [{a0} + {s}]",
                "tileloadd tmm6, [{b0} + {s64}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {s64}]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {s}]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) x.add(s.input + input[0]),
                a1 = in(reg) x.add(s.input + input[1]),
                b0 = in(reg) s.b[0],
                b1 = in(reg) s.b[1],
                s = in(reg) stride,
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        crate::amx::store_sums(sums.as_mut_ptr(), AMX_LANES);
    }
}

/// Stores the valid rows of a register tile's sums into the output plane `dst`, with the
/// residual (its plane `residual`) and the activation, rounded to bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn store(
    tiles: [PixelTile; 2],
    sums: &[f32; 2 * TILE_ROWS * AMX_LANES],
    residual: Option<&[u16]>,
    slope: Option<f32>,
    dst: &mut [u16],
) {
    for (m, tile) in tiles.iter().enumerate() {
        for r in (0..TILE_ROWS).filter(|r| tile.valid & 1 << r != 0) {
            let o = (tile.output + r) * AMX_LANES;
            let row = &sums[(m * TILE_ROWS + r) * AMX_LANES..][..AMX_LANES];
            let out = &mut dst[o..][..AMX_LANES];
            // SAFETY: `row`, the residual's pixel and `out` are checked slices of 32 values.
            unsafe {
                let mut v = [
                    _mm512_loadu_ps(row.as_ptr()),
                    _mm512_loadu_ps(row[TILE_COLS..].as_ptr()),
                ];
                if let Some(res) = residual {
                    let bits = _mm512_loadu_si512(res[o..][..AMX_LANES].as_ptr().cast());
                    let halves = [
                        _mm512_castsi512_si256(bits),
                        _mm512_extracti64x4_epi64::<1>(bits),
                    ];
                    for (v, h) in v.iter_mut().zip(halves) {
                        let r = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h));
                        *v = _mm512_add_ps(*v, _mm512_castsi512_ps(r));
                    }
                }
                if let Some(s) = slope {
                    for v in &mut v {
                        *v = _mm512_max_ps(*v, _mm512_mul_ps(*v, _mm512_set1_ps(s)));
                    }
                }
                // the pixel's 32 channels in one store; to nearest even as `bf16_bits`, but
                // denormals become zeros
                let bits =
                    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(v[1], v[0]));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), bits);
            }
        }
    }
}
