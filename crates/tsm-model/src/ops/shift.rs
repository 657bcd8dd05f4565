//! Paddle's temporal shift: a fold of channels from the previous frame, a fold from the next.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::timing::{timed, OpKind};

/// Paddle's channel split for a shift ratio: `(int(C*ratio), int(C*2*ratio))`, computed in f32
/// as Paddle's kernel does.
pub(crate) fn shift_folds(channels: usize, ratio: f64) -> (usize, usize) {
    let r = ratio as f32;
    let c = channels as f32;
    ((c * r) as usize, (c * 2.0 * r) as usize)
}

/// The op: forward, or (`reverse`) the opposite shift, which is the forward's gradient. f32,
/// f64, f16 and bf16, on the CPU (one copy per plane) and on CUDA (`kernels/temporal_shift.cu`).
#[derive(Debug, Clone, Copy)]
struct TemporalShift {
    num_seg: usize,
    ratio: f64,
    reverse: bool,
}

impl TemporalShift {
    fn run<T: WithDType>(&self, src: &[T], dims: &[usize]) -> Vec<T> {
        let (nt, c, hw) = (dims[0], dims[1], dims[2] * dims[3]);
        let spec = ShiftSpec::new(self.num_seg, self.ratio, c);
        let mut dst = vec![T::zero(); nt * c * hw];
        if hw == 0 {
            return dst;
        }
        dst.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let (frame, ch) = (plane / c, plane % c);
            if let Some(src_frame) = spec.source_frame(frame, ch, self.reverse) {
                let start = (src_frame * c + ch) * hw;
                out.copy_from_slice(&src[start..start + hw]);
            }
        });
        dst
    }
}

/// Where the shift reads each channel from, for `C` channels: what the ops that apply the
/// shift as they read their input (the convolution) need of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShiftSpec {
    num_seg: usize,
    ratio: f64,
    c1: usize,
    c2: usize,
}

impl ShiftSpec {
    pub(crate) fn new(num_seg: usize, ratio: f64, channels: usize) -> Self {
        let (c1, c2) = shift_folds(channels, ratio);
        Self {
            num_seg,
            ratio,
            c1,
            c2,
        }
    }

    /// The frame whose channel `ch` becomes channel `ch` of `frame` (frames are `[N*T]`, clips
    /// of `num_seg`), `None` where that leaves the clip (zeros); `reverse`: the opposite shift.
    pub(crate) fn source_frame(&self, frame: usize, ch: usize, reverse: bool) -> Option<usize> {
        let back = if ch < self.c1 {
            Some(true)
        } else if ch < self.c2 {
            Some(false)
        } else {
            None
        };
        let t = frame % self.num_seg;
        match back.map(|b| b != reverse) {
            None => Some(frame),
            Some(true) => (t > 0).then(|| frame - 1),
            Some(false) => (t + 1 < self.num_seg).then_some(frame + 1),
        }
    }

    /// The shift applied to `x` (the op, on any device).
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        temporal_shift(x, self.num_seg, self.ratio)
    }

    /// Frames per clip: frames move only inside their clip.
    pub(crate) fn num_seg(&self) -> usize {
        self.num_seg
    }

    /// The runs of channels `0..channels` that each come from one frame: read from the frame
    /// before, from the frame after, and in place.
    pub(crate) fn runs(&self, channels: usize) -> [std::ops::Range<usize>; 3] {
        [0..self.c1, self.c1..self.c2, self.c2..channels]
    }
}

/// The most words one kernel launch covers: its index arithmetic is 32-bit, exact below 2^31
/// (`TsmFastDiv`); larger tensors are shifted in several launches of whole clips.
#[cfg(any(test, feature = "cuda"))]
const MAX_LAUNCH_WORDS: usize = (1 << 31) - 1;

/// `n / d` for `n < 2^31` as the kernel computes it: `TsmFastDiv` in
/// `kernels/temporal_shift.cuh` (same fields, same order).
#[cfg(any(test, feature = "cuda"))]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FastDiv {
    d: u32,
    m: u32,
    s: u32,
}

