//! `convert-weights` (run as `cargo xtask convert-weights`): PaddleVideo `.pdparams` ->
//! tsm-model safetensors, or `--inspect` to list a file's keys, dtypes and shapes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Converts PaddleVideo `.pdparams` weights into a tsm-model safetensors checkpoint.
#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask convert-weights",
    after_help = "Example:\n  cargo xtask convert-weights ppTSM_k400_uniform.pdparams pptsm_k400.safetensors --num-seg 8"
)]
struct ConvertArgs {
    /// The `.pdparams` file (PaddleVideo PP-TSM weights, or an ImageNet ResNet*_vd backbone).
    input: PathBuf,
    /// The safetensors checkpoint to write (not used with --inspect).
    output: Option<PathBuf>,
    /// The checkpoint to write, as an option: the same as OUTPUT.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "OUTPUT",
        conflicts_with = "output"
    )]
    out: Option<PathBuf>,
    /// List the file's keys, dtypes and shapes instead of converting.
    #[arg(long)]
    inspect: bool,
    /// Frames per clip the model will run on (Paddle files do not record it).
    #[arg(long, default_value_t = 8)]
    num_seg: usize,
    /// Classes: `auto` takes them from head.fc; a number is checked against it.
    #[arg(long, default_value = "auto")]
    num_classes: String,
    /// ResNet depth: `auto` infers it from the block names; a number is checked against them.
    #[arg(long, default_value = "auto")]
    depth: String,
}

fn auto_or_number(flag: &str, v: &str) -> Result<Option<usize>> {
    if v == "auto" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .with_context(|| format!("--{flag} must be `auto` or a number, not `{v}`"))
}

fn main() -> ExitCode {
    match run(ConvertArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: ConvertArgs) -> Result<()> {
    if args.inspect {
        let entries = paddle_weights::inspect(&args.input)?;
        for (key, dtype, shape) in &entries {
            println!("{key}\t{dtype}\t{shape:?}");
        }
        eprintln!("{} arrays", entries.len());
        return Ok(());
    }
    let Some(output) = args.output.as_ref().or(args.out.as_ref()) else {
        bail!("an output path is required (or pass --inspect)");
    };
    let opts = paddle_weights::ConvertOptions {
        num_seg: args.num_seg,
        num_classes: auto_or_number("num-classes", &args.num_classes)?,
        depth: auto_or_number("depth", &args.depth)?,
    };
    let report = paddle_weights::convert_file(&args.input, output, &opts)
        .with_context(|| format!("converting {}", args.input.display()))?;
    print!("{report}");
    println!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every `convert-weights` command the docs show (as `cargo xtask convert-weights ...`)
    /// parses with the real parser.
    #[test]
    fn documented_commands_parse() {
        test_support::assert_documented_commands_parse("convert-weights", 1, |argv| {
            super::ConvertArgs::try_parse_from(argv).map(|_| ())
        });
    }
}
