//! `train-run CONFIG [--resume]`: one training run, nothing else. It is the child process that
//! `tests/resume.rs` kills at chosen moments (`tsm-cli train` is the command for users; this
//! crate's tests cannot run it, tsm-cli depends on this crate).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use train_loop::{TrainConfig, Trainer};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(config), resume) = (args.next().map(PathBuf::from), args.next()) else {
        bail!("usage: train-run CONFIG [--resume]");
    };
    let resume = match resume {
        None => false,
        Some(a) if a == "--resume" => true,
        Some(a) => bail!("unexpected argument {a:?} (usage: train-run CONFIG [--resume])"),
    };
    let cfg = TrainConfig::load(&config, &[])?;
    let out = cfg.output.dir.clone();
    Trainer::new(cfg, resume)
        .and_then(|mut t| t.run())
        .with_context(|| format!("training into {}", out.display()))?;
    Ok(())
}
