//! [`SingleProcess`]: the communicator of a process training alone.

use candle_core::Tensor;

use super::Communicator;
use crate::error::Result;

/// One process alone: rank 0 of 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn backend(&self) -> &'static str {
        "single process"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
