//! The CUDA builds, on a machine with or without CUDA:
//! - `cargo xtask build-cuda`: tsm-cli with `--features cuda` (candle's CUDA backend, NCCL
//!   between GPUs);
//! - `cargo xtask gpu-check`: the one folder a GPU machine needs to check and measure the model
//!   on CUDA (`target/gpu-check`: the CUDA test binary, the bench binary, the PyTorch anchor and
//!   `run.sh`, which runs them all).
//!
//! With a CUDA toolkit on the machine (`CUDA_HOME`, or `/usr/local/cuda`) it is used as it is.
//! Without one, a CUDA 13.0 + NCCL 2.30 build tree is assembled from NVIDIA's PyPI wheels under
//! `target/cuda-toolkit` (no GPU needed), with a link-time stub of the driver library: every
//! driver call of the stub fails with "no device", so the built binaries can be run here to check
//! that they load and fail cleanly, and the stub must never be shipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, project_root, run_cmd};

/// Pinned together: cudarc 0.19 accepts nvcc up to 13.4, PTX from a newer nvcc does not load on
/// driver 580 (CUDA 13.0), NCCL 2.30 is the API of cudarc's `nccl` feature, and cuDNN 9 that of
/// its `cudnn` feature (bindings of 9.21; any 9.x at run time, e.g. PyTorch's).
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
    "nvidia-cudnn-cu13==9.28.1.4",
];

/// What travels to a GPU machine with the project's tree: the device machines take 64 MiB in all.
const GPU_CHECK_LIMIT: u64 = 56 << 20;

/// The toolkit the CUDA builds use.
struct Toolkit {
    home: PathBuf,
    /// With the assembled toolkit: the library path that runs its binaries here, against the
    /// driver stub.
    stub_libs: Option<String>,
}

impl Toolkit {
    fn find_or_assemble() -> Result<Self> {
        let root = project_root();
        let system = std::env::var_os("CUDA_HOME")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/usr/local/cuda")))
            .filter(|home| home.join("bin/nvcc").exists());
        let toolkit = match system {
            Some(home) => Self {
                home,
                stub_libs: None,
            },
            None => {
                let prefix = root.join("target/cuda-toolkit");
                let home = assemble(&prefix)?;
                let libs = format!(
                    "{}:{}",
                    prefix.join("stub-runtime").display(),
                    home.join("lib64").display()
                );
                Self {
                    home,
                    stub_libs: Some(libs),
                }
            }
        };
        eprintln!("xtask: CUDA toolkit {}", toolkit.home.display());
        Ok(toolkit)
    }

    /// `cargo` building into target/cuda with this toolkit, for Hopper unless
    /// `CUDA_COMPUTE_CAP` says otherwise (candle's kernels are compiled for one architecture).
    fn cargo(&self) -> Command {
        let path = format!(
            "{}:{}",
            self.home.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = cargo();
        cmd.current_dir(project_root())
            .env("CARGO_TARGET_DIR", project_root().join("target/cuda"))
            .env("CUDA_HOME", &self.home)
            .env("PATH", path);
        if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
            cmd.env("CUDA_COMPUTE_CAP", "90");
        }
        cmd
    }
}

/// `cargo xtask build-cuda`: builds `target/cuda/release/tsm-cli`; with the assembled toolkit,
/// also runs it once to check that it loads its libraries and reports the missing GPU.
pub fn build_cli() -> Result<()> {
    let toolkit = Toolkit::find_or_assemble()?;
    run_cmd(
        toolkit
            .cargo()
            .args(["build", "--release", "-p", "cli", "--features", "cuda"]),
    )?;
    let bin = project_root().join("target/cuda/release/tsm-cli");
    eprintln!("xtask: build-cuda: built {}", bin.display());
    if let Some(libs) = &toolkit.stub_libs {
        check_loads_without_gpu(&bin, libs)?;
    }
    Ok(())
}

