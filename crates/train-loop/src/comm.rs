//! Data-parallel communication: which rank this process is, and sums over all ranks.
//!
//! A [`Communicator`] is one of: [`SingleProcess`] (the default; every call is a no-op),
//! [`MpiCommunicator`] over the system's MPI (feature `mpi`), or `NcclCommunicator` between GPUs,
//! one process per GPU (feature `cuda`, candle's NCCL bindings). Which one a process needs
//! follows from how it was launched: [`Launch::from_env`] reads the rank, world size and local
//! rank that `mpirun` (Open MPI), `srun` (Slurm) or `torchrun`-style launchers put in the
//! environment, and [`connect`] picks the engine.

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::error::{io, Error, Result};

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
    /// A name of this job that all its ranks share and no other job has (see
    /// [`Launch::from_vars`]); NCCL's ranks meet through a file of that name.
    pub job: Option<String>,
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
            job: None,
        }
    }

    /// From the process environment; see [`Launch::from_vars`].
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// From the first launcher whose rank and world-size variables are both set (Open MPI,
    /// Slurm, torchrun); a missing local rank is the global one. A single process otherwise.
    /// Unparsable or inconsistent values are errors naming the variable.
    ///
    /// The job's name is `TSM_JOB_ID` when set, else the launcher's own: Open MPI's PMIx
    /// namespace (5.x) or per-job transport key (4.x), Slurm's `SLURM_JOB_ID.SLURM_STEP_ID`,
    /// torchrun's `TORCHELASTIC_RUN_ID` (unless it is torchrun's default, `none`).
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
            let job = get("TSM_JOB_ID").or_else(|| match launcher {
                "Open MPI" => {
                    get("PMIX_NAMESPACE").or_else(|| get("OMPI_MCA_orte_precondition_transports"))
                }
                "Slurm" => Some(format!(
                    "{}.{}",
                    get("SLURM_JOB_ID")?,
                    get("SLURM_STEP_ID")?
                )),
                _ => get("TORCHELASTIC_RUN_ID").filter(|id| id != "none"),
            });
            return Ok(Self {
                rank,
                world_size,
                local_rank,
                launcher,
                job,
            });
        }
        Ok(Self::single())
    }
}

/// Hands a few bytes from rank 0 to the other ranks through a file on a file system they all
/// see (the run directory): how NCCL's ranks learn rank 0's unique id without a network
/// service of our own. The file is named after the job, so a file left by an earlier job is
/// never read as this one's.
#[derive(Debug, Clone)]
pub struct FileRendezvous {
    path: PathBuf,
    timeout: Duration,
}

impl FileRendezvous {
    /// The meeting file for `job` in `dir`; [`FileRendezvous::wait`] gives up after `timeout`.
    pub fn new(dir: &Path, job: &str, timeout: Duration) -> Self {
        // Launchers' ids may hold `@`, `/` or `;`: keep the name one plain path component.
        let name: String = job
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                _ => '_',
            })
            .collect();
        Self {
            path: dir.join(format!(".rendezvous-{name}")),
            timeout,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rank 0: writes `bytes` (to a temporary name, then renamed, so a reader never sees part
    /// of it), creating the directory if needed.
    pub fn publish(&self, bytes: &[u8]) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))
    }

    /// The other ranks: the `len` bytes rank 0 published, polling until they appear.
    pub fn wait(&self, len: usize) -> Result<Vec<u8>> {
        let start = Instant::now();
        loop {
            match std::fs::read(&self.path) {
                Ok(bytes) if bytes.len() == len => return Ok(bytes),
                Ok(bytes) => {
                    return Err(Error::Launch {
                        msg: format!(
                            "{} holds {} bytes, expected {len}",
                            self.path.display(),
                            bytes.len()
                        ),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&self.path)(e)),
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Launch {
                    msg: format!(
                        "rank 0 did not publish {} within {:?}: is the directory on a file \
                         system every rank sees, and did rank 0 start?",
                        self.path.display(),
                        self.timeout
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rank 0, once every rank has joined: removes the file (a missing one is fine).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

#[cfg(feature = "cuda")]
pub use self::nccl_comm::NcclCommunicator;

#[cfg(feature = "cuda")]
mod nccl_comm {
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
                        return Err(candle_core::Error::UnsupportedDTypeForOp(
                            other,
                            "all_reduce_sum",
                        )
                        .into())
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
}
