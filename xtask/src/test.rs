//! `cargo xtask test`: the whole suite, runnable on a fresh machine.

use std::process::Command;

use anyhow::Result;

use crate::{project_root, python, run_cmd, setup};

pub fn run(cargo_args: &[String]) -> Result<()> {
    setup::run()?;
    python::generate_references()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_cmd(
        Command::new(&cargo)
            .current_dir(project_root())
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    run_cmd(
        Command::new(&cargo)
            .current_dir(project_root())
            .args(["test", "--workspace"])
            .env("TSM_REFERENCE_DIR", python::reference_dir())
            .env("TSM_SHARED_DIR", python::shared_dir())
            .args(cargo_args),
    )
}
