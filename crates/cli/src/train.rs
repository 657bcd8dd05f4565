//! `tsm-cli train`: PP-TSM training from a TOML recipe (see the `train-loop` crate).

use std::path::PathBuf;

use anyhow::{Context, Result};
use train_loop::comm::{connect, Backend, Launch};
use train_loop::{TrainConfig, Trainer};

use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  tsm-cli train -c assets/configs/pptsm_ucf101_tutorial.toml
  tsm-cli train -c assets/configs/pptsm_ucf101_tutorial.toml -o train.epochs=5 -o data.batch_size=8
  tsm-cli train -c assets/configs/pptsm_ucf101_tutorial.toml --resume
  tsm-cli train -c assets/configs/pptsm_ucf101_tutorial.toml --precision bf16
  mpirun -np 4 tsm-cli train -c assets/configs/pptsm_ucf101_tutorial.toml   (built with --features mpi)
  srun --ntasks-per-node=8 --gpus-per-node=8 tsm-cli train --device cuda -c ...   (--features cuda)

The run directory (`dir` under [output] in the recipe, or --output, which wins) receives config.toml (the resolved configuration),
metrics.jsonl (every step, epoch and validation), curves.png (its charts, as `tsm-cli plot`
draws them), epoch_NNNNN.safetensors checkpoints with their .state.safetensors training state,
and best.safetensors. --resume continues from the newest complete checkpoint there (from the
beginning when there is none yet, so a run killed at any moment, even while writing a
checkpoint, can be resumed); with the same seed and thread count (RAYON_NUM_THREADS,
data.num_workers) the result is bit-identical to an uninterrupted run.

Data parallel: started by mpirun, srun or a torchrun-style launcher (several processes), each
process trains on its shard with data.batch_size samples per step, gradients are averaged over
the processes and only rank 0 writes the run directory (which all ranks must see, for --resume;
on GPUs, NCCL's ranks also meet there, through a file named after the launcher's job id, or
TSM_JOB_ID). A checkpoint resumes with any number of processes. See docs/distributed.md.

Samples that fail to load (broken videos, missing frames) are skipped, each named in a warning
on stderr and counted in every epoch summary; more than data.max_failed_fraction of an epoch
stops the run. A NaN or infinite loss stops it naming the epoch and iteration, leaving the
checkpoints of earlier epochs as they were. The output folder is created (and written to) before
training starts, so an unwritable one is reported at once.

Exit status: 0 done; 2 done but some samples were skipped; 1 stopped by an error.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The training recipe (TOML), e.g. assets/configs/pptsm_ucf101_tutorial.toml.
    #[arg(short = 'c', long)]
    config: PathBuf,
    /// Set a config value, `section.key=value` (repeatable), as PaddleVideo's `-o`.
    #[arg(short = 'o', long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from the newest complete checkpoint in the run directory.
    #[arg(long)]
    resume: bool,
    /// The run directory (sets output.dir).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The convolutions' products: f32, or bf16 (mixed precision as PyTorch's autocast: bf16
    /// operands, f32 sums, weights and optimizer; on the CPU needs avx512_bf16, and runs on
    /// AMX where the CPU has it). Sets train.precision.
    #[arg(long, value_enum)]
    precision: Option<TrainPrecision>,
    /// Data-parallel engine: auto (when the launcher's variables say several processes: NCCL
    /// on GPUs, MPI on CPUs), none, mpi, nccl.
    #[arg(long, default_value = "auto", value_name = "BACKEND")]
    dist: Backend,
}

/// `--precision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum TrainPrecision {
    F32,
    Bf16,
}

impl TrainPrecision {
    fn name(self) -> &'static str {
        match self {
            TrainPrecision::F32 => "f32",
            TrainPrecision::Bf16 => "bf16",
        }
    }
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    let mut overrides = args.overrides;
    if let Some(dir) = &args.output {
        let dir = toml::Value::String(dir.to_string_lossy().into_owned());
        overrides.push(format!("output.dir={dir}"));
    }
    if let Some(p) = args.precision {
        overrides.push(format!("train.precision=\"{}\"", p.name()));
    }
    let cfg = TrainConfig::load(&args.config, &overrides)?;
    let out = cfg.output.dir.clone();
    let device = match global.device.trim() {
        // One process per GPU: each rank takes the GPU of its rank on the node.
        "cuda" => crate::common::cuda(Launch::from_env()?.local_rank)?,
        _ => global.device()?,
    };
    let comm = connect(args.dist, &device, &out)?;
    let summary = match Trainer::with_communicator(cfg, args.resume, comm.clone(), device)
        .and_then(|mut t| t.run())
    {
        Ok(s) => s,
        // The other ranks would wait for this one forever.
        Err(e) if comm.world_size() > 1 => {
            eprintln!(
                "tsm-cli: error: rank {} of {}: training into {}: {e}; aborting the job",
                comm.rank(),
                comm.world_size(),
                out.display()
            );
            comm.abort(1)
        }
        Err(e) => return Err(e).with_context(|| format!("training into {}", out.display())),
    };
    // Rank 0 speaks for the job (and alone wrote metrics.jsonl).
    if comm.rank() == 0 {
        let curves = out.join(crate::curves::CURVES_PNG);
        crate::curves::write(&out, &curves)
            .context("training finished, but drawing its curves failed")?;
        println!("training curves: {}", curves.display());
        let best = if summary.best_epoch > 0 {
            format!(
                ", best top1 {:.5} at epoch {}",
                summary.best_top1, summary.best_epoch
            )
        } else {
            String::new()
        };
        let skipped = if summary.failed > 0 {
            format!(
                "; {} sample loads skipped over all epochs (each named in a warning above)",
                summary.failed
            )
        } else {
            String::new()
        };
        println!(
            "done: {} epochs{best}; final weights {}{skipped}",
            summary.epochs,
            summary.final_checkpoint.display()
        );
    }
    Ok(if summary.failed > 0 {
        Outcome::SomeInputsFailed
    } else {
        Outcome::Success
    })
}
