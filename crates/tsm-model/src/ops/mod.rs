//! The operators PP-TSM needs that candle lacks or runs slowly: Paddle's temporal shift,
//! convolution, training BatchNorm (with its leaky ReLU), leaky ReLU, the residual join, and
//! padded 3x3 max pooling and exclusive ceil-mode 2x2 average pooling.
//!
//! Each op is one type implementing candle's custom-op trait, with three bodies:
//! - `cpu_fwd`: a hand-written kernel for f32 and f64 (single-pass, with a hand-written
//!   backward), and [`reference_fwd`] for the other dtypes;
//! - `cuda_fwd`: the op's CUDA kernel (the temporal shift's, `kernels/temporal_shift.cu`), or,
//!   for an op without one yet, its reference run on the GPU by candle's CUDA ops through
//!   [`reference_fwd`], never a copy to the CPU; `bwd` differentiates the reference
//!   ([`reference_vjp`]) wherever the CPU kernels do not run;
//! - a slow `*_reference` function beside it, made of plain candle ops: the ground truth in
//!   the tests, which run every op on each device the build has (`ops/tests.rs`).
//!
//! The CUDA bodies are written against candle's backend types, which candle keeps (as
//! stand-ins) in builds without CUDA, so the compiler checks them in every build.

mod activation;
mod batch_norm;
mod conv;
mod gemm;
mod pool;
mod shift;
mod timing;

pub(crate) use activation::{add_leaky_relu, leaky_relu, LEAKY_SLOPE};
pub(crate) use batch_norm::{batch_norm_train, BN_EPS};
pub(crate) use conv::{conv2d, conv2d_bias};
pub(crate) use gemm::bf16_products_run_here;
pub use gemm::ProductPrecision;
pub(crate) use pool::{avg_pool2x2_ceil, max_pool3x3_s2_p1};
pub(crate) use shift::shift_folds;
pub use shift::temporal_shift;
pub use timing::{time_ops, OpKind, OpTimes};

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::BackpropOp;
use candle_core::WithDType;
use candle_core::{CpuStorage, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor, Var};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Whether `x` runs on this crate's hand-written CPU kernels (CPU, f32 or f64).
pub(crate) fn cpu_kernel(x: &Tensor) -> bool {
    x.device().is_cpu() && has_cpu_kernel(x.dtype())
}

/// The dtypes the hand-written CPU kernels are instantiated for.
fn has_cpu_kernel(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F64)
}

/// The contiguous `T` data of a kernel operand.
pub(crate) fn cpu_slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&T::cpu_storage_as_slice(s)?[a..b]),
        None => candle_core::bail!("CPU kernel operands must be contiguous"),
    }
}

/// A vector of `len` values written in parallel, chunk `i` (`chunk` long, the last one
/// shorter) by `fill(i, chunk)`, which writes every element of it: the element-wise kernels'
/// outputs are not zeroed first, a pass over memory (and its page faults) per activation.
pub(crate) fn par_fill<T: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: `fill` wrote all of the first `len` elements (its contract above).
    unsafe { v.set_len(len) };
    v
}

/// A vector of `len` zeros, chunk `i` (`chunk` long, the last one shorter) zeroed and then
/// handed to `fill(i, chunk)` on the thread that zeroed it: for the kernels that add into their
/// output or leave parts of it zero. `vec![0; len]` zeroes on one thread while the others wait
/// (malloc's reused memory is not zero).
pub(crate) fn par_zeros<T: WithDType>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T]) + Sync,
) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            c.fill(MaybeUninit::new(T::zero()));
            // SAFETY: every element of `c` was just written.
            let c = unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) };
            fill(i, c)
        });
    // SAFETY: every chunk of the first `len` elements was zeroed above.
    unsafe { v.set_len(len) };
    v
}

/// A backend's storage as the [`Storage`] a tensor holds, and back.
pub(crate) trait DeviceStorage: BackendStorage + Sized {
    fn into_storage(self) -> Storage;
    fn from_storage(s: &Storage) -> Option<&Self>;
    /// Zeros of `shape` on this storage's device.
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Self>;
}

impl DeviceStorage for CpuStorage {
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Self> {
        self.device().zeros_impl(shape, dtype)
    }

    fn into_storage(self) -> Storage {
        Storage::Cpu(self)
    }

    fn from_storage(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cpu(s) => Some(s),
            _ => None,
        }
    }
}

impl DeviceStorage for CudaStorage {
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Self> {
        self.device().zeros_impl(shape, dtype)
    }

    fn into_storage(self) -> Storage {
        Storage::Cuda(self)
    }

    fn from_storage(s: &Storage) -> Option<&Self> {
        match s {
            Storage::Cuda(s) => Some(s),
            _ => None,
        }
    }
}

/// An op's operand as a tensor of its own (a copy, in row-major order), outside any graph.
fn operand<S: DeviceStorage>(s: &S, l: &Layout) -> Result<Tensor> {
    let mut dst = s.zeros(l.shape(), s.dtype())?;
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(Tensor::from_storage(
        dst.into_storage(),
        l.shape().clone(),
        BackpropOp::none(),
        false,
    ))
}

/// An op's forward body made of its reference: the operands become tensors on their device,
/// `reference` computes the result with candle's ops, and its storage is the op's output. The
/// CPU body for dtypes without a kernel, and the CUDA body of ops without a CUDA kernel.
pub(crate) fn reference_fwd<S: DeviceStorage>(
    operands: &[(&S, &Layout)],
    reference: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<(S, Shape)> {
    let xs: Vec<Tensor> = operands
        .iter()
        .map(|(s, l)| operand(*s, l))
        .collect::<Result<_>>()?;
    let y = reference(&xs)?.force_contiguous()?;
    let (storage, layout) = y.storage_and_layout();
    let Some(s) = S::from_storage(&storage) else {
        candle_core::bail!("reference_fwd: the reference changed device")
    };
    Ok((s.try_clone(layout)?, layout.shape().clone()))
}

/// The gradients of `sum(reference(inputs) * grad)` with respect to each input, by candle's
/// autograd through the reference: an op's backward wherever its CPU kernels do not run.
pub(crate) fn reference_vjp(
    inputs: &[&Tensor],
    grad: &Tensor,
    reference: impl FnOnce(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.detach()))
        .collect::<Result<_>>()?;
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = reference(&xs)?;
    let grads = (y * grad.detach())?.sum_all()?.backward()?;
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => v.as_tensor().zeros_like(),
        })
        .collect()
}

/// Mean over every axis but the channel axis 1 of `[N, C, H, W]`, as `[C]`.
fn channel_mean(x: &Tensor) -> Result<Tensor> {
    x.mean_keepdim((0, 2, 3))?.flatten_all()
}

/// `[C]` -> `[1, C, 1, 1]`, to broadcast over `[N, C, H, W]`.
fn per_channel(t: &Tensor) -> Result<Tensor> {
    t.reshape((1, (), 1, 1))
}

#[cfg(test)]
mod tests;
