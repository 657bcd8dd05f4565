//! `cargo xtask fuzz`: the long libFuzzer runs over the readers of untrusted files, the
//! `.pdparams` reader and the checkpoint loader (the short ones, seeded mutations of the same
//! seeds, are crates/paddle-weights/tests/hostile.rs and
//! crates/tsm-model/tests/hostile_checkpoint.rs, in the normal suite).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;

use crate::{cargo, project_root, run_cmd};

/// Heap limits given to libFuzzer: the whole process (each target itself checks its
/// per-input bound, `paddle_weights::max_heap_bytes` or `tsm_model::max_load_heap_bytes`), and
/// any single allocation.
const RSS_LIMIT_MB: u32 = 512;
const MALLOC_LIMIT_MB: u32 = 64;
/// Inputs up to 64 KiB: 40 times the `.pdparams` seeds, enough for every opcode with long
/// payloads, and room for a whole ResNet-18 checkpoint header (about 14 KiB) and then some.
const MAX_LEN: u32 = 65536;

/// A fuzz target: a crate's `fuzz/` workspace and the libFuzzer binary in it.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Target {
    /// paddle-weights' `.pdparams` reader (`crates/paddle-weights/fuzz`).
    Pdparams,
    /// tsm-model's checkpoint loader, bytes to model (`crates/tsm-model/fuzz`).
    Checkpoint,
}

impl Target {
    /// The fuzz crate's directory, from the project root, and its target's name.
    fn crate_and_bin(self) -> (&'static str, &'static str) {
        match self {
            Target::Pdparams => ("crates/paddle-weights/fuzz", "pdparams"),
            Target::Checkpoint => ("crates/tsm-model/fuzz", "checkpoint"),
        }
    }
}

pub fn run(which: Target, runs: u64, extra: &[String]) -> Result<()> {
    let root = project_root();
    let has_fuzz = cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        run_cmd(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    let (fuzz_crate, bin) = which.crate_and_bin();
    let fuzz_dir = root.join(fuzz_crate);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("fuzz");
    let corpus = target.join("corpus").join(bin);
    let artifacts = target.join("artifacts").join(bin);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut artifact_prefix = OsString::from("-artifact_prefix=");
    artifact_prefix.push(&artifacts);
    artifact_prefix.push("/");
    run_cmd(
        cargo()
            .current_dir(&root)
            // cargo-fuzz passes -Z flags: allowed on the pinned stable toolchain this way.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .arg("--target-dir")
            .arg(target.join("build"))
            .arg(bin)
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds"))
            .arg("--")
            .arg(format!("-runs={runs}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .arg(artifact_prefix)
            .args(extra),
    )
}
