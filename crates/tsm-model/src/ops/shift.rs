//! Paddle's temporal shift: a fold of channels from the previous frame, a fold from the next.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::reference_fwd;

/// Paddle's channel split for a shift ratio: `(int(C*ratio), int(C*2*ratio))`, computed in f32
/// as Paddle's kernel does.
pub(crate) fn shift_folds(channels: usize, ratio: f64) -> (usize, usize) {
    let r = ratio as f32;
    let c = channels as f32;
    ((c * r) as usize, (c * 2.0 * r) as usize)
}

/// The op: forward, or (`reverse`) the opposite shift, which is the forward's gradient. Any
/// dtype on the CPU (it only moves values); on CUDA, the reference until its kernel lands.
#[derive(Debug, Clone, Copy)]
struct TemporalShift {
    num_seg: usize,
    ratio: f64,
    reverse: bool,
}

impl TemporalShift {
    /// The op's values from candle's ops (the reverse shift swaps the two folds' directions).
    fn reference(&self, x: &Tensor) -> Result<Tensor> {
        shift_reference(x, self.num_seg, self.ratio, self.reverse)
    }

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

    /// The gradient through the shift: the opposite shift of `grad`, outside the graph.
    pub(crate) fn grad(&self, grad: &Tensor) -> Result<Tensor> {
        grad.contiguous()?.apply_op1_no_bwd(&TemporalShift {
            num_seg: self.num_seg,
            ratio: self.ratio,
            reverse: true,
        })
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

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s, l)], |x| self.reference(&x[0]))
    }

    // The opposite shift, on every device: no reference gradient needed.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = TemporalShift {
            reverse: !self.reverse,
            ..*self
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
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
/// One pass on the CPU, for any float dtype; on CUDA the same values from candle's ops until
/// its kernel lands.
pub fn temporal_shift(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    x.contiguous()?.apply_op1(TemporalShift {
        num_seg,
        ratio,
        reverse: false,
    })
}

/// The same shift from `narrow`/`cat`/zero padding: slow, the reference for tests.
#[cfg(test)]
pub(crate) fn temporal_shift_reference(x: &Tensor, num_seg: usize, ratio: f64) -> Result<Tensor> {
    check_shift_args(x, num_seg, ratio)?;
    shift_reference(x, num_seg, ratio, false)
}

/// Every frame `t` of every clip of `x5 [N, T, ...]` taken from frame `t - 1` (`back`) or
/// `t + 1`, zeros where that leaves the clip.
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

fn shift_reference(x: &Tensor, num_seg: usize, ratio: f64, reverse: bool) -> Result<Tensor> {
    let (nt, c, h, w) = x.dims4()?;
    let (c1, c2) = shift_folds(c, ratio);
    let x5 = x.reshape((nt / num_seg, num_seg, c, h, w))?;
    let mut parts = Vec::new();
    if c1 > 0 {
        parts.push(shifted(&x5.narrow(2, 0, c1)?, !reverse)?);
    }
    if c2 > c1 {
        parts.push(shifted(&x5.narrow(2, c1, c2 - c1)?, reverse)?);
    }
    if c > c2 {
        parts.push(x5.narrow(2, c2, c - c2)?);
    }
    Tensor::cat(&parts, 2)?.reshape((nt, c, h, w))
}
