//! The Python side of the test suite: a cached venv under `target/` holding the reference
//! implementations (PaddlePaddle, ppvideo, the tutorial's OpenCV/PIL pipeline), and the scripts
//! in `tests/reference/` that write reference outputs for the Rust tests to compare against.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{project_root, run_cmd};

/// Where reference scripts write their outputs; Rust tests read them from here.
pub fn reference_dir() -> PathBuf {
    project_root().join("target/reference")
}

/// The venv's python, creating the venv and installing `tests/reference/requirements.txt`
/// when the venv is missing or the requirements changed since it was built.
pub fn venv_python() -> Result<PathBuf> {
    venv("pyref-venv", "tests/reference/requirements.txt")
}

/// The python of the benchmark's PyTorch venv (`tests/bench/torch-requirements.txt`), kept
/// apart from the test suite's: PyTorch's wheels are gigabytes that the tests do not need.
pub fn torch_python() -> Result<PathBuf> {
    venv("torch-venv", "tests/bench/torch-requirements.txt")
}

/// `target/NAME`'s python, (re)built when it is missing or `requirements` (relative to the
/// project root) changed since it was built.
fn venv(name: &str, requirements: &str) -> Result<PathBuf> {
    let root = project_root();
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    let req_path = root.join(requirements);
    let requirements = std::fs::read_to_string(&req_path)
        .with_context(|| format!("reading {}", req_path.display()))?;
    let stamp = venv.join(".requirements.installed");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&requirements) {
        return Ok(python);
    }
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_cmd(Command::new(&python).args(["-m", "pip", "install", "-q", "--upgrade", "pip"]))?;
    run_cmd(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(&req_path),
    )?;
    std::fs::write(&stamp, &requirements)?;
    Ok(python)
}

/// The folder holding the shared spec and media: `TSM_SHARED_DIR`, or `../shared` beside the
/// checkout (where CI and developers have it).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("TSM_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("../shared"))
}

/// Runs every `tests/reference/*.py` whose inputs changed since its last run. Each script gets
/// its own output folder as its only argument; a stamp holding the hash of the reference folder
/// marks a completed run, so an interrupted run is redone.
pub fn generate_references() -> Result<()> {
    let python = venv_python()?;
    let ref_src = project_root().join("tests/reference");
    let fingerprint = fingerprint_dir(&ref_src)?;
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&ref_src)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py") && !is_module(p))
        .collect();
    scripts.sort();
    for script in scripts {
        let stem = script.file_stem().expect("a .py file has a stem");
        let out = reference_dir().join(stem);
        let stamp = out.join(".stamp");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(&fingerprint) {
            continue;
        }
        if out.exists() {
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        run_cmd(
            Command::new(&python)
                .arg(&script)
                .arg(&out)
                .env("TSM_SHARED_DIR", shared_dir()),
        )?;
        std::fs::write(&stamp, &fingerprint)?;
    }
    Ok(())
}

/// Helper modules (`_name.py`) are imported by scripts, not run.
fn is_module(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('_'))
}

/// FNV-1a over the names and contents of the files in `dir`, in name order.
fn fingerprint_dir(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        for b in name.unwrap_or_default().bytes().chain(std::fs::read(&f)?) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}
