//! Data-parallel communication: which rank this process is, and sums over all ranks.
//!
//! A [`Communicator`] is one of: [`SingleProcess`] (the default; every call is a no-op),
//! [`MpiCommunicator`] over the system's MPI (feature `mpi`), or `NcclCommunicator` between GPUs,
//! one process per GPU (feature `cuda`, candle's NCCL bindings). Which one a process needs
//! follows from how it was launched: [`Launch::from_env`] reads the rank, world size and local
//! rank that `mpirun` (Open MPI), `srun` (Slurm) or `torchrun`-style launchers put in the
//! environment, and [`connect`] picks the engine.

mod launch;
#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "cuda")]
mod nccl_comm;
mod reduce;
mod rendezvous;
mod single;

use std::fmt;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

pub use self::launch::{Launch, Launcher};
#[cfg(feature = "mpi")]
pub use self::mpi_comm::MpiCommunicator;
#[cfg(feature = "cuda")]
pub use self::nccl_comm::NcclCommunicator;
pub use self::reduce::{all_reduce_sum_f64, all_reduce_sum_tensors, BUCKET_BYTES};
pub use self::rendezvous::FileRendezvous;
pub use self::single::SingleProcess;

/// Collective operations between the ranks of a data-parallel job.
pub trait Communicator: fmt::Debug {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn world_size(&self) -> usize;
    /// Rank among the processes of this node (which GPU to use).
    fn local_rank(&self) -> usize;
    /// The engine's name, for logs.
    fn backend(&self) -> &'static str;
    /// Element-wise sum of a 1-D `f32` or `f64` tensor over all ranks; every rank gets it.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Ends every process of the job with `code` (after an error on this rank, so that the
    /// others do not wait for it forever).
    fn abort(&self, code: i32) -> !;
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// From the launch and the device: one process alone is [`SingleProcess`], several use
    /// NCCL when training on a GPU and MPI on the CPU.
    #[default]
    Auto,
    /// [`SingleProcess`], whatever the environment says.
    Single,
    /// MPI (feature `mpi`).
    Mpi,
    /// NCCL, one process per GPU (feature `cuda`).
    Nccl,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" | "single" => Ok(Self::Single),
            "mpi" => Ok(Self::Mpi),
            "nccl" => Ok(Self::Nccl),
            _ => Err(format!("unknown backend {s:?} (auto, none, mpi, nccl)")),
        }
    }
}

/// How long NCCL's ranks wait for rank 0's unique id (`TSM_RENDEZVOUS_TIMEOUT_S` overrides).
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// The communicator for `backend`, joining the job the environment describes, for a model on
/// `device`. NCCL's ranks meet through a file in `run_dir` (see [`FileRendezvous`]).
pub fn connect(backend: Backend, device: &Device, run_dir: &Path) -> Result<Rc<dyn Communicator>> {
    let launch = Launch::from_env()?;
    let backend = match backend {
        Backend::Auto if launch.world_size == 1 => Backend::Single,
        Backend::Auto if device.is_cuda() => Backend::Nccl,
        Backend::Auto => Backend::Mpi,
        b => b,
    };
    match backend {
        Backend::Auto | Backend::Single => Ok(Rc::new(SingleProcess)),
        #[cfg(feature = "mpi")]
        Backend::Mpi => Ok(Rc::new(MpiCommunicator::init(&launch)?)),
        #[cfg(not(feature = "mpi"))]
        Backend::Mpi => Err(not_built(&launch, "MPI", "mpi")),
        Backend::Nccl => {
            if !device.is_cuda() {
                return Err(Error::Launch {
                    msg: "NCCL needs a CUDA device (`--device cuda`)".into(),
                });
            }
            let timeout = match std::env::var("TSM_RENDEZVOUS_TIMEOUT_S") {
                Ok(v) => Duration::from_secs(v.trim().parse().map_err(|_| Error::Launch {
                    msg: format!("TSM_RENDEZVOUS_TIMEOUT_S={v:?} is not a number of seconds"),
                })?),
                Err(_) => RENDEZVOUS_TIMEOUT,
            };
            #[cfg(feature = "cuda")]
            return Ok(Rc::new(NcclCommunicator::init(
                &launch, device, run_dir, timeout,
            )?));
            #[cfg(not(feature = "cuda"))]
            {
                let _ = (run_dir, timeout);
                Err(not_built(&launch, "CUDA/NCCL", "cuda"))
            }
        }
    }
}

#[cfg(not(all(feature = "mpi", feature = "cuda")))]
fn not_built(launch: &Launch, what: &str, feature: &str) -> Error {
    Error::Launch {
        msg: format!(
            "{} started this process as rank {} of {}, but this build has no {what} support \
             (rebuild with `--features {feature}`)",
            launch.launcher, launch.rank, launch.world_size
        ),
    }
}