/// `cargo xtask gpu-check`: builds tsm-model's CUDA test binary and bench binary, and packs them
/// with the PyTorch anchor and `run.sh` into `target/gpu-check` (stripped, under the size the
/// device machines take).
pub fn gpu_check() -> Result<()> {
    let root = project_root();
    let toolkit = Toolkit::find_or_assemble()?;
    let model = ["-p", "tsm-model", "--features", "cuda"];
    let tests = toolkit
        .cargo()
        .args([
            "test",
            "--release",
            "--test",
            "cuda",
            "--no-run",
            "--message-format=json",
        ])
        .args(model)
        .output()
        .context("building tsm-model's CUDA tests")?;
    if !tests.status.success() {
        bail!(
            "building tsm-model's CUDA tests: {}",
            String::from_utf8_lossy(&tests.stderr)
        );
    }
    let test_bin = test_executable(&String::from_utf8_lossy(&tests.stdout), "cuda")
        .context("cargo named no executable for tsm-model's `cuda` test")?;
    let dir = root.join("target/gpu-check");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let strip = |from: &Path, to: &str| {
        run_cmd(Command::new("strip").arg("-o").arg(bin.join(to)).arg(from))
    };
    strip(&test_bin, "cuda_tests")?;
    // the bench twice: candle's own CUDA convolutions, and cuDNN's forward (feature `cudnn`)
    for (features, name) in [("cuda", "model_bench"), ("cudnn", "model_bench_cudnn")] {
        run_cmd(toolkit.cargo().args([
            "build",
            "--release",
            "--example",
            "model_bench",
            "-p",
            "tsm-model",
            "--features",
            features,
        ]))?;
        strip(&root.join("target/cuda/release/examples/model_bench"), name)?;
    }
    if let Some(libs) = &toolkit.stub_libs {
        check_test_binary_loads(&bin.join("cuda_tests"), libs)?;
    }
    // candle's kernels make each binary about 50 MiB, mostly PTX text: xz takes them to a fifth
    run_cmd(
        Command::new("tar")
            .env("XZ_OPT", "-6 -T0")
            .arg("-cJf")
            .arg(dir.join("bin.tar.xz"))
            .arg("-C")
            .arg(&dir)
            .arg("bin"),
    )?;
    std::fs::remove_dir_all(&bin)?;
    for (from, to) in [
        ("tests/bench/torch_eager.py", "torch_eager.py"),
        ("tests/bench/gpu_check.sh", "run.sh"),
    ] {
        std::fs::copy(root.join(from), dir.join(to)).with_context(|| from.to_string())?;
    }
    let size: u64 = std::fs::read_dir(&dir)?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<Result<u64>>()?;
    if size > GPU_CHECK_LIMIT {
        bail!(
            "{} is {:.1} MiB, over the {} MiB a device machine takes with the project",
            dir.display(),
            size as f64 / 1048576.0,
            GPU_CHECK_LIMIT >> 20
        );
    }
    eprintln!(
        "xtask: gpu-check: {} ({:.1} MiB). On a machine with an NVIDIA GPU, from the project's \
         root: `bash target/gpu-check/run.sh` (results in $OUT, or target/gpu-check/results)",
        dir.display(),
        size as f64 / 1048576.0
    );
    Ok(())
}

/// The test executable named `name` in cargo's `--message-format=json` output.
fn test_executable(json: &str, name: &str) -> Option<PathBuf> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| {
            l.contains(&format!(
                "\"kind\":[\"test\"],\"crate_types\":[\"bin\"],\"name\":\"{name}\""
            ))
        })
        .find_map(|l| {
            let rest = l.split("\"executable\":\"").nth(1)?;
            Some(PathBuf::from(rest.split('"').next()?))
        })
}

/// Lists the CUDA tests with the stub driver: the binary must start (every library found).
fn check_test_binary_loads(bin: &Path, libs: &str) -> Result<()> {
    let out = Command::new(bin)
        .arg("--list")
        .env("LD_LIBRARY_PATH", libs)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let list = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !list.contains("shift_kernel_equals_the_cpu_op: test") {
        bail!(
            "{} --list with the stub driver: {:?}, {list}{}",
            bin.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "xtask: gpu-check: the test binary loads its CUDA libraries here and lists {} tests",
        list.lines().filter(|l| l.ends_with(": test")).count()
    );
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

/// The CUDA build tree under `prefix` (made once for a set of wheels): returns its `CUDA_HOME`.
fn assemble(prefix: &Path) -> Result<PathBuf> {
    let home = prefix.join("cuda");
    let done = prefix.join(".complete");
    let wheels = WHEELS.join("\n");
    if std::fs::read_to_string(&done).is_ok_and(|made| made == wheels) {
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
    for dir in [
        cu.join("lib"),
        nvidia.join("nccl/lib"),
        nvidia.join("cudnn/lib"),
    ] {
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
    std::fs::write(&done, wheels)?;
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

    #[test]
    fn test_executable_is_read_from_cargo_messages() {
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"crate_types":["lib"],"name":"tsm_model"},"executable":null}"#;
        let test = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"crate_types":["bin"],"name":"cuda","src_path":"x"},"executable":"/t/deps/cuda-0f"}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"crate_types":["bin"],"name":"model"},"executable":"/t/deps/model-1a"}"#;
        let json = [
            lib,
            other,
            test,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            super::test_executable(&json, "cuda"),
            Some(std::path::PathBuf::from("/t/deps/cuda-0f"))
        );
        assert_eq!(super::test_executable(lib, "cuda"), None);
    }
}
