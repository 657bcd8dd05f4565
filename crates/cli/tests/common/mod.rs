//! Training runs of the demo recipe on generated motion clips, shared by the tests that train.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_support::motion::MotionSet;

/// `assets/configs/demo_motion.toml`, the recipe `cargo xtask demo` trains with.
pub fn demo_recipe() -> PathBuf {
    test_support::project_root().join("assets/configs/demo_motion.toml")
}

/// `tsm-cli train` with the demo recipe on `set` into `run`, with more `-o` overrides (its
/// number of classes and data paths are set here). Two threads, so runs repeat exactly.
pub fn train_on_motion(set: &MotionSet, run: &Path, overrides: &[String]) -> Output {
    let out = train_command(set, run, overrides).output().unwrap();
    assert!(
        out.status.success(),
        "tsm-cli train failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The command [`train_on_motion`] runs, for a test that runs it its own way.
pub fn train_command(set: &MotionSet, run: &Path, overrides: &[String]) -> Command {
    let mut o = vec![
        format!("model.num_classes={}", set.classes),
        format!("data.train_list={}", set.train_list.display()),
        format!("data.valid_list={}", set.val_list.display()),
        format!("data.list.root={}", set.root.display()),
    ];
    o.extend(overrides.iter().cloned());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsm-cli"));
    cmd.arg("train").arg("-c").arg(demo_recipe());
    for v in &o {
        cmd.args(["-o", v]);
    }
    cmd.arg("--output")
        .arg(run)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_BACKTRACE");
    cmd
}

/// The `val` records' top-1 of a run's `metrics.jsonl`, in order.
pub fn val_top1(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "val")
        .map(|v| v["top1"].as_f64().unwrap())
        .collect()
}

/// Runs the real `tsm-cli` binary (no backtraces: errors must read as users see them).
pub fn tsm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// [`tsm`] on two threads, as the training runs (so results repeat exactly).
pub fn tsm_with_threads(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `tsm-cli eval` of `weights` on `set`'s validation clips (the demo recipe's sampling and
/// pipeline), writing into `out`: the confusion matrix, `[true][predicted]` counts.
pub fn val_confusion(set: &MotionSet, weights: &Path, out: &Path) -> Vec<Vec<usize>> {
    let o = Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .arg("eval")
        .arg("-c")
        .arg(demo_recipe())
        .arg("--weights")
        .arg(weights)
        .arg("--list")
        .arg(&set.val_list)
        .arg("--root")
        .arg(&set.root)
        .arg("--labels")
        .arg(&set.labels)
        .arg("--out")
        .arg(out)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tsm-cli eval failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A header line, then `class,count,count,...` per true class.
    std::fs::read_to_string(out.join("confusion.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// Runs `tsm-cli args`, returning its stdout and peak resident set size in KiB (from wait4).
// The child is reaped by wait4, which clippy does not see.
#[allow(clippy::zombie_processes)]
pub fn peak_rss_kib(args: &[&str]) -> (String, i64) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: `rusage` is plain old data that wait4 fills in; `child` is ours and not yet
    // reaped (std's Child is not used to wait for it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let status = std::process::ExitStatus::from_raw(status);
    assert_eq!(status.code(), Some(0), "{args:?}: {status}");
    (stdout, usage.ru_maxrss)
}
