//! `cargo xtask setup`: find the system pieces the build and tests need, install what is missing.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::run_cmd;

/// One thing the project needs from the system, how to detect it and which Debian package has it.
struct Requirement {
    what: &'static str,
    present: fn() -> bool,
    debian_packages: &'static [&'static str],
}

fn pkg_config(lib: &str) -> bool {
    Command::new("pkg-config")
        .args(["--exists", lib])
        .status()
        .is_ok_and(|s| s.success())
}

fn ffmpeg_dev() -> bool {
    [
        "libavcodec",
        "libavformat",
        "libavutil",
        "libswscale",
        "libavfilter",
        "libavdevice",
        "libswresample",
    ]
    .iter()
    .all(|l| pkg_config(l))
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

/// bindgen (behind ffmpeg-sys) loads libclang at build time.
fn libclang() -> bool {
    if std::env::var_os("LIBCLANG_PATH").is_some() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir("/usr/lib") else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        name.to_string_lossy().starts_with("llvm-") && e.path().join("lib/libclang.so").exists()
    }) || Path::new("/usr/lib/x86_64-linux-gnu/libclang.so").exists()
}

fn python_venv() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|s| s.success())
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        what: "pkg-config",
        present: || on_path("pkg-config"),
        debian_packages: &["pkg-config"],
    },
    Requirement {
        what: "FFmpeg development libraries",
        present: ffmpeg_dev,
        debian_packages: &[
            "libavcodec-dev",
            "libavformat-dev",
            "libavutil-dev",
            "libswscale-dev",
            "libavfilter-dev",
            "libavdevice-dev",
            "libswresample-dev",
        ],
    },
    Requirement {
        what: "libclang (for bindgen)",
        present: libclang,
        debian_packages: &["clang", "libclang-dev"],
    },
    Requirement {
        what: "protoc (candle-onnx's ONNX types, for tsm-model's `onnx` feature)",
        present: || on_path("protoc"),
        debian_packages: &["protobuf-compiler"],
    },
    Requirement {
        what: "the ffmpeg CLI (test media generation)",
        present: || on_path("ffmpeg") && on_path("ffprobe"),
        debian_packages: &["ffmpeg"],
    },
    Requirement {
        what: "python3 with venv (reference outputs)",
        present: python_venv,
        debian_packages: &["python3", "python3-venv"],
    },
];

/// MPI for data-parallel training (`--features mpi`, and the suite's `mpirun` tests): the
/// library with its headers and pkg-config file, and the launcher.
const MPI: Requirement = Requirement {
    what: "Open MPI (library, headers, mpirun)",
    present: || pkg_config("ompi-c") && on_path("mpirun"),
    debian_packages: &["libopenmpi-dev", "openmpi-bin"],
};

/// Checks every requirement (and Open MPI's with `mpi`); installs the missing ones with
/// apt-get when that is possible.
pub fn run(mpi: bool) -> Result<()> {
    let wanted = REQUIREMENTS.iter().chain(mpi.then_some(&MPI));
    let missing: Vec<&Requirement> = wanted.clone().filter(|r| !(r.present)()).collect();
    if missing.is_empty() {
        eprintln!("xtask: setup: all system requirements present");
        return Ok(());
    }
    let packages: Vec<&str> = missing
        .iter()
        .flat_map(|r| r.debian_packages.iter().copied())
        .collect();
    for r in &missing {
        eprintln!("xtask: setup: missing {}", r.what);
    }
    let command = format!("apt-get install -y {}", packages.join(" "));
    let debian = Path::new("/etc/debian_version").exists();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(debian && root && on_path("apt-get")) {
        bail!(
            "missing system packages; install them with:\n    sudo apt-get update && sudo {command}"
        );
    }
    run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = wanted.filter(|r| !(r.present)()).map(|r| r.what).collect();
    if !still.is_empty() {
        bail!("still missing after apt-get: {}", still.join(", "));
    }
    Ok(())
}