#[cfg(any(test, feature = "cuda"))]
impl FastDiv {
    /// `d` in `1..=2^31`.
    fn new(d: u32) -> Self {
        debug_assert!((1..=1 << 31).contains(&d), "FastDiv of {d}");
        let s = 32 - (d - 1).leading_zeros();
        let m = ((1u64 << 32) * ((1u64 << s) - u64::from(d))) / u64::from(d) + 1;
        // m < 2^32 for every d up to 2^31
        Self { d, m: m as u32, s }
    }
}

/// One kernel launch's arguments: `TsmShiftIndex` in `kernels/temporal_shift.cuh`.
#[cfg(any(test, feature = "cuda"))]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ShiftIndex {
    words: u32,
    plane: FastDiv,
    channels: FastDiv,
    num_seg: FastDiv,
    c1: u32,
    c2: u32,
    reverse: u32,
}

/// How the kernel shifts a contiguous `[N*T, C, H, W]` tensor: the access width and the
/// launches, each a run of whole clips (the shift never crosses a clip).
#[cfg(any(test, feature = "cuda"))]
#[derive(Debug, Clone, Copy)]
struct ShiftLaunches {
    /// Bytes per access: the widest of 16, 8, 4, 2 that divides a plane's bytes and the
    /// operand's byte offset (allocations themselves are 256-byte aligned).
    word_bytes: usize,
    elem_bytes: usize,
    clips: usize,
    clip_words: usize,
    clips_per_launch: usize,
    index: ShiftIndex,
}

#[cfg(any(test, feature = "cuda"))]
impl ShiftLaunches {
    fn new(
        op: &TemporalShift,
        dims: &[usize],
        elem_bytes: usize,
        offset: usize,
        max_words: usize,
    ) -> Result<Self> {
        let &[nt, c, h, w] = dims else {
            candle_core::bail!("temporal_shift: expected [N*T, C, H, W], got {dims:?}")
        };
        let t = op.num_seg;
        if t == 0 || !nt.is_multiple_of(t) {
            candle_core::bail!(
                "temporal_shift: batch dimension {nt} is not a multiple of num_seg {t}"
            )
        }
        let plane_bytes = h * w * elem_bytes;
        let word_bytes = [16, 8, 4, 2]
            .into_iter()
            .find(|&b| {
                b >= elem_bytes
                    && plane_bytes.is_multiple_of(b)
                    && (offset * elem_bytes).is_multiple_of(b)
            })
            .unwrap_or(elem_bytes);
        let plane = plane_bytes / word_bytes;
        let clip_words = t * c * plane;
        if clip_words > max_words {
            candle_core::bail!(
                "temporal_shift: one clip of {dims:?} is {clip_words} words, over the kernel's \
                 {max_words}"
            )
        }
        let (c1, c2) = shift_folds(c, op.ratio);
        let div = |n: usize| FastDiv::new(n.max(1) as u32);
        Ok(Self {
            word_bytes,
            elem_bytes,
            clips: nt / t,
            clip_words,
            clips_per_launch: max_words.checked_div(clip_words).unwrap_or(1),
            index: ShiftIndex {
                words: 0,
                plane: div(plane),
                channels: div(c),
                num_seg: div(t),
                c1: c1 as u32,
                c2: c2 as u32,
                reverse: op.reverse.into(),
            },
        })
    }

    /// Each launch: its element range of the tensor and its arguments.
    fn launches(&self) -> impl Iterator<Item = (std::ops::Range<usize>, ShiftIndex)> + '_ {
        let elems_per_word = self.word_bytes / self.elem_bytes;
        (0..self.clips)
            .step_by(self.clips_per_launch)
            .map(move |first| {
                let n = self.clips_per_launch.min(self.clips - first);
                let words = n * self.clip_words;
                let start = first * self.clip_words * elems_per_word;
                let index = ShiftIndex {
                    words: words as u32,
                    ..self.index
                };
                (start..start + words * elems_per_word, index)
            })
            .filter(|(_, index)| index.words > 0)
    }

    /// The kernel for this word size (`kernels/temporal_shift.cu`).
    #[cfg(feature = "cuda")]
    fn kernel(&self) -> &'static str {
        match self.word_bytes {
            16 => "temporal_shift_w16",
            8 => "temporal_shift_w8",
            4 => "temporal_shift_w4",
            _ => "temporal_shift_w2",
        }
    }
}

#[cfg(feature = "cuda")]
mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

