//! [`Launch`]: this process's rank, world size and job, read from its launcher's variables.

use std::fmt;

use crate::error::{Error, Result};

/// The launcher that started this process, known by the variables it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `mpirun` / `mpiexec` of Open MPI.
    OpenMpi,
    /// Slurm's `srun` (a job step).
    Slurm,
    /// `torchrun` or another launcher that sets its variables (`RANK`, `WORLD_SIZE`).
    Torchrun,
    /// No launcher's variables: a process on its own.
    None,
}

impl Launcher {
    /// The launcher's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenMpi => "Open MPI",
            Self::Slurm => "Slurm",
            Self::Torchrun => "torchrun",
            Self::None => "none",
        }
    }

    /// The launcher's own name of the job (see [`Launch::from_vars`]).
    fn job(self, get: impl Fn(&str) -> Option<String>) -> Option<String> {
        match self {
            Self::OpenMpi => {
                get("PMIX_NAMESPACE").or_else(|| get("OMPI_MCA_orte_precondition_transports"))
            }
            Self::Slurm => Some(format!(
                "{}.{}",
                get("SLURM_JOB_ID")?,
                get("SLURM_STEP_ID")?
            )),
            Self::Torchrun => get("TORCHELASTIC_RUN_ID").filter(|id| id != "none"),
            Self::None => None,
        }
    }
}

/// The launchers we know with their rank, world size and local rank variables, in the order
/// they are consulted. Slurm's step size is `SLURM_STEP_NUM_TASKS`, set by `srun` only:
/// `SLURM_NTASKS` is also set in a batch script that runs one process.
const LAUNCHERS: [(Launcher, [&str; 3]); 3] = [
    (
        Launcher::OpenMpi,
        [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ],
    ),
    (
        Launcher::Slurm,
        ["SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"],
    ),
    (Launcher::Torchrun, ["RANK", "WORLD_SIZE", "LOCAL_RANK"]),
];

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
    /// Which launcher's variables said so ([`Launcher::None`] when none did).
    pub launcher: Launcher,
    /// A name of this job that all its ranks share and no other job has (see
    /// [`Launch::from_vars`]); NCCL's ranks meet through a file of that name.
    pub job: Option<String>,
}

impl Launch {
    /// A process on its own.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            launcher: Launcher::None,
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
        for (launcher, [rank_var, size_var, local_var]) in LAUNCHERS {
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
            let job = get("TSM_JOB_ID").or_else(|| launcher.job(&get));
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
