//! Sums of many tensors or numbers over the ranks, in buckets, on any [`Communicator`].

use candle_core::{Device, Tensor};

use super::Communicator;
use crate::error::Result;

/// Gradients and statistics are summed in buckets of at most this many bytes (PyTorch DDP's
/// default): few enough calls to amortise each one's latency, small enough that the flattened
/// copy costs little memory.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sums every tensor of `tensors` over all ranks, flattened into buckets of at most
/// [`BUCKET_BYTES`] (a larger tensor travels alone). Returns them in order and shape.
pub fn all_reduce_sum_tensors(comm: &dyn Communicator, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    if comm.world_size() == 1 {
        return Ok(tensors.to_vec());
    }
    let mut out = Vec::with_capacity(tensors.len());
    let mut start = 0;
    while start < tensors.len() {
        let mut end = start + 1;
        let mut bytes = tensors[start].elem_count() * tensors[start].dtype().size_in_bytes();
        while end < tensors.len() {
            let more = tensors[end].elem_count() * tensors[end].dtype().size_in_bytes();
            if bytes + more > BUCKET_BYTES {
                break;
            }
            bytes += more;
            end += 1;
        }
        let flat: Vec<Tensor> = tensors[start..end]
            .iter()
            .map(Tensor::flatten_all)
            .collect::<candle_core::Result<_>>()?;
        let summed = comm.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
        let mut offset = 0;
        for t in &tensors[start..end] {
            let n = t.elem_count();
            out.push(summed.narrow(0, offset, n)?.reshape(t.dims())?);
            offset += n;
        }
        start = end;
    }
    Ok(out)
}

/// Sums plain numbers over all ranks (metrics, counts).
pub fn all_reduce_sum_f64(comm: &dyn Communicator, values: &[f64]) -> Result<Vec<f64>> {
    if comm.world_size() == 1 {
        return Ok(values.to_vec());
    }
    let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
    Ok(comm.all_reduce_sum(&t)?.to_vec1::<f64>()?)
}
