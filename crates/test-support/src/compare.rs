//! How close two results are: the measures every crate's tests compare outputs with.
//!
//! Each measure takes any two [`Values`] (f32, f64 or u8 slices and vectors, [`RefTensor`]s and,
//! with feature `candle`, candle tensors of any float dtype), sums in f64 and returns an f32.
//! Inputs must hold as many values; when both know their shape, shapes must agree too.

use crate::RefTensor;

/// Something whose values a measure reads, in row-major order.
pub trait Values {
    /// The values, widened to f64.
    fn values(&self) -> Vec<f64>;
    /// The shape, when the values have one beyond their count.
    fn shape(&self) -> Option<Vec<usize>> {
        None
    }
}

impl Values for [f32] {
    fn values(&self) -> Vec<f64> {
        self.iter().map(|&x| f64::from(x)).collect()
    }
}

impl Values for [f64] {
    fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

impl Values for [u8] {
    fn values(&self) -> Vec<f64> {
        self.iter().map(|&x| f64::from(x)).collect()
    }
}

impl Values for Vec<f32> {
    fn values(&self) -> Vec<f64> {
        self[..].values()
    }
}

impl Values for Vec<f64> {
    fn values(&self) -> Vec<f64> {
        self.clone()
    }
}

impl Values for RefTensor {
    fn values(&self) -> Vec<f64> {
        self.data.values()
    }
    fn shape(&self) -> Option<Vec<usize>> {
        Some(self.shape.clone())
    }
}

#[cfg(feature = "candle")]
impl Values for candle_core::Tensor {
    fn values(&self) -> Vec<f64> {
        self.flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F64))
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap()
    }
    fn shape(&self) -> Option<Vec<usize>> {
        Some(self.dims().to_vec())
    }
}

/// The values of `a` and `b`, checked to correspond.
fn pair<A: Values + ?Sized, B: Values + ?Sized>(a: &A, b: &B) -> (Vec<f64>, Vec<f64>) {
    if let (Some(sa), Some(sb)) = (a.shape(), b.shape()) {
        assert_eq!(sa, sb, "shape mismatch");
    }
    let (a, b) = (a.values(), b.values());
    assert_eq!(a.len(), b.len(), "length mismatch");
    (a, b)
}

fn max_abs(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `max |a - b|`.
pub fn max_abs_diff<A: Values + ?Sized, B: Values + ?Sized>(a: &A, b: &B) -> f32 {
    let (a, b) = pair(a, b);
    max_abs(&a, &b) as f32
}

/// `mean |a - b|`.
pub fn mean_abs_diff<A: Values + ?Sized, B: Values + ?Sized>(a: &A, b: &B) -> f32 {
    let (a, b) = pair(a, b);
    let sum: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    (sum / a.len() as f64) as f32
}

/// `max |a - b| / max |b|`: the largest difference relative to `b`'s scale.
pub fn rel_max_diff<A: Values + ?Sized, B: Values + ?Sized>(a: &A, b: &B) -> f32 {
    let (a, b) = pair(a, b);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    (max_abs(&a, &b) / scale.max(1e-30)) as f32
}

/// Relative L2 error `|a - b| / |b|`.
pub fn rel_l2<A: Values + ?Sized, B: Values + ?Sized>(a: &A, b: &B) -> f32 {
    let (a, b) = pair(a, b);
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y.powi(2)).sum();
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}
