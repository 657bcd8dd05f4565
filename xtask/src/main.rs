//! Project automation for tsm-rs, run as `cargo xtask <command>`.
//!
//! One binary with few dependencies, in the style of rust-analyzer's xtask: every command a
//! fresh Debian machine needs (system packages, Python references, tests, benchmarks) lives here
//! so that the README's two commands do everything.

mod bench;
mod cuda;
mod demo;
mod features;
mod fuzz;
mod python;
mod setup;
mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tsm-rs project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build, generate clips whose classes differ only in frame order, train a small TSM on the
    /// CPU, evaluate it, predict one clip and say where the outputs are (a few minutes).
    Demo,
    /// Find missing system pieces (FFmpeg dev libraries, libclang, the ffmpeg CLI, Python venv)
    /// and install them with apt-get when running as root on Debian/Ubuntu.
    Setup {
        /// Also Open MPI (`libopenmpi-dev openmpi-bin`), for `--features mpi`.
        #[arg(long)]
        mpi: bool,
    },
    /// Run the whole suite: setup (with Open MPI), Python reference outputs, the fmt check,
    /// check-features, clippy (warnings denied), then `cargo test --workspace --features cli/mpi`.
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Convert PaddleVideo `.pdparams` to a tsm-model safetensors checkpoint (runs the
    /// `convert-weights` binary of crates/paddle-weights; `--help` shows its options).
    #[command(disable_help_flag = true)]
    ConvertWeights {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz a reader of untrusted files with cargo-fuzz (libFuzzer) from its real seed files,
    /// with the memory limits enforced (installs cargo-fuzz when missing).
    Fuzz {
        /// What to fuzz: `pdparams` (paddle-weights' `.pdparams` reader) or `checkpoint`
        /// (tsm-model's checkpoint loader).
        #[arg(long, value_enum, default_value_t = fuzz::Target::Pdparams)]
        target: fuzz::Target,
        /// Executions to run (libFuzzer `-runs`).
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// Extra libFuzzer flags, e.g. `-jobs=2` or `-max_total_time=600`.
        #[arg(last = true)]
        libfuzzer_args: Vec<String>,
    },
    /// Check that tsm-cli, tsm-model's examples and the test suite build tsm-model's dependencies
    /// with the same features (so they share one build of candle-core).
    CheckFeatures,
    /// Build tsm-cli with `--features cuda` (CUDA, NCCL) into target/cuda/release. Without a
    /// CUDA toolkit here, assembles CUDA 13.0 + NCCL from PyPI first (no GPU needed) and checks
    /// that the binary loads and reports the missing GPU cleanly.
    BuildCuda,
    /// Build tsm-model's CUDA test and bench binaries (assembling CUDA as build-cuda does) and
    /// pack them with the PyTorch eager anchor and run.sh into target/gpu-check: what a machine
    /// with an NVIDIA GPU and no Rust needs to check the kernel, the model and training against
    /// the CPU and to benchmark them against PyTorch (`bash target/gpu-check/run.sh` there).
    GpuCheck,
    /// Benchmarks, each against its baseline in the same run; prints a table of ratios.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Decoding + transforms: ffmpeg CLI, the tutorial's pipeline, decord and ours, on generated
    /// UCF101-like and Kinetics-like corpora.
    Pipeline {
        /// Smaller corpora (8 + 2 videos) for a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// Training samples/s: one process against two MPI ranks on this machine (same global
    /// batch and steps). Builds tsm-cli with `--features mpi`.
    Scale {
        /// Timed training steps (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// PP-TSM R50, 8 frames at 224: eval (batch 1 and 8) and a training step (batch 2), ours
    /// against Paddle 3.3.1 on the CPU with the same thread count; then our per-layer profile,
    /// joined with OpenVINO's, and the training step by part against PyTorch's (as
    /// `model-profile` prints them).
    Model {
        /// One timed iteration per measurement instead of several.
        #[arg(long)]
        quick: bool,
        /// Threads for both sides (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Rounds of every measurement, interleaved (each round runs each engine once per
        /// case); the table gives the median and the range.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Only the profiles that `bench model` ends with: our batch-1 eval forward, step by step,
    /// joined with OpenVINO's performance counters for the same layers of our exported model
    /// (same threads): in f32 against OpenVINO's f32 (`tests/bench/onnx_engines.py
    /// openvino-f32-profile`), then, where this CPU runs our bf16 kernel, in bf16 against
    /// OpenVINO's default precision (`openvino-profile`); then a training step at batch 2 by
    /// part (convs, BN, shift, pools, activations, optimizer, rest) against PyTorch eager's in
    /// the same precision (`tests/bench/torch_eager.py --profile`).
    ModelProfile {
        /// Threads for both sides (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// OpenVINO forwards to average its counters over (after one warm-up).
        #[arg(long, default_value_t = 3)]
        iters: usize,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo => demo::run(),
        Cmd::Setup { mpi } => setup::run(mpi),
        Cmd::Test { cargo_args } => test::run(&cargo_args),
        Cmd::CheckFeatures => features::check(),
        Cmd::BuildCuda => cuda::build_cli(),
        Cmd::GpuCheck => cuda::gpu_check(),
        Cmd::ConvertWeights { args } => run_cmd(
            cargo()
                // The user's working directory is kept, so relative paths mean what they say.
                .args(["run", "--release", "--quiet", "--manifest-path"])
                .arg(project_root().join("Cargo.toml"))
                .args(["-p", "paddle-weights", "--bin"])
                .args(["convert-weights", "--"])
                .args(args),
        ),
        Cmd::Fuzz {
            target,
            runs,
            libfuzzer_args,
        } => fuzz::run(target, runs, &libfuzzer_args),
        Cmd::Bench {
            what: BenchWhat::Pipeline { quick },
        } => bench::pipeline(quick),
        Cmd::Bench {
            what: BenchWhat::Scale { steps },
        } => bench::scale(steps),
        Cmd::Bench {
            what:
                BenchWhat::Model {
                    quick,
                    threads,
                    rounds,
                },
        } => bench::model(quick, threads, rounds),
        Cmd::Bench {
            what: BenchWhat::ModelProfile { threads, iters },
        } => bench::model_profile(threads, iters),
    }
}

/// The cargo that runs this xtask (`CARGO`), so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The workspace root, from this crate's manifest directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs a command, echoing it, and fails with its exit status if it does not succeed.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", display_cmd(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display_cmd(cmd)))?;
    if !status.success() {
        bail!("`{}` failed with {status}", display_cmd(cmd));
    }
    Ok(())
}

fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `cargo xtask` command the READMEs, docs/ and the recipes' comments show parses.
    #[test]
    fn documented_commands_parse() {
        test_support::assert_documented_commands_parse("xtask", 3, |argv| {
            super::Cli::try_parse_from(argv).map(|_| ())
        });
    }
}
