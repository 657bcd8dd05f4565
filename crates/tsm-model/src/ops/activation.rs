//! Leaky ReLU and the residual join `leaky_relu(a + b)`: single passes each way on the CPU
//! where candle's compositions take several, each allocating a full-size tensor.

use candle_core::backend::BackendStorage;
use candle_core::WithDType;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::timing::{timed, OpKind};
use super::{cpu_kernel, cpu_slice, has_cpu_kernel, par_fill, reference_fwd, reference_vjp};

/// Leaky ReLU's negative slope in Paddle's `F.leaky_relu` (and so in PP-TSM).
pub(crate) const LEAKY_SLOPE: f64 = 0.01;

/// Element-wise kernels run in parallel chunks of this many elements.
const CHUNK: usize = 1 << 14;

/// `f(a[i], b[i])` for every `i`, in parallel.
fn zip_map<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "zip_map: operand lengths differ");
    par_fill(a.len(), CHUNK, |i, out| {
        let (a, b) = (&a[i * CHUNK..], &b[i * CHUNK..]);
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            o.write(f(a, b));
        }
    })
}

pub(crate) fn leaky<T: WithDType>(v: T) -> T {
    v * leaky_grad_factor(v)
}

/// The leaky ReLU's derivative at `v` (1 or the slope), as a select rather than a branch: signs
/// are random, and a mispredicted branch per element made the gradient pass several times
/// slower than its memory traffic.
pub(crate) fn leaky_grad_factor<T: WithDType>(v: T) -> T {
    if v > T::zero() {
        T::one()
    } else {
        T::from_f64(LEAKY_SLOPE)
    }
}

/// `leaky_relu(x) = max(x, 0.01 x)`.
pub(crate) fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    timed(OpKind::Activation, x.device(), || {
        x.contiguous()?.apply_op1(LeakyRelu)
    })
}

/// [`leaky_relu`] from candle's ops.
pub(crate) fn leaky_relu_reference(x: &Tensor) -> Result<Tensor> {
    x.maximum(&(x * LEAKY_SLOPE)?)
}

/// `leaky_relu(a + b)`: the residual join of every block, in one pass.
pub(crate) fn add_leaky_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        candle_core::bail!(
            "add_leaky_relu: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )
    }
    timed(OpKind::Activation, a.device(), || {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddLeakyRelu)
    })
}

/// [`add_leaky_relu`] from candle's ops.
pub(crate) fn add_leaky_relu_reference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    leaky_relu_reference(&(a + b)?)
}

/// Leaky ReLU.
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
        if !has_cpu_kernel(s.dtype()) {
            return reference_fwd(&[(s, l)], |x| leaky_relu_reference(&x[0]));
        }
        Ok((cpu_by_dtype!(s.dtype(), self.fwd(s, l)), l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s, l)], |x| leaky_relu_reference(&x[0]))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        timed(OpKind::Activation, x.device(), || {
            if !cpu_kernel(x) {
                let g = reference_vjp(&[x], grad, |x| leaky_relu_reference(&x[0]))?;
                return Ok(g.into_iter().next());
            }
            Ok(Some(leaky_grad(y, grad)?))
        })
    }
}

/// `leaky_relu(a + b)`.
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
        if !has_cpu_kernel(s1.dtype()) {
            return reference_fwd(&[(s1, l1), (s2, l2)], |x| {
                add_leaky_relu_reference(&x[0], &x[1])
            });
        }
        let out = cpu_by_dtype!(s1.dtype(), self.fwd(s1, l1, s2, l2));
        Ok((out, l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        reference_fwd(&[(s1, l1), (s2, l2)], |x| {
            add_leaky_relu_reference(&x[0], &x[1])
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        timed(OpKind::Activation, a.device(), || {
            if !cpu_kernel(a) {
                let g = reference_vjp(&[a, b], grad, |x| add_leaky_relu_reference(&x[0], &x[1]))?;
                return Ok((g.first().cloned(), g.get(1).cloned()));
            }
            let g = leaky_grad(y, grad)?;
            Ok((Some(g.clone()), Some(g)))
        })
    }
}

/// The gradient through a leaky ReLU from its output `y` (the CPU kernels' backward).
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
        Ok(zip_map(
            cpu_slice::<T>(s1, l1)?,
            cpu_slice(s2, l2)?,
            |y, g| g * leaky_grad_factor(y),
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
