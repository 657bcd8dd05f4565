//! Data-parallel communication: which rank this process is, and sums over all ranks.
//!
//! A [`Communicator`] is one of: [`SingleProcess`] (the default; every call is a no-op) or
//! [`MpiCommunicator`] over the system's MPI (feature `mpi`); NCCL between GPUs is planned
//! (`docs/distributed.md`). Which one a process needs follows from how it was launched:
//! [`Launch::from_env`]
//! reads the rank, world size and local rank that `mpirun` (Open MPI), `srun` (Slurm) or
//! `torchrun`-style launchers put in the environment, and [`connect`] picks the engine.

use std::fmt;
use std::rc::Rc;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Gradients and statistics are summed in buckets of at most this many bytes (PyTorch DDP's
/// default): few enough calls to amortise each one's latency, small enough that the flattened
/// copy costs little memory.
pub const BUCKET_BYTES: usize = 25 << 20;

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

/// Where this process sits in a job, as its launcher says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank.
    pub rank: usize,
    /// Processes in the job.
    pub world_size: usize,
    /// Rank on this node.
    pub local_rank: usize,
    /// Which launcher's variables said so (`"none"` when none did).
    pub launcher: &'static str,
}

/// The environment variables (rank, world size, local rank) of each launcher we know, in the
/// order they are consulted. Slurm's step size is `SLURM_STEP_NUM_TASKS`, set by `srun` only:
/// `SLURM_NTASKS` is also set in a batch script that runs one process.
const LAUNCHERS: &[(&str, [&str; 3])] = &[
    (
        "Open MPI",
        [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ],
    ),
    (
        "Slurm",
        ["SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"],
    ),
    ("torchrun", ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
];

impl Launch {
    /// A process on its own.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            launcher: "none",
        }
    }

    /// From the process environment; see [`Launch::from_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From the first launcher whose rank and world-size variables are both set (Open MPI,
    /// Slurm, torchrun); a missing local rank is the global one. A single process otherwise.
    /// Unparsable or inconsistent values are errors naming the variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        for &(launcher, [rank_var, size_var, local_var]) in LAUNCHERS {
            let (Some(rank), Some(size)) = (get(rank_var), get(size_var)) else {
                continue;
            };
            let parse = |var: &str, v: &str| {
                v.trim().parse::<usize>().map_err(|_| Error::Launch {
                    msg: format!("{var}={v:?} is not a non-negative integer"),
                })
            };
            let rank = parse(rank_var, &rank)?;
            let world_size = parse(size_var, &size)?;
            let local_rank = match get(local_var) {
                Some(v) => parse(local_var, &v)?,
                None => rank,
            };
            if world_size == 0 || rank >= world_size || local_rank > rank {
                return Err(Error::Launch {
                    msg: format!(
                        "{launcher}: {rank_var}={rank}, {size_var}={world_size}, \
                         {local_var}={local_rank} are inconsistent"
                    ),
                });
            }
            return Ok(Self {
                rank,
                world_size,
                local_rank,
                launcher,
            });
        }
        Ok(Self::single())
    }
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// From the launch: one process alone is [`SingleProcess`], several use MPI.
    #[default]
    Auto,
    /// [`SingleProcess`], whatever the environment says.
    Single,
    /// MPI (feature `mpi`).
    Mpi,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" | "single" => Ok(Self::Single),
            "mpi" => Ok(Self::Mpi),
            _ => Err(format!("unknown backend {s:?} (auto, none, mpi)")),
        }
    }
}

/// The communicator for `backend`, joining the job the environment describes.
pub fn connect(backend: Backend) -> Result<Rc<dyn Communicator>> {
    let launch = Launch::from_env()?;
    match backend {
        Backend::Auto if launch.world_size == 1 => Ok(Rc::new(SingleProcess)),
        Backend::Single => Ok(Rc::new(SingleProcess)),
        #[cfg(feature = "mpi")]
        Backend::Auto | Backend::Mpi => Ok(Rc::new(MpiCommunicator::init(&launch)?)),
        #[cfg(not(feature = "mpi"))]
        Backend::Auto | Backend::Mpi => Err(Error::Launch {
            msg: format!(
                "{} started this process as rank {} of {}, but this build has no MPI support \
                 (rebuild with `--features mpi`)",
                launch.launcher, launch.rank, launch.world_size
            ),
        }),
    }
}

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

#[cfg(feature = "mpi")]
pub use self::mpi_comm::MpiCommunicator;

#[cfg(feature = "mpi")]
mod mpi_comm {
    use candle_core::{DType, Tensor};
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator as _, SimpleCommunicator};

    use super::{Communicator, Launch};
    use crate::error::{Error, Result};

    /// MPI's world communicator (the `mpi` crate over the system's MPI library). Sums travel
    /// through host memory.
    pub struct MpiCommunicator {
        world: SimpleCommunicator,
        local_rank: usize,
        // Finalises MPI when dropped, so it must outlive `world`'s use.
        _universe: Universe,
    }

    impl std::fmt::Debug for MpiCommunicator {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MpiCommunicator")
                .field("rank", &self.rank())
                .field("world_size", &self.world_size())
                .field("local_rank", &self.local_rank)
                .finish()
        }
    }

    impl MpiCommunicator {
        /// Initialises MPI; MPI's own rank and size must agree with the launcher's variables
        /// when those are set.
        pub fn init(launch: &Launch) -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| Error::Launch {
                msg: "MPI is already initialised in this process".into(),
            })?;
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            if launch.launcher != "none" && (rank, size) != (launch.rank, launch.world_size) {
                return Err(Error::Launch {
                    msg: format!(
                        "MPI says rank {rank} of {size}, {} said rank {} of {}: was this \
                         process started by an MPI launcher (mpirun, srun --mpi=pmix)?",
                        launch.launcher, launch.rank, launch.world_size
                    ),
                });
            }
            Ok(Self {
                world,
                local_rank: if launch.launcher == "none" {
                    rank
                } else {
                    launch.local_rank
                },
                _universe: universe,
            })
        }
    }

    impl Communicator for MpiCommunicator {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn local_rank(&self) -> usize {
            self.local_rank
        }
        fn backend(&self) -> &'static str {
            "MPI"
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            let (device, n) = (t.device(), t.elem_count());
            let out = match t.dtype() {
                DType::F32 => {
                    let send = t.to_vec1::<f32>()?;
                    let mut recv = vec![0f32; n];
                    self.world
                        .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                    Tensor::from_vec(recv, n, device)?
                }
                DType::F64 => {
                    let send = t.to_vec1::<f64>()?;
                    let mut recv = vec![0f64; n];
                    self.world
                        .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                    Tensor::from_vec(recv, n, device)?
                }
                other => {
                    return Err(
                        candle_core::Error::UnsupportedDTypeForOp(other, "all_reduce_sum").into(),
                    )
                }
            };
            Ok(out)
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}
