//! `cargo xtask build-cuda`: tsm-cli with `--features cuda` (candle's CUDA backend, NCCL between
//! GPUs), on a machine with or without CUDA.
//!
//! With a CUDA toolkit on the machine (`CUDA_HOME`, or `/usr/local/cuda`) it is used as it is.
//! Without one, a CUDA 13.0 + NCCL 2.30 build tree is assembled from NVIDIA's PyPI wheels under
//! `target/cuda-toolkit` (no GPU needed), with a link-time stub of the driver library: every
//! driver call of the stub fails with "no device", so the built binary can be run here to check
//! that it loads and fails cleanly, and the stub must never be shipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, project_root, run_cmd};

/// Pinned together: cudarc 0.19 accepts nvcc up to 13.4, PTX from a newer nvcc does not load on
/// driver 580 (CUDA 13.0), and NCCL 2.30 is the API of cudarc's `nccl` feature.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
    "nvidia-nccl-cu13==2.30.7",
];

/// Builds `target/cuda/release/tsm-cli`; with the assembled toolkit, also runs it once to
/// check that it loads its libraries and reports the missing GPU as an error.
pub fn run() -> Result<()> {
    let root = project_root();
    let system = std::env::var_os("CUDA_HOME")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/local/cuda")))
        .filter(|home| home.join("bin/nvcc").exists());
    let (home, run_libs) = match system {
        Some(home) => (home, None),
        None => {
            let prefix = root.join("target/cuda-toolkit");
            let home = assemble(&prefix)?;
            let libs = format!(
                "{}:{}",
                prefix.join("stub-runtime").display(),
                home.join("lib64").display()
            );
            (home, Some(libs))
        }
    };
    eprintln!("xtask: build-cuda: CUDA toolkit {}", home.display());
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let target = root.join("target/cuda");
    let mut build = cargo();
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "cli", "--features", "cuda"])
        .env("CARGO_TARGET_DIR", &target)
        .env("CUDA_HOME", &home)
        .env("PATH", path);
    // Hopper unless told otherwise (candle's kernels are compiled for one architecture).
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        build.env("CUDA_COMPUTE_CAP", "90");
    }
    run_cmd(&mut build)?;
    let bin = target.join("release/tsm-cli");
    eprintln!("xtask: build-cuda: built {}", bin.display());
    if let Some(libs) = run_libs {
        check_loads_without_gpu(&bin, &libs)?;
    }
    Ok(())
}

/// Runs `train --device cuda` with the stub driver: the binary must start (every library
/// found) and stop with a one-line error about the CUDA device, not a crash.
fn check_loads_without_gpu(bin: &Path, libs: &str) -> Result<()> {
    let recipe = project_root().join("assets/configs/demo_motion.toml");
    let out = Command::new(bin)
        .args(["train", "--device", "cuda", "-c"])
        .arg(&recipe)
        .env("LD_LIBRARY_PATH", libs)
        .env_remove("RUST_BACKTRACE")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1) || !err.contains("opening CUDA device 0") {
        bail!(
            "{} with the stub driver should fail to open CUDA device 0 (exit 1); it exited with \
             {:?}: {err}",
            bin.display(),
            out.status.code()
        );
    }
    eprintln!(
        "xtask: build-cuda: the binary loads its CUDA and NCCL libraries and, with no GPU here, \
         says: {}",
        err.trim()
    );
    Ok(())
}

/// The CUDA build tree under `prefix` (made once): returns its `CUDA_HOME`.
fn assemble(prefix: &Path) -> Result<PathBuf> {
    let home = prefix.join("cuda");
    let done = prefix.join(".complete");
    if done.exists() {
        return Ok(home);
    }
    eprintln!(
        "xtask: build-cuda: no CUDA toolkit here; assembling CUDA 13.0 + NCCL from PyPI in {}",
        prefix.display()
    );
    let venv = prefix.join("venv");
    run_cmd(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--no-deps"])
            .args(WHEELS),
    )?;
    let nvidia = python_path(&venv, "import nvidia, os; print(nvidia.__path__[0])")?;
    let cu = nvidia.join("cu13");
    let lib64 = home.join("lib64");
    std::fs::create_dir_all(lib64.join("stubs"))?;
    for d in ["bin", "include", "nvvm"] {
        symlink(&cu.join(d), &home.join(d))?;
    }
    // The wheels ship versioned sonames only; the linker wants the plain lib*.so names too.
    for dir in [cu.join("lib"), nvidia.join("nccl/lib")] {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let Some((stem, _)) = name.split_once(".so.") else {
                continue;
            };
            symlink(&path, &lib64.join(&*name))?;
            let plain = lib64.join(format!("{stem}.so"));
            if !plain.exists() {
                symlink(&path, &plain)?;
            }
        }
    }
    let stub = lib64.join("stubs/libcuda.so");
    driver_stub(
        &home.join("include/cuda.h"),
        &prefix.join("libcuda_stub.c"),
        &stub,
    )?;
    std::fs::create_dir_all(prefix.join("stub-runtime"))?;
    symlink(&stub, &prefix.join("stub-runtime/libcuda.so.1"))?;
    std::fs::write(&done, "")?;
    Ok(home)
}

/// A shared library exporting every `cu*` function `cuda.h` declares, each returning
/// `CUDA_ERROR_NO_DEVICE` (100): the driver is in no wheel, only on GPU machines.
fn driver_stub(header: &Path, source: &Path, lib: &Path) -> Result<()> {
    let out = Command::new("gcc")
        .args(["-E", "-P", "-x", "c", "-I"])
        .arg(header.parent().unwrap_or(Path::new(".")))
        .arg(header)
        .output()
        .context("running gcc -E on cuda.h")?;
    if !out.status.success() {
        bail!(
            "gcc -E {}: {}",
            header.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let c: String = driver_functions(&text)
        .iter()
        .map(|f| format!("int {f}(void){{return 100;}}\n"))
        .collect();
    std::fs::write(source, c)?;
    run_cmd(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(lib)
            .arg("-Wl,-soname,libcuda.so.1")
            .arg(source),
    )
}

/// Names `cu` + capital letter + identifier characters that are followed by `(`.
fn driver_functions(c: &str) -> BTreeSet<&str> {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = c.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let name = &c[start..i];
        let next = c[i..].trim_start().as_bytes().first();
        let capital = name.as_bytes().get(2).is_some_and(u8::is_ascii_uppercase);
        if name.starts_with("cu") && capital && next == Some(&b'(') {
            names.insert(name);
        }
    }
    names
}

fn python_path(venv: &Path, code: &str) -> Result<PathBuf> {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", code])
        .output()?;
    if !out.status.success() {
        bail!("python: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_functions_are_the_called_cu_names() {
        let c = "CUresult cuInit(unsigned int Flags);\n\
                 CUresult cuDeviceGet (CUdevice *device, int ordinal);\n\
                 typedef struct CUctx_st *CUcontext; int cudaMalloc(void); cu_x(1);";
        let names: Vec<&str> = super::driver_functions(c).into_iter().collect();
        assert_eq!(names, ["cuDeviceGet", "cuInit"]);
    }
}
