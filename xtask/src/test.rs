//! `cargo xtask test`: the whole suite, runnable on a fresh machine.

use anyhow::Result;

use crate::{cargo, features, project_root, python, run_cmd, setup};

/// The suite includes the data-parallel tests (`mpirun -np 2`), so it needs Open MPI and
/// builds the workspace with the CLI's `mpi` feature. The lints are enforced as CI would: before
/// the suite, so a warning stops it early. A failing test binary does not stop the others, so
/// one run reports every failure.
pub fn run(cargo_args: &[String]) -> Result<()> {
    setup::run(true)?;
    python::generate_references()?;
    run_cmd(
        cargo()
            .current_dir(project_root())
            .args(["fmt", "--all", "--", "--check"]),
    )?;
    features::check()?;
    run_cmd(cargo().current_dir(project_root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        "cli/mpi",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_cmd(
        cargo()
            .current_dir(project_root())
            .args([
                "test",
                "--workspace",
                "--features",
                "cli/mpi",
                "--no-fail-fast",
            ])
            .env("TSM_REFERENCE_DIR", python::reference_dir())
            .env("TSM_SHARED_DIR", python::shared_dir())
            .args(cargo_args),
    )
}
