//! The matrix products of the CPU convolutions: in f32 by the `gemm` crate (the kernels
//! candle-core already builds), or, for mixed-precision training, with both operands rounded to
//! bf16 and their products summed in f32, on AMX tiles (`tdpbf16ps`) where the CPU has them and
//! by AVX512_BF16's `vdpbf16ps` elsewhere.
//!
//! The bf16 product is hand-written because no maintained Rust crate has one: `gemm` runs f16
//! by converting it to f32, and the C libraries that do (oneDNN, OpenBLAS's `sbgemm`) would
//! bring a second BLAS into the build for one routine. It is a plain Goto-style GEMM: the
//! operands are rounded as they are packed (so the f32 im2col is never copied to bf16 first),
//! into panels that hold each pair of `k` values next to each other, the layout both
//! instructions read; a register tile of f32 sums (12 x 32 in vectors, 32 x 32 in four AMX
//! tiles) then takes one pair of `k` (AVX-512) or 16 pairs (AMX) per instruction.

use gemm::Parallelism;

/// The precision of the convolutions' products. Activations, gradients, weights and the
/// optimizer stay f32 in both: `Bf16` rounds each conv's two operands to bf16 as it multiplies
/// them and sums the products in f32, as PyTorch's CPU autocast does for convolutions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProductPrecision {
    /// f32 products, as in every other op.
    #[default]
    F32,
    /// bf16 operands, f32 sums.
    Bf16,
}

