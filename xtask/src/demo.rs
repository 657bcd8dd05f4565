//! `cargo xtask demo`: from a fresh clone to a trained, evaluated PP-TSM in minutes on a CPU.
//!
//! Builds `tsm-cli` and the motion-clip generator (release), generates four classes of clips
//! that differ only in frame order (test-support's `motion` module), trains a ResNet-18 TSM with
//! `assets/configs/demo_motion.toml`, evaluates it (confusion matrix), predicts one clip and
//! prints where everything is, with the time each step took.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, display_cmd, project_root, run_cmd, setup};

/// The recipe, relative to the project root (its paths point into `target/demo`).
const CONFIG: &str = "assets/configs/demo_motion.toml";
/// The clip the demo predicts: a validation clip of class `move_left`.
const PREDICT_CLIP: &str = "val/00001_move_left.avi";

pub fn run() -> Result<()> {
    let started = Instant::now();
    let root = project_root();
    let demo = root.join("target/demo");
    let data = demo.join("data");
    let run_dir = demo.join("run");
    let eval_dir = demo.join("eval");
    let mut times: Vec<(&str, Duration)> = Vec::new();
    let mut step = |name, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        eprintln!("\nxtask demo: {name}");
        let t = Instant::now();
        f()?;
        times.push((name, t.elapsed()));
        Ok(())
    };

    step("setup (system packages)", &mut || setup::run(false))?;
    step(
        "release build of tsm-cli and the clip generator",
        &mut || {
            run_cmd(cargo().current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "cli",
                "--bin",
                "tsm-cli",
                "-p",
                "test-support",
                "--example",
                "motion_clips",
            ]))
        },
    )?;
    let release = target_dir(&root).join("release");
    let tsm_cli = release.join("tsm-cli");
    let tsm = |args: &[&str]| {
        let mut c = Command::new(&tsm_cli);
        c.current_dir(&root).args(args);
        c
    };
    step("generate the motion clips", &mut || {
        run_cmd(
            Command::new(release.join("examples/motion_clips"))
                .current_dir(&root)
                .arg("--out")
                .arg(&data),
        )
    })?;
    if run_dir.exists() {
        // A fresh run each time: train would otherwise append to an old metrics.jsonl.
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("removing the old run {}", run_dir.display()))?;
    }
    step("train (tsm-cli train)", &mut || {
        run_cmd(&mut tsm(&["train", "-c", CONFIG]))
    })?;
    let best = run_dir.join("best.safetensors");
    let labels = data.join("labels.txt");
    let mut eval_out = String::new();
    step("evaluate (tsm-cli eval)", &mut || {
        eval_out = run_capture(
            tsm(&["eval", "-c", CONFIG])
                .arg("--weights")
                .arg(&best)
                .arg("--list")
                .arg(data.join("val.txt"))
                .arg("--root")
                .arg(&data)
                .arg("--labels")
                .arg(&labels)
                .arg("--out")
                .arg(&eval_dir),
        )?;
        Ok(())
    })?;
    step("predict one clip (tsm-cli predict)", &mut || {
        run_cmd(
            tsm(&["predict", "-c", CONFIG])
                .arg("--weights")
                .arg(&best)
                .arg("--labels")
                .arg(&labels)
                .arg(data.join(PREDICT_CLIP)),
        )
    })?;

    let top1 = eval_out
        .lines()
        .find(|l| l.starts_with("top-1:"))
        .context("tsm-cli eval printed no top-1 line")?;
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    println!("\n== tsm-rs demo: PP-TSM ResNet-18 on clips that differ only in frame order ==");
    println!(
        "validation {top1} (4 classes: chance is 0.25, a model blind to frame order gets at most 0.5)"
    );
    println!("checkpoint        {}", rel(&best));
    println!("metrics           {}", rel(&run_dir.join("metrics.jsonl")));
    println!("training curves   {}", rel(&run_dir.join("curves.png")));
    println!(
        "confusion matrix  {} ({})",
        rel(&eval_dir.join("confusion.png")),
        rel(&eval_dir.join("confusion.csv"))
    );
    println!(
        "data set          {} (labels.txt, train.txt, val.txt)",
        rel(&data)
    );
    println!("time:");
    for (name, d) in &times {
        println!("  {:>6.1} s  {name}", d.as_secs_f64());
    }
    println!("  {:>6.1} s  in all", started.elapsed().as_secs_f64());
    Ok(())
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR` or `target/`).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// Runs a command, echoing it and its output, and returns its stdout.
fn run_capture(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: $ {}", display_cmd(cmd));
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", display_cmd(cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("`{}` failed with {}", display_cmd(cmd), out.status);
    }
    Ok(stdout)
}