// SAFETY: `ShiftIndex` is `repr(C)` plain data with the layout of the kernel's `TsmShiftIndex`.
#[cfg(feature = "cuda")]
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for ShiftIndex {}

#[cfg(feature = "cuda")]
impl candle_core::cuda_backend::Map1 for TemporalShift {
    fn f<T>(
        &self,
        src: &candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        dev: &candle_core::CudaDevice,
        layout: &Layout,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<T>>
    where
        T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
            + WithDType
            + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
    {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        const BLOCK: u32 = 256;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("temporal_shift: input must be contiguous")
        };
        let plan = ShiftLaunches::new(
            self,
            layout.dims(),
            T::DTYPE.size_in_bytes(),
            start,
            MAX_LAUNCH_WORDS,
        )?;
        // SAFETY: every element is written by the launches below (each covers its range).
        let mut out = unsafe { dev.alloc::<T>(end - start)? };
        let func =
            dev.get_or_load_custom_func(plan.kernel(), "tsm_temporal_shift", ptx::TEMPORAL_SHIFT)?;
        for (range, index) in plan.launches() {
            let src = src.slice(start + range.start..start + range.end);
            let mut dst = out.slice_mut(range);
            let cfg = LaunchConfig {
                grid_dim: (index.words.div_ceil(BLOCK), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut launch = func.builder();
            launch.arg(&src).arg(&mut dst).arg(&index);
            // SAFETY: the arguments are the kernel's (pointers to `words` words each, then
            // `TsmShiftIndex`), and it reads only inside the clips of its range.
            unsafe { launch.launch(cfg) }.w()?;
        }
        Ok(out)
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::Map1;
        use candle_core::DType;
        if !matches!(
            s.dtype(),
            DType::F32 | DType::F64 | DType::F16 | DType::BF16
        ) {
            candle_core::bail!("temporal_shift: only f32, f64, f16 and bf16 are supported")
        }
        let slice = self.map(&s.slice, &s.device, l)?;
        let out = CudaStorage {
            slice,
            device: s.device.clone(),
        };
        Ok((out, l.shape().clone()))
    }

    // Without CUDA there are no CUDA tensors: candle's stand-in storage is never built.
    #[cfg(not(feature = "cuda"))]
    fn cuda_fwd(&self, _s: &CudaStorage, _l: &Layout) -> Result<(CudaStorage, Shape)> {
        candle_core::bail!("temporal_shift: this build has no CUDA")
    }

    // The opposite shift, on every device: no reference gradient needed.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = TemporalShift {
            reverse: !self.reverse,
            ..*self
        };
        timed(OpKind::Shift, grad_res.device(), || {
            Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
        })
    }
}

