//! [`NcclCommunicator`]: NCCL between GPUs, one process per GPU (feature `cuda`).

use std::path::Path;
use std::time::Duration;

use candle_core::cuda::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{DType, Device, Storage, Tensor};

use super::{Communicator, FileRendezvous, Launch};
use crate::error::{Error, Result};

/// NCCL between the GPUs of a job, one process per GPU; sums run on this rank's device.
pub struct NcclCommunicator {
    comm: Comm,
    device: Device,
    local_rank: usize,
}

impl std::fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCommunicator")
            .field("rank", &self.rank())
            .field("world_size", &self.world_size())
            .field("local_rank", &self.local_rank)
            .field("device", &self.device)
            .finish()
    }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Launch {
        msg: format!("NCCL {what}: {e:?}"),
    }
}

impl NcclCommunicator {
    /// Joins the job `launch` describes on `device` (this rank's GPU): rank 0 makes NCCL's
    /// unique id and publishes it in `run_dir`, the others wait for it up to `timeout`.
    pub fn init(
        launch: &Launch,
        device: &Device,
        run_dir: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let job = launch.job.as_deref().ok_or_else(|| Error::Launch {
            msg: format!(
                "{} gives no job id for NCCL's ranks to meet under: set TSM_JOB_ID to the \
                 same value, unique to this run, on every rank",
                launch.launcher
            ),
        })?;
        let rendezvous = FileRendezvous::new(run_dir, &format!("nccl-{job}"), timeout);
        let id = if launch.rank == 0 {
            let id = Id::new().map_err(|e| nccl_error("unique id", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            rendezvous.publish(&bytes)?;
            id
        } else {
            let bytes = rendezvous.wait(128)?;
            Id::uninit(std::array::from_fn(|i| bytes[i] as std::ffi::c_char))
        };
        let stream = device.as_cuda_device()?.cuda_stream();
        let comm = Comm::from_rank(stream, launch.rank, launch.world_size, id)
            .map_err(|e| nccl_error("init", e))?;
        // Initialisation returns once every rank has joined: nobody reads the file again.
        if launch.rank == 0 {
            rendezvous.remove();
        }
        Ok(Self {
            comm,
            device: device.clone(),
            local_rank: launch.local_rank,
        })
    }

    fn sum<T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits>(
        &self,
        storage: &CudaStorage,
        start: usize,
        n: usize,
        dev: &CudaDevice,
    ) -> Result<CudaStorage> {
        let src = storage.as_cuda_slice::<T>()?.slice(start..start + n);
        let mut dst = dev.alloc_zeros::<T>(n)?;
        self.comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| nccl_error("all-reduce", e))?;
        Ok(CudaStorage::wrap_cuda_slice(dst, dev.clone()))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn backend(&self) -> &'static str {
        "NCCL"
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        // Host values (metrics, counts) travel through the GPU and come back.
        let x = t.to_device(&self.device)?.contiguous()?;
        let n = x.elem_count();
        let dev = self.device.as_cuda_device()?;
        let summed = {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cuda(s) = &*storage else {
                let msg = format!("all_reduce_sum: the tensor is not on {:?}", self.device);
                return Err(candle_core::Error::Msg(msg).into());
            };
            let start = layout.start_offset();
            match x.dtype() {
                DType::F32 => self.sum::<f32>(s, start, n, dev)?,
                DType::F64 => self.sum::<f64>(s, start, n, dev)?,
                other => {
                    return Err(
                        candle_core::Error::UnsupportedDTypeForOp(other, "all_reduce_sum").into(),
                    )
                }
            }
        };
        let out = Tensor::from_storage(Storage::Cuda(summed), n, BackpropOp::none(), false);
        Ok(out.to_device(t.device())?)
    }
    /// NCCL cannot end other processes: this one exits, and the launcher (mpirun, `srun
    /// --kill-on-bad-exit`, torchrun) ends the job when a rank fails.
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}
