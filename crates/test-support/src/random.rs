//! Random test inputs that are the same on every run: candle's `Tensor::randn` and
//! `Tensor::rand` draw from an unseeded generator on the CPU (it cannot be seeded there), so a
//! test on them sees new inputs each run and a failure may not come back.

use std::cell::RefCell;

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

thread_local! {
    /// This thread's generator, seeded alike on every thread: a test (each runs on a thread of
    /// its own, or in a process of its own under nextest) draws the same values on every run.
    static RNG: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0x7e57_5eed));
}

fn draw(shape: impl Into<Shape>, sample: impl Fn(&mut ChaCha8Rng) -> f32) -> Tensor {
    let shape = shape.into();
    let values: Vec<f32> = RNG.with(|rng| {
        let mut rng = rng.borrow_mut();
        (0..shape.elem_count()).map(|_| sample(&mut rng)).collect()
    });
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// f32 values of `shape` on the CPU, each from `N(0, 1)`, from this thread's seeded generator.
pub fn randn(shape: impl Into<Shape>) -> Tensor {
    draw(shape, |rng| rng.sample(StandardNormal))
}

/// f32 values of `shape` on the CPU, each uniform in `[lo, hi)`, from this thread's seeded
/// generator.
pub fn rand_uniform(lo: f32, hi: f32, shape: impl Into<Shape>) -> Tensor {
    draw(shape, |rng| rng.random_range(lo..hi))
}