pub(super) fn check_shift_args(x: &Tensor, num_seg: usize, ratio: f64) -> Result<()> {
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
/// One pass over memory for f32, f64, f16 and bf16, on the CPU and on CUDA (this crate's own
/// kernel, `kernels/temporal_shift.cu`).
pub fn temporal_shift(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    let op = TemporalShift {
        num_seg,
        ratio,
        reverse: false,
    };
    timed(OpKind::Shift, x.device(), || x.contiguous()?.apply_op1(op))
}

/// The same shift from `narrow`/`cat`/zero padding: slow, the reference for tests.
#[cfg(test)]
pub(crate) fn temporal_shift_reference(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    let (nt, c, h, w) = x.dims4()?;
    let (c1, c2) = shift_folds(c, ratio);
    let x5 = x.reshape((nt / num_seg, num_seg, c, h, w))?;
    let mut parts = Vec::new();
    if c1 > 0 {
        parts.push(shifted(&x5.narrow(2, 0, c1)?, true)?);
    }
    if c2 > c1 {
        parts.push(shifted(&x5.narrow(2, c1, c2 - c1)?, false)?);
    }
    if c > c2 {
        parts.push(x5.narrow(2, c2, c - c2)?);
    }
    Tensor::cat(&parts, 2)?.reshape((nt, c, h, w))
}

/// Every frame `t` of every clip of `x5 [N, T, ...]` taken from frame `t - 1` (`back`) or
/// `t + 1`, zeros where that leaves the clip.
#[cfg(test)]
fn shifted(x5: &Tensor, back: bool) -> Result<Tensor> {
    let t = x5.dim(1)?;
    if back {
        // from t-1: drop the last frame, pad a zero frame in front
        x5.narrow(1, 0, t - 1)?.pad_with_zeros(1, 1, 0)
    } else {
        // from t+1: drop the first frame, pad a zero frame at the end
        x5.narrow(1, 1, t - 1)?.pad_with_zeros(1, 0, 1)
    }
}

/// The CUDA kernel's index arithmetic (`kernels/temporal_shift.cuh`, compiled as host C by the
/// build script) against the CPU op, on every machine: the kernel itself runs only on a GPU.
#[cfg(test)]
mod kernel_index_tests {
    use super::*;
    use candle_core::{DType, Device, Storage};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[link(name = "tsm_shift_index_host", kind = "static")]
    unsafe extern "C" {
        fn tsm_shift_words_host(p: *const ShiftIndex, src: *const u8, dst: *mut u8, word: u32);
        fn tsm_div_host(f: FastDiv, n: u32) -> u32;
    }

    fn div_host(f: FastDiv, n: u32) -> u32 {
        // SAFETY: plain data in, plain data out.
        unsafe { tsm_div_host(f, n) }
    }

    #[test]
    fn fast_division_is_exact_below_2_pow_31() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut divisors = vec![
            1,
            2,
            3,
            5,
            7,
            8,
            49,
            196,
            784,
            3136,
            (1 << 30) + 1,
            (1 << 31) - 1,
            1 << 31,
        ];
        divisors.extend((0..200).map(|_| rng.random_range(1..=1u32 << 31)));
        divisors.extend((0..200).map(|_| rng.random_range(1..5000)));
        for d in divisors {
            let f = FastDiv::new(d);
            let max = (1u32 << 31) - 1;
            let mut ns = vec![0, 1, d - 1, d.min(max), (d + 1).min(max), max, max - 1];
            ns.extend((0..500).map(|_| rng.random_range(0..=max)));
            ns.extend((0..50).map(|_| rng.random_range(0..=max / d) * d));
            for n in ns {
                assert_eq!(div_host(f, n), n / d, "{n} / {d} with {f:?}");
            }
        }
    }

    fn raw<T: Copy>(v: &[T]) -> Vec<u8> {
        // SAFETY: the float dtypes' values are plain bytes, read within the slice.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
            .to_vec()
    }

    fn bytes(x: &Tensor) -> Vec<u8> {
        let (s, l) = x.storage_and_layout();
        let Storage::Cpu(s) = &*s else {
            panic!("a CPU tensor")
        };
        let (a, b) = l.contiguous_offsets().expect("contiguous");
        match s {
            CpuStorage::F32(v) => raw(&v[a..b]),
            CpuStorage::F64(v) => raw(&v[a..b]),
            CpuStorage::F16(v) => raw(&v[a..b]),
            CpuStorage::BF16(v) => raw(&v[a..b]),
            _ => panic!("not a float dtype"),
        }
    }

    /// The kernel's gather run on the host over `x` placed `offset` elements into its buffer,
    /// each launch of `plan` on its own range, as the CUDA body launches them.
    fn shift_on_host(
        x: &Tensor,
        op: &TemporalShift,
        offset: usize,
        max_words: usize,
    ) -> Result<Vec<u8>> {
        let e = x.dtype().size_in_bytes();
        let mut src = vec![0xA5u8; offset * e];
        src.extend(bytes(x));
        let plan = ShiftLaunches::new(op, x.dims(), e, offset, max_words)?;
        let mut dst = vec![0x5Au8; x.elem_count() * e];
        let mut covered = 0;
        for (range, index) in plan.launches() {
            assert_eq!(range.start, covered, "launches tile the tensor in order");
            covered = range.end;
            let s = &src[(offset + range.start) * e..(offset + range.end) * e];
            let d = &mut dst[range.start * e..range.end * e];
            assert_eq!(s.len(), index.words as usize * plan.word_bytes);
            // SAFETY: `s` and `d` hold `index.words` words of `word_bytes` each.
            unsafe {
                tsm_shift_words_host(&index, s.as_ptr(), d.as_mut_ptr(), plan.word_bytes as u32)
            };
        }
        assert_eq!(covered, x.elem_count(), "launches cover the tensor");
        Ok(dst)
    }

    #[test]
    fn kernel_index_matches_the_cpu_op() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let dtypes = [DType::F32, DType::F64, DType::F16, DType::BF16];
        let sizes = [1, 2, 3, 4, 7, 8];
        for case in 0..300 {
            let t = [1, 2, 3, 8][rng.random_range(0..4)];
            let clips = rng.random_range(1..4);
            let c = [1, 2, 3, 5, 7, 8, 13, 16, 64][rng.random_range(0..9)];
            let (h, w) = (sizes[rng.random_range(0..6)], sizes[rng.random_range(0..6)]);
            let ratio = [0.0, 0.125, 0.25, 1.0 / 3.0, 0.5][rng.random_range(0..5)];
            let dtype = dtypes[case % 4];
            let offset = rng.random_range(0..9);
            let x = test_support::randn((clips * t, c, h, w)).to_dtype(dtype)?;
            for reverse in [false, true] {
                let op = TemporalShift {
                    num_seg: t,
                    ratio,
                    reverse,
                };
                let want = bytes(&x.apply_op1_no_bwd(&op)?);
                let plan = ShiftLaunches::new(
                    &op,
                    x.dims(),
                    dtype.size_in_bytes(),
                    offset,
                    MAX_LAUNCH_WORDS,
                )?;
                let clip_words = t * c * h * w * dtype.size_in_bytes() / plan.word_bytes;
                // one launch, then launches of one and of two clips (as tensors over 2^31 words run)
                for max_words in [MAX_LAUNCH_WORDS, clip_words, 2 * clip_words + 1] {
                    let got = shift_on_host(&x, &op, offset, max_words)?;
                    assert!(
                        got == want,
                        "{dtype:?} [{}, {c}, {h}, {w}] T={t} ratio {ratio} reverse {reverse} offset \
                         {offset}, {}-byte words, launches of {max_words} words",
                        clips * t,
                        plan.word_bytes
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn kernel_takes_the_widest_word_the_layout_allows() -> Result<()> {
        let op = TemporalShift {
            num_seg: 8,
            ratio: 0.125,
            reverse: false,
        };
        let width = |dims: &[usize], e, offset| {
            ShiftLaunches::new(&op, dims, e, offset, MAX_LAUNCH_WORDS).map(|p| p.word_bytes)
        };
        assert_eq!(width(&[8, 64, 56, 56], 4, 0)?, 16);
        assert_eq!(width(&[8, 64, 7, 7], 4, 0)?, 4); // 196 bytes a plane
        assert_eq!(width(&[8, 64, 7, 7], 2, 0)?, 2);
        assert_eq!(width(&[8, 64, 7, 7], 8, 0)?, 8);
        assert_eq!(width(&[8, 64, 14, 14], 4, 0)?, 16);
        assert_eq!(width(&[8, 64, 56, 56], 4, 1)?, 4); // a view one element in
        assert_eq!(width(&[8, 64, 56, 56], 2, 4)?, 8);
        Ok(())
    }

    #[test]
    fn kernel_refuses_what_it_cannot_shift() {
        let op = TemporalShift {
            num_seg: 8,
            ratio: 0.125,
            reverse: false,
        };
        let err = |dims: &[usize], max| {
            ShiftLaunches::new(&op, dims, 4, 0, max)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[12, 16, 4, 4], MAX_LAUNCH_WORDS)
            .contains("batch dimension 12 is not a multiple of num_seg 8"));
        assert!(err(&[8, 16, 4, 4, 1], MAX_LAUNCH_WORDS).contains("expected [N*T, C, H, W]"));
        assert!(err(&[16, 16, 4, 4], 100).contains("over the kernel's 100"));
        let x = Tensor::zeros((12, 16, 4, 4), DType::F32, &Device::Cpu).expect("zeros");
        assert!(temporal_shift(&x, 8, 0.125).is_err());
    }

    #[test]
    fn kernel_launches_nothing_for_an_empty_tensor() -> Result<()> {
        let op = TemporalShift {
            num_seg: 2,
            ratio: 0.25,
            reverse: false,
        };
        for dims in [[4, 0, 3, 3], [4, 8, 0, 3], [0, 8, 3, 3]] {
            let plan = ShiftLaunches::new(&op, &dims, 4, 0, MAX_LAUNCH_WORDS)?;
            assert_eq!(plan.launches().count(), 0, "{dims:?}");
        }
        Ok(())
    }
}
