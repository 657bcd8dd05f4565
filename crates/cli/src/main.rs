//! `tsm-cli`: PP-TSM video classification from the command line.
//!
//! A thin binary over the workspace's libraries: `video-io` reads and samples, `augment`
//! transforms, `tsm-model` classifies. Each command is one module with an `Args` struct and a
//! `run(args, &Global) -> Result<Outcome>`; adding a command is a module, an enum variant and a
//! match arm.

mod common;
mod curves;
mod eval;
mod export;
mod info;
mod labels;
mod plot;
mod predict;
mod preprocess;
mod timeline;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status: 0 when everything succeeded; 2 when the command finished but some inputs \
(videos that failed to decode) were skipped, each listed on stderr; 1 on an error that stopped \
the command (printed as one line; set RUST_BACKTRACE=1 for a backtrace).

Example:
  tsm-cli predict --weights pptsm_k400.safetensors --labels assets/labels/kinetics400.txt clip.mp4";

#[derive(Parser, Debug)]
#[command(
    name = "tsm-cli",
    version,
    about = "Classify, evaluate and inspect PP-TSM video models",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command accepts, before or after its name.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Where the model runs: `cpu`, or `cuda:N` (a build with the `cuda` feature); `train` also
    /// takes `cuda`, the GPU of the process's local rank (one process per GPU).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Top-k classes and softmax scores of videos (files or folders of them).
    #[command(after_help = predict::AFTER_HELP)]
    Predict(predict::Args),
    /// Accuracy of a model on an index list: top-1, top-5, mean class accuracy, confusion matrix.
    #[command(after_help = eval::AFTER_HELP)]
    Eval(eval::Args),
    /// Write the exact input tensor the model sees for a video (and a contact sheet of it).
    #[command(after_help = preprocess::AFTER_HELP)]
    Preprocess(preprocess::Args),
    /// Architecture, classes, parameters, FLOPs and metadata of a checkpoint.
    #[command(after_help = info::AFTER_HELP)]
    Info(info::Args),
    /// Train or fine-tune PP-TSM from a TOML recipe (PaddleVideo's); resumable.
    #[command(after_help = train::AFTER_HELP)]
    Train(train::Args),
    /// Training curves (loss, learning rate, top-1, top-5) of a run directory as a PNG.
    #[command(after_help = curves::AFTER_HELP)]
    Plot(curves::Args),
    /// Write the model as ONNX (BatchNorm folded, preprocessing in its metadata) for serving.
    #[command(after_help = export::AFTER_HELP)]
    Export(export::Args),
    /// Classes over time in a long video, a pipe or a live stream: windows, segments, a PNG.
    #[command(after_help = timeline::AFTER_HELP)]
    Timeline(timeline::Args),
}

/// How a command that did not fail outright ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every input was processed.
    Success,
    /// Some inputs were skipped (and reported); the others were processed.
    SomeInputsFailed,
}

fn main() -> ExitCode {
    tsm_model::keep_freed_memory();
    match run() {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeInputsFailed) => ExitCode::from(2),
        Err(e) => {
            // `{:?}` adds anyhow's cause list and, when captured, the backtrace.
            if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("tsm-cli: error: {e:?}");
            } else {
                eprintln!("tsm-cli: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Outcome> {
    let cli = Cli::parse();
    match cli.command {
        Command::Predict(args) => predict::run(args, &cli.global),
        Command::Eval(args) => eval::run(args, &cli.global),
        Command::Preprocess(args) => preprocess::run(args, &cli.global),
        Command::Info(args) => info::run(args, &cli.global),
        Command::Train(args) => train::run(args, &cli.global),
        Command::Plot(args) => curves::run(args, &cli.global),
        Command::Export(args) => export::run(args, &cli.global),
        Command::Timeline(args) => timeline::run(args, &cli.global),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `tsm-cli` command the READMEs, docs/ and the recipes' comments show parses with
    /// the real parser.
    #[test]
    fn documented_commands_parse() {
        test_support::assert_documented_commands_parse("tsm-cli", 8, |argv| {
            super::Cli::try_parse_from(argv).map(|_| ())
        });
    }
}