/// A row-major matrix view: `rows x cols` with row stride `rs` and column stride `cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rows: usize,
    pub(super) cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A contiguous `rows x cols` matrix.
    pub(super) fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Rows `r` of this matrix.
    pub(super) fn row_range(self, r: std::ops::Range<usize>) -> Self {
        Self {
            data: &self.data[(r.start * self.rs).min(self.data.len())..],
            rows: r.len(),
            ..self
        }
    }

    /// Columns `c` of this matrix.
    pub(super) fn col_range(self, c: std::ops::Range<usize>) -> Self {
        self.t().row_range(c).t()
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }

    /// The same view of other data (the same elements, typed as what they are).
    #[cfg(target_arch = "x86_64")]
    fn with_data<U>(&self, data: &'a [U]) -> Mat<'a, U> {
        Mat {
            data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    #[cfg(test)]
    fn at(&self, r: usize, c: usize) -> T
    where
        T: Copy,
    {
        self.data[r * self.rs + c * self.cs]
    }
}

/// The element types the products run in: f32 may take the bf16 products, f64 never does.
pub(super) trait GemmElem: candle_core::WithDType {
    /// `self` as f32 data, when it is.
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl GemmElem for f32 {
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
}

impl GemmElem for f64 {
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// The left operand of a product: for bf16 products, packed once (a conv's weights serve every
/// frame's product).
pub(super) struct Lhs<'a, T> {
    mat: Mat<'a, T>,
    #[cfg(target_arch = "x86_64")]
    packed: Option<bf16::Packed>,
}

impl<'a, T: GemmElem> Lhs<'a, T> {
    /// `mat`, packed when `products` is bf16 and the data f32 (the caller has checked the CPU).
    pub(super) fn new(mat: Mat<'a, T>, products: ProductPrecision) -> Self {
        #[cfg(target_arch = "x86_64")]
        let packed = match (products, T::as_f32(mat.data)) {
            (ProductPrecision::Bf16, Some(data)) => {
                let kernel = bf16::Kernel::best().expect("bf16 products on a CPU without them");
                Some(bf16::Packed::new(mat.with_data(data), kernel))
            }
            _ => None,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = products;
        Self {
            mat,
            #[cfg(target_arch = "x86_64")]
            packed,
        }
    }
}

/// `dst[a.rows, b.cols] (+)= a @ b` into rows `dst_rs` apart; accumulates when `acc`. Products
/// in bf16 when `a` was packed for them.
pub(super) fn matmul_strided<T: GemmElem>(
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    a: &Lhs<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    let (m, k, n) = (a.mat.rows, a.mat.cols, b.cols);
    assert!(
        a.mat.fits()
            && b.fits()
            && b.rows == k
            && dst_rs >= n
            && (m == 0 || n == 0 || dst.len() >= (m - 1) * dst_rs + n),
        "conv2d gemm: operand sizes do not match"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(T::zero());
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(packed), Some(bd), Some(dst)) = (&a.packed, T::as_f32(b.data), T::as_f32_mut(dst))
    {
        let b = b.with_data(bd);
        let threads = match par {
            Parallelism::Rayon(t) => t.max(1),
            _ => 1,
        };
        return bf16::matmul(dst, dst_rs, acc, packed, b, threads);
    }
    let a = a.mat;
    // SAFETY: `fits` and the length check above keep every index gemm forms inside the slices;
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// `a @ b` summed in f64, from the operands rounded to bf16 when `products` says so: the
/// reference the tests hold every kernel to.
#[cfg(test)]
fn matmul_reference(a: Mat<f32>, b: Mat<f32>, products: ProductPrecision) -> Vec<f64> {
    let round = |v: f32| match products {
        ProductPrecision::F32 => v as f64,
        ProductPrecision::Bf16 => half::bf16::from_f32(v).to_f64(),
    };
    let mut out = vec![0.0; a.rows * b.cols];
    for i in 0..a.rows {
        for j in 0..b.cols {
            out[i * b.cols + j] = (0..a.cols)
                .map(|p| round(a.at(i, p)) * round(b.at(p, j)))
                .sum();
        }
    }
    out
}

/// Whether this CPU runs the bf16 products.
pub(crate) fn bf16_products_run_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    return bf16::Kernel::best().is_some();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod bf16 {
    use super::Mat;
    use rayon::prelude::*;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    /// Columns per register tile: two vectors (or two AMX tiles) of 16 sums.
    const NR: usize = 32;
    /// Columns per packed B block (at most 512 KiB, in L2).
    const NC: usize = 512;

    /// The instructions that multiply the pairs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Kernel {
        /// AVX512_BF16's `vdpbf16ps`: 16 sums of two products per instruction, in registers.
        Avx512,
        /// AMX's `tdpbf16ps` (Sapphire Rapids on): a 16 x 16 tile of sums of 32 products per
        /// instruction (3.3 TFLOP/s a core in a loop on the Xeon the bench ran on, where this
        /// GEMM's vector kernel reached 0.09).
        Amx,
    }

    impl Kernel {
        /// Both, fastest first.
        pub(super) const ALL: [Kernel; 2] = [Kernel::Amx, Kernel::Avx512];

        /// The fastest kernel this CPU (and OS) runs.
        pub(super) fn best() -> Option<Kernel> {
            Self::ALL.into_iter().find(|k| k.runs_here())
        }

        pub(super) fn runs_here(self) -> bool {
            let avx512 = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16");
            match self {
                Kernel::Avx512 => avx512,
                Kernel::Amx => avx512 && crate::amx::usable(),
            }
        }

        /// Rows of `dst` per register tile.
        fn mr(self) -> usize {
            match self {
                Kernel::Avx512 => 12,
                Kernel::Amx => 32,
            }
        }

        /// `k` per packed block: the A and B panels of one block stay in L1 (L2 for AMX, whose
        /// tile loads are wide enough).
        fn kc(self) -> usize {
            match self {
                Kernel::Avx512 => 256,
                Kernel::Amx => 512,
            }
        }

        /// Rows of A per block that one B panel meets in turn (in L2).
        fn mc(self) -> usize {
            self.mr() * 8
        }

        /// `k` pairs of a block, padded to whole AMX tiles of 16 pairs.
        fn pairs(self, kc: usize) -> usize {
            match self {
                Kernel::Avx512 => kc.div_ceil(2),
                Kernel::Amx => kc.div_ceil(32) * 16,
            }
        }
    }

    /// A left operand, all of it packed for `kernel`: for each `kc` block of its columns, its
    /// `mr`-row panels of bf16 pairs (zeros past its ends): `[k pair][mr]` for AVX-512 (one
    /// pair per row broadcast at a time), `[16 pairs][mr][16]` for AMX (tile rows of 16 pairs).
    pub(super) struct Packed {
        data: Vec<u32>,
        rows: usize,
        cols: usize,
        kernel: Kernel,
    }

    impl Packed {
        pub(super) fn new(a: Mat<f32>, kernel: Kernel) -> Self {
            assert!(
                kernel.runs_here(),
                "bf16 products: {kernel:?} does not run here"
            );
            let (mr, kc_max) = (kernel.mr(), kernel.kc());
            let panels = a.rows.div_ceil(mr);
            let blocks: usize = (0..a.cols)
                .step_by(kc_max)
                .map(|pc| kernel.pairs(kc_max.min(a.cols - pc)))
                .sum();
            let mut data = vec![0; panels * mr * blocks];
            for pc in (0..a.cols).step_by(kc_max) {
                let kc = kc_max.min(a.cols - pc);
                for ip in 0..panels {
                    let r0 = ip * mr;
                    let at = Self::offset(kernel, panels, pc, kc, ip);
                    let src = &a.data[r0 * a.rs + pc * a.cs..];
                    let out = &mut data[at..at + kernel.pairs(kc) * mr];
                    let valid = mr.min(a.rows - r0);
                    // SAFETY: the CPU has the features (asserted above).
                    unsafe {
                        match kernel {
                            Kernel::Avx512 => pack_panel::<12>(src, a.rs, a.cs, valid, kc, out),
                            Kernel::Amx => pack_tile_rows::<32>(src, a.rs, a.cs, valid, kc, out),
                        }
                    }
                }
            }
            Self {
                data,
                rows: a.rows,
                cols: a.cols,
                kernel,
            }
        }

        /// Where panel `ip` of the block of columns `pc..pc + kc` starts (every block before
        /// it is a full `kc`).
        fn offset(kernel: Kernel, panels: usize, pc: usize, kc: usize, ip: usize) -> usize {
            let mr = kernel.mr();
            panels * mr * (pc / kernel.kc()) * kernel.pairs(kernel.kc())
                + ip * kernel.pairs(kc) * mr
        }

        fn panel(&self, pc: usize, kc: usize, ip: usize) -> &[u32] {
            let (k, mr) = (self.kernel, self.kernel.mr());
            let at = Self::offset(k, self.rows.div_ceil(mr), pc, kc, ip);
            &self.data[at..at + k.pairs(kc) * mr]
        }
    }

    /// `dst (+)= a @ b` with bf16 products; `threads` split the rows.
    pub(super) fn matmul(
        dst: &mut [f32],
        dst_rs: usize,
        acc: bool,
        a: &Packed,
        b: Mat<f32>,
        threads: usize,
    ) {
        assert!(a.cols == b.rows, "bf16 product: operand sizes do not match");
        let per = a.rows.div_ceil(threads).next_multiple_of(a.kernel.mr());
        if threads == 1 || per >= a.rows {
            // SAFETY: `a` was packed on a CPU with the features.
            return unsafe { matmul_rows(dst, dst_rs, acc, a, 0..a.rows, b) };
        }
        let mut parts = Vec::new();
        let mut rest = dst;
        for r0 in (0..a.rows).step_by(per) {
            let rows = r0..(r0 + per).min(a.rows);
            let take = if rows.end == a.rows {
                rest.len()
            } else {
                rows.len() * dst_rs
            };
            let (head, tail) = rest.split_at_mut(take);
            parts.push((head, rows));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(dst, rows)| {
            // SAFETY: as above, on this part's rows.
            unsafe { matmul_rows(dst, dst_rs, acc, a, rows, b) }
        });
    }

    thread_local! {
        /// This thread's packed B block, kept across calls.
        static PACKED_B: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// [`matmul`] of rows `rows` (starting at a panel) into `dst`, whose first row is
    /// `rows.start`, on this thread.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn matmul_rows(
        dst: &mut [f32],
        dst_rs: usize,
        acc: bool,
        a: &Packed,
        rows: std::ops::Range<usize>,
        b: Mat<f32>,
    ) {
        let (k, n, kernel) = (a.cols, b.cols, a.kernel);
        let (mr, mc, kc_max) = (kernel.mr(), kernel.mc(), kernel.kc());
        let _tiles = (kernel == Kernel::Amx).then(crate::amx::Tiles::configure);
        PACKED_B.with(|p| {
            let mut guard = p.try_borrow_mut();
            let mut own = Vec::new();
            // in use further up this thread's stack only if rayon nested two products here
            let pb = match &mut guard {
                Ok(g) => &mut **g,
                Err(_) => &mut own,
            };
            for jc in (0..n).step_by(NC) {
                let nc = NC.min(n - jc);
                for pc in (0..k).step_by(kc_max) {
                    let kc = kc_max.min(k - pc);
                    let kp = kernel.pairs(kc);
                    let panels = nc.div_ceil(NR);
                    let len = panels * kp * NR;
                    if pb.len() < len {
                        pb.resize(len, 0);
                    }
                    let pb = &mut pb[..len];
                    for (jp, out) in pb.chunks_exact_mut(kp * NR).enumerate() {
                        let j0 = jc + jp * NR;
                        let src = &b.data[pc * b.rs + j0 * b.cs..];
                        pack_panel::<NR>(src, b.cs, b.rs, NR.min(n - j0), kc, out);
                    }
                    for ic in rows.clone().step_by(mc) {
                        let block = ic..(ic + mc).min(rows.end);
                        for jp in 0..panels {
                            let cols = NR.min(nc - jp * NR);
                            let bp = &pb[jp * kp * NR..][..kp * NR];
                            for r0 in block.clone().step_by(mr) {
                                let tile_rows = mr.min(block.end - r0);
                                let ap = a.panel(pc, kc, r0 / mr);
                                let c0 = (r0 - rows.start) * dst_rs + jc + jp * NR;
                                // the last row of the tile ends inside `dst`
                                let c = &mut dst[c0..c0 + (tile_rows - 1) * dst_rs + cols];
                                let acc = acc || pc > 0;
                                match kernel {
                                    Kernel::Avx512 => {
                                        tile(kp, ap, bp, c, dst_rs, tile_rows, cols, acc)
                                    }
                                    Kernel::Amx => {
                                        amx::tile(kp, ap, bp, c, dst_rs, tile_rows, cols, acc)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
    }

    /// Packs rows of 16 pairs for AMX tiles: `[16 pairs][W rows][16]` (zeros past the ends) from
    /// the source whose element `(r, k)` is `src[r * sr + k * sk]`, for rows `r < valid` and
    /// `k < kc`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_tile_rows<const W: usize>(
        src: &[f32],
        sr: usize,
        sk: usize,
        valid: usize,
        kc: usize,
        out: &mut [u32],
    ) {
        let steps = kc.div_ceil(32);
        assert!(valid <= W && out.len() >= steps * W * 16);
        assert!(valid == 0 || kc == 0 || (valid - 1) * sr + (kc - 1) * sk < src.len());
        if sk == 1 {
            for r in 0..valid {
                for s in 0..steps {
                    let k0 = 32 * s;
                    // SAFETY: the run `k0..k0 + nk <= kc` of row `r < valid` is inside `src`
                    // (asserted above); the store writes 16 values inside `out`.
                    unsafe {
                        let pairs = run_pairs(src.as_ptr().add(r * sr + k0), (kc - k0).min(32));
                        _mm512_storeu_si512(out.as_mut_ptr().add((s * W + r) * 16).cast(), pairs);
                    }
                }
            }
            return;
        }
        if sr == 1 {
            // the weights' transpose (the input gradient's left operand): 16 pairs of 16 rows
            // side by side, transposed in registers to the rows' 16 pairs (one pair at a time,
            // it was a serial pass over every weight, a tenth of a bf16 conv backward)
            for h in (0..valid).step_by(16) {
                let n = (valid - h).min(16);
                for s in 0..steps {
                    let mut v = [_mm512_setzero_si512(); 16];
                    for (j, v) in v.iter_mut().enumerate() {
                        let p = 16 * s + j;
                        if 2 * p < kc {
                            // SAFETY: rows `h..h + n <= valid` and `k < kc` (asserted above)
                            *v = unsafe { rows_pair(src.as_ptr().add(h), sk, n, p, kc) };
                        }
                    }
                    transpose_16x16(&mut v);
                    for (r, v) in v.iter().enumerate().take(n) {
                        // SAFETY: row `h + r < valid <= W` of step `s < steps`, inside `out`
                        unsafe {
                            let to = out.as_mut_ptr().add((s * W + h + r) * 16);
                            _mm512_storeu_si512(to.cast(), *v)
                        }
                    }
                }
            }
            return;
        }
        for p in 0..kc.div_ceil(2) {
            for r in 0..valid {
                out[((p / 16) * W + r) * 16 + p % 16] = scalar_pair(src, r * sr, sk, p, kc);
            }
        }
    }

    /// Lanes `0..n` (at most 16) of a mask.
    #[inline]
    fn lanes(n: usize) -> u16 {
        (1u32 << n.min(16)).wrapping_sub(1) as u16
    }

    /// The 16 bf16 pairs of the `nk <= 32` consecutive values at `run`, zeros past them.
    ///
    /// # Safety
    /// `run` points at `nk` readable f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn run_pairs(run: *const f32, nk: usize) -> __m512i {
        // SAFETY: the masks enable only the caller's `nk` values.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(lanes(nk), run);
            let hi = _mm512_maskz_loadu_ps(lanes(nk.saturating_sub(16)), run.add(16));
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
        }
    }

    /// Pair `p` (values `2p` and `2p + 1`, the second zero past `kc`) of each of the `n <= 16`
    /// rows at `rows`, which lie side by side with their `k` values `sk` apart: one pair per
    /// 32-bit lane, zeros past `n`. Two k's 16 rows become 16 pairs in three instructions.
    ///
    /// # Safety
    /// `rows[r + k * sk]` is readable for `r < n` and `k < kc`, `2p < kc`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    #[inline]
    unsafe fn rows_pair(rows: *const f32, sk: usize, n: usize, p: usize, kc: usize) -> __m512i {
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        // SAFETY: the masks enable only rows `r < n` of the caller's `k < kc`.
        let load = |k: usize| unsafe { _mm512_maskz_loadu_ps(lanes(n), rows.add(k * sk)) };
        let lo = load(2 * p);
        let hi = if 2 * p + 1 < kc {
            load(2 * p + 1)
        } else {
            _mm512_setzero_ps()
        };
        // bf16 lanes: 16 of k = 2p, then 16 of 2p + 1
        let two = _mm512_cvtne2ps_pbh(hi, lo);
        // SAFETY: a plain reinterpretation of 512 bits.
        let two = unsafe { std::mem::transmute::<__m512bh, __m512i>(two) };
        _mm512_permutexvar_epi16(interleave, two)
    }

    /// `v[i][j]` (32-bit lanes) becomes `v[j][i]`: pairs within 128-bit lanes, then 4 x 4 blocks
    /// of 128-bit lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose_16x16(v: &mut [__m512i; 16]) {
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
        }
        // s[4i + q]: in 128-bit lane l, column 4l + q of rows 4i..4i + 4
        let mut s = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            s[4 * i] = _mm512_unpacklo_epi64(a, c);
            s[4 * i + 1] = _mm512_unpackhi_epi64(a, c);
            s[4 * i + 2] = _mm512_unpacklo_epi64(b, d);
            s[4 * i + 3] = _mm512_unpackhi_epi64(b, d);
        }
        for q in 0..4 {
            let x = [s[q], s[4 + q], s[8 + q], s[12 + q]];
            let p0 = _mm512_shuffle_i32x4::<0x44>(x[0], x[1]);
            let p1 = _mm512_shuffle_i32x4::<0xEE>(x[0], x[1]);
            let p2 = _mm512_shuffle_i32x4::<0x44>(x[2], x[3]);
            let p3 = _mm512_shuffle_i32x4::<0xEE>(x[2], x[3]);
            v[q] = _mm512_shuffle_i32x4::<0x88>(p0, p2);
            v[4 + q] = _mm512_shuffle_i32x4::<0xDD>(p0, p2);
            v[8 + q] = _mm512_shuffle_i32x4::<0x88>(p1, p3);
            v[12 + q] = _mm512_shuffle_i32x4::<0xDD>(p1, p3);
        }
    }

    /// Pair `p` (values `2p` and `2p + 1`, the second zero past `kc`) of the run at
    /// `src[at]` whose values are `sk` apart, as bf16 bits.
    #[inline]
    fn scalar_pair(src: &[f32], at: usize, sk: usize, p: usize, kc: usize) -> u32 {
        let bits = |k: usize| half::bf16::from_f32(src[at + k * sk]).to_bits() as u32;
        let hi = if 2 * p + 1 < kc { bits(2 * p + 1) } else { 0 };
        bits(2 * p) | hi << 16
    }

    /// Packs a panel `[k pair][W]` of bf16 pairs (zeros past the ends, and on to the end of
    /// `out`: AMX's pairs are whole tiles of 16) from the source whose element `(r, k)` is
    /// `src[r * sr + k * sk]`, for rows `r < valid` and `k < kc`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn pack_panel<const W: usize>(
        src: &[f32],
        sr: usize,
        sk: usize,
        valid: usize,
        kc: usize,
        out: &mut [u32],
    ) {
        let kp = kc.div_ceil(2);
        assert!(valid <= W && out.len() >= kp * W);
        // what the rows below do not write: the rows past `valid`, and AMX's padding pairs
        if valid < W {
            out.fill(0);
        } else {
            out[kp * W..].fill(0);
        }
        assert!(valid == 0 || kc == 0 || (valid - 1) * sr + (kc - 1) * sk < src.len());
        // SAFETY (loads): every enabled lane reads an element `(r < valid, k < kc)` of the
        // source, inside `src` (asserted above); (stores): inside `out`'s `kp * W` values.
        if sr == 1 {
            for p in 0..kp {
                for h in (0..valid).step_by(16) {
                    let n = (valid - h).min(16);
                    let pairs = unsafe { rows_pair(src.as_ptr().add(h), sk, n, p, kc) };
                    unsafe {
                        let to = out.as_mut_ptr().add(p * W + h);
                        _mm512_mask_storeu_epi32(to.cast(), lanes(W - h), pairs)
                    };
                }
            }
        } else if sk == 1 {
            // each row's k's side by side (the weight gradient's operands, whose k is the
            // pixels): 16 rows' 16 pairs converted, then transposed in registers to 16 pairs'
            // 16 rows, stored as vectors instead of one pair at a time
            for h in (0..valid).step_by(16) {
                let n = (valid - h).min(16);
                for p0 in (0..kp).step_by(16) {
                    let k0 = 2 * p0;
                    let mut v = [_mm512_setzero_si512(); 16];
                    for (r, v) in v.iter_mut().enumerate().take(n) {
                        // SAFETY: the values `k0..kc` (at most 32 read) of row `h + r < valid`
                        // are inside `src` (asserted above)
                        *v = unsafe {
                            run_pairs(src.as_ptr().add((h + r) * sr + k0), (kc - k0).min(32))
                        };
                    }
                    transpose_16x16(&mut v);
                    for (j, v) in v.iter().enumerate().take(kp - p0) {
                        // SAFETY: the mask keeps the store inside row `p0 + j < kp` of `out`
                        unsafe {
                            let to = out.as_mut_ptr().add((p0 + j) * W + h);
                            _mm512_mask_storeu_epi32(to.cast(), lanes(W - h), *v)
                        };
                    }
                }
            }
        } else {
            for r in 0..valid {
                for p in 0..kp {
                    out[p * W + r] = scalar_pair(src, r * sr, sk, p, kc);
                }
            }
        }
    }

    /// `c (+)= A panel @ B panel` for the top-left `rows x cols` of one `12 x NR` tile, `c`'s
    /// rows `rs` apart; adds to `c` when `acc`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn tile(
        kp: usize,
        ap: &[u32],
        bp: &[u32],
        c: &mut [f32],
        rs: usize,
        rows: usize,
        cols: usize,
        acc: bool,
    ) {
        const MR: usize = 12;
        assert!(ap.len() >= kp * MR && bp.len() >= kp * NR);
        let mut sums = [[_mm512_setzero_ps(); 2]; MR];
        let (a, b) = (ap.as_ptr(), bp.as_ptr());
        for p in 0..kp {
            // SAFETY: `p < kp`, inside both panels (asserted above).
            let (b0, b1): (__m512bh, __m512bh) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        b.add(p * NR).cast(),
                    )),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        b.add(p * NR + 16).cast(),
                    )),
                )
            };
            for (r, s) in sums.iter_mut().enumerate() {
                let av: __m512bh =
                    unsafe { std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32)) };
                s[0] = _mm512_dpbf16_ps(s[0], av, b0);
                s[1] = _mm512_dpbf16_ps(s[1], av, b1);
            }
        }
        for (r, s) in sums.iter().enumerate().take(rows) {
            for (h, &v) in s.iter().enumerate() {
                let n = cols.saturating_sub(16 * h).min(16);
                if n == 0 {
                    continue;
                }
                let mask = (1u32 << n).wrapping_sub(1) as u16;
                // SAFETY: `c` holds `rows - 1` rows of `rs` then `cols` values (the caller's
                // slice), and `mask` enables only the first `n <= cols - 16 * h` of this half.
                unsafe {
                    let p = c.as_mut_ptr().add(r * rs + 16 * h);
                    let v = if acc {
                        _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p))
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(p, mask, v);
                }
            }
        }
    }

    /// AMX's 32 x 32 tile (the tiles configured by [`crate::amx::Tiles`]).
    mod amx {
        use super::NR;

        /// [`super::tile`] for a `32 x 32` tile: four 16 x 16 sums in tiles 0-3, A's two row
        /// halves in 4-5, B's two column halves in 6-7, 16 pairs of `k` per step. A whole tile
        /// loads and stores its sums in `c` itself; one cut by the matrix's edge goes through a
        /// buffer.
        #[allow(clippy::too_many_arguments)]
        pub(super) fn tile(
            kp: usize,
            ap: &[u32],
            bp: &[u32],
            c: &mut [f32],
            rs: usize,
            rows: usize,
            cols: usize,
            acc: bool,
        ) {
            assert!(kp.is_multiple_of(16) && ap.len() >= kp * MR && bp.len() >= kp * NR);
            assert!(rows <= MR && cols <= NR && c.len() >= (rows - 1) * rs + cols);
            if rows == MR && cols == NR {
                // SAFETY: `c` holds 32 rows of `rs` with 32 values each (asserted).
                return unsafe { sums_in_place(kp, ap, bp, c.as_mut_ptr(), rs, acc) };
            }
            let mut sums = [0f32; MR * NR];
            if acc {
                for (r, row) in sums.chunks_exact_mut(NR).enumerate().take(rows) {
                    row[..cols].copy_from_slice(&c[r * rs..r * rs + cols]);
                }
            }
            // SAFETY: `sums` is 32 rows of 32.
            unsafe { sums_in_place(kp, ap, bp, sums.as_mut_ptr(), NR, acc) };
            for (r, row) in sums.chunks_exact(NR).enumerate().take(rows) {
                c[r * rs..r * rs + cols].copy_from_slice(&row[..cols]);
            }
        }

        const MR: usize = 32;

        /// The 32 x 32 sums at `c` (rows `rs` apart), started from what is there when `acc`.
        ///
        /// # Safety
        /// `c` points at 32 rows of `rs` f32 with 32 valid values each; `ap` and `bp` hold
        /// `kp` pairs of their panels (`kp` a multiple of 16); the tiles are configured on this
        /// thread.
        unsafe fn sums_in_place(
            kp: usize,
            ap: &[u32],
            bp: &[u32],
            c: *mut f32,
            rs: usize,
            acc: bool,
        ) {
            // SAFETY: the caller's contract; each step reads 2 KiB of `ap` (32 rows of 16
            // pairs) and 2 KiB of `bp` (16 pairs of 32 columns).
            unsafe {
                if acc {
                    crate::amx::load_sums(c, rs);
                } else {
                    std::arch::asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                }
                if kp > 0 {
                    std::arch::asm!(
                        // each load just before its first product, as in `cpu_plan`'s AMX
                        // conv: the tiles are not renamed
                        "2:",
                        "tileloadd tmm4, [{a} + {s64}]",
                        "tileloadd tmm6, [{b} + {s128}]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b} + {s128} + 64]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a} + {s64} + 1024]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {a}, 2048",
                        "add {b}, 2048",
                        "dec {n}",
                        "jnz 2b",
                        a = inout(reg) ap.as_ptr() => _,
                        b = inout(reg) bp.as_ptr() => _,
                        n = inout(reg) kp / 16 => _,
                        s64 = in(reg) 64usize,
                        s128 = in(reg) 128usize,
                        options(nostack, readonly),
                    );
                }
                crate::amx::store_sums(c, rs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The kernels this CPU runs, each a way to compute `dst (+)= a @ b`.
    #[allow(clippy::type_complexity)]
    fn kernels() -> Vec<(
        String,
        ProductPrecision,
        Box<dyn Fn(&mut [f32], usize, bool, Mat<f32>, Mat<f32>, Parallelism)>,
    )> {
        let mut out: Vec<(
            String,
            _,
            Box<dyn Fn(&mut [f32], usize, bool, Mat<f32>, Mat<f32>, Parallelism)>,
        )> = vec![(
            "f32".into(),
            ProductPrecision::F32,
            Box::new(|dst, rs, acc, a, b, par| {
                matmul_strided(dst, rs, acc, &Lhs::new(a, ProductPrecision::F32), b, par)
            }),
        )];
        #[cfg(target_arch = "x86_64")]
        for kernel in bf16::Kernel::ALL {
            if !kernel.runs_here() {
                eprintln!("this CPU lacks bf16 kernel {kernel:?}: not checked here");
                continue;
            }
            out.push((
                format!("bf16 {kernel:?}"),
                ProductPrecision::Bf16,
                Box::new(move |dst, rs, acc, a, b, par| {
                    let threads = if let Parallelism::Rayon(t) = par {
                        t
                    } else {
                        1
                    };
                    bf16::matmul(dst, rs, acc, &bf16::Packed::new(a, kernel), b, threads)
                }),
            ));
        }
        out
    }

    /// Every kernel against the f64 sums of the (rounded) operands, on sizes that cross every
    /// block edge, with transposed operands (as the conv backward passes them), neither
    /// stride 1, a row stride above the width, accumulation, and two threads.
    #[test]
    fn products_match_the_f64_sums_of_their_rounded_operands() {
        let kernels = kernels();
        for (m, k, n) in [
            (1, 1, 1),
            (13, 3, 33),
            (97, 257, 65),
            (12, 512, 2050),
            (200, 27, 17),
            (300, 1100, 70),
        ] {
            // A as it is, transposed, or with neither stride 1; B as it is or transposed
            for (ta, tb) in [(0, false), (1, false), (0, true), (2, false)] {
                let (ad, bd) = (random(m * k * 4, 1), random(k * n, 2));
                let a = match ta {
                    0 => Mat::new(&ad, m, k),
                    1 => Mat::new(&ad[..m * k], k, m).t(),
                    _ => Mat {
                        data: &ad,
                        rows: m,
                        cols: k,
                        rs: 2 * k + 1,
                        cs: 2,
                    },
                };
                let b = if tb {
                    Mat::new(&bd, n, k).t()
                } else {
                    Mat::new(&bd, k, n)
                };
                for (name, products, run) in &kernels {
                    let want = matmul_reference(a, b, *products);
                    for (acc, par) in [(false, Parallelism::None), (true, Parallelism::Rayon(2))] {
                        let rs = n + 3;
                        let start = random(m * rs, 3);
                        let mut dst = start.clone();
                        run(&mut dst, rs, acc, a, b, par);
                        for i in 0..m {
                            for j in 0..n {
                                let base = if acc { start[i * rs + j] as f64 } else { 0.0 };
                                let (got, want) = (dst[i * rs + j] as f64, base + want[i * n + j]);
                                // f32 sums of k exact products
                                let tol = 1e-6 * (k as f64).sqrt() * 4.0 + 1e-6;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{name} {m}x{k}x{n} a{ta} b{tb} acc {acc} at ({i},{j}): \
                                     {got} vs {want}"
                                );
                            }
                            // the padding between rows is untouched
                            for j in n..rs.min(dst.len() - i * rs) {
                                assert_eq!(dst[i * rs + j], start[i * rs + j]);
                            }
                        }
                    }
                }
            }
        }
    }
}
