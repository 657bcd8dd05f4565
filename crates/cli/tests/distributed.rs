//! Data-parallel training with `mpirun -np 2` (oversubscribed, TCP over loopback) against one
//! process, on a small TSM (ResNet-18, 8 frames, 32x32 crops) and generated videos.
//!
//! What is compared, and why it is equal: two ranks with 2 samples each and one process with
//! the same 4 samples per step split into `train.micro_batches = 2` parts compute the same
//! thing. The samples of step k are the same (the sharded plan of both ranks together is the
//! single process's batch k), each half is augmented and dropout-masked alike (seeds by sample
//! and by row of the whole step), each half gets its own BatchNorm batch statistics (per rank
//! there, per micro-batch here), and the gradient is the mean of the two halves' gradients.
//! Only the order of float additions differs (precise BN's mean over batches; MPI's sum), hence
//! a tolerance instead of bit equality. A plain 4-sample single-process run is *not* equal
//! (BN statistics over 4 samples): it is checked to differ by far more than the tolerance, so
//! the comparison can fail.
//!
//! Needs Open MPI (`cargo xtask setup --mpi`); run by `cargo xtask test` (which builds with
//! `--features cli/mpi`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{read_safetensors, tiny_videos, RefTensor};

const NP: &str = "2";

fn mpirun(args: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-np", NP, "--oversubscribe"])
        // Loopback TCP: no shared-memory transport, which containers often restrict.
        .args([
            "--mca",
            "btl",
            "self,tcp",
            "--mca",
            "btl_tcp_if_include",
            "lo",
        ])
        .args(["--mca", "oob_tcp_if_include", "lo"])
        .arg(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        // Open MPI refuses to run as root (CI containers) without both.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    single_threaded(&mut cmd);
    cmd
}

fn tsm(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsm-cli"));
    cmd.args(args);
    single_threaded(&mut cmd);
    cmd
}

/// One compute thread per process: two ranks share the machine's cores, and candle's kernels
/// split work by thread count, so every run uses the same kernels.
fn single_threaded(cmd: &mut Command) {
    cmd.env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_BACKTRACE")
        // This process's own launcher variables (if the suite itself runs under one) must not
        // leak into the single-process runs.
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("SLURM_STEP_NUM_TASKS")
        .env_remove("WORLD_SIZE");
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 8 training videos (2 steps of 4 per epoch), 5 validation videos (3 + 2 on two
/// ranks, nothing padded), 2 epochs with mixup, precise BN and validation after each.
fn config(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let train = tiny_videos(&data, "train", 8, 3);
    let valid = tiny_videos(&data, "valid", 5, 3);
    let text = format!(
        r#"
[model]
depth = 18
num_seg = 8
num_classes = 3
dropout = 0.5

[data]
format = "videos"
train_list = "{train}"
valid_list = "{valid}"
batch_size = 2
num_workers = 1
prefetch = 1
sampling = {{ segments = {{ num_seg = 8, seg_len = 1 }} }}

[data.train_pipeline]
transforms = [
  {{ MultiScaleCrop = {{ target_size = 40 }} }},
  {{ RandomCrop = {{ target_size = 32 }} }},
  {{ RandomFlip = {{ p = 0.5 }} }},
]

[data.valid_pipeline]
transforms = [
  {{ Scale = {{ short_size = 32, fixed_ratio = false }} }},
  {{ CenterCrop = {{ target_size = 32 }} }},
]

[train]
epochs = 2
seed = 11
label_smoothing = 0.1
mixup_alpha = 0.2
log_interval = 1

[lr]
warmup_start_lr = 0.02
warmup_epochs = 1
cosine_base_lr = 0.1
max_epoch = 2

[precise_bn]
enabled = true
interval = 1
num_iters = 2

[output]
dir = "{out}"
"#,
        train = train.display(),
        valid = valid.display(),
        out = dir.join("unused").display(),
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

type Tensors = BTreeMap<String, RefTensor>;

/// Model and training state (velocities) of checkpoint `epoch` in `dir`.
fn checkpoint(dir: &Path, epoch: usize) -> Tensors {
    let mut t = read_safetensors(&dir.join(format!("epoch_{epoch:05}.safetensors")));
    t.extend(read_safetensors(
        &dir.join(format!("epoch_{epoch:05}.state.safetensors")),
    ));
    t
}

/// The largest difference over all tensors, relative for values above 1 (BN running variances
/// reach hundreds), and the tensor where it is.
fn max_diff(a: &Tensors, b: &Tensors) -> (f32, String) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different tensors"
    );
    let mut worst = (0f32, String::new());
    for (name, ta) in a {
        let tb = &b[name];
        assert_eq!(ta.shape, tb.shape, "{name}");
        for (x, y) in ta.data.iter().zip(&tb.data) {
            let d = (x - y).abs() / y.abs().max(1.0);
            if d > worst.0 || d.is_nan() {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

/// The `val` records of `metrics.jsonl` in `dir`.
fn validations(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "val")
        .collect()
}

/// Weights, velocities and precise-BN statistics after 4 steps agree this closely; the order
/// of float additions alone gives a few 1e-7 here.
const TOLERANCE: f32 = 1e-5;

#[test]
fn two_ranks_equal_one_process_with_per_half_batch_norm_and_resume_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (ranks, one, plain, resumed) = (
        tmp.path().join("ranks"),
        tmp.path().join("one"),
        tmp.path().join("plain"),
        tmp.path().join("resumed"),
    );
    let t = Instant::now();
    let out = check(
        mpirun(&["train", "-c", s(&cfg), "--output", s(&ranks)])
            .output()
            .unwrap(),
        "mpirun -np 2 tsm-cli train",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("2 ranks"), "{stdout}");
    println!("2 ranks: {:.1}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let whole_step = ["-o", "data.batch_size=4"];
    let halves = ["-o", "data.batch_size=4", "-o", "train.micro_batches=2"];
    let mut args = vec!["train", "-c", s(&cfg), "--output", s(&one)];
    args.extend(halves);
    check(tsm(&args).output().unwrap(), "one process, micro-batches");
    println!("1 process: {:.1}s", t.elapsed().as_secs_f64());

    let (a, b) = (checkpoint(&ranks, 2), checkpoint(&one, 2));
    let (d, at) = max_diff(&a, &b);
    println!("2 ranks vs 1 process with 2 micro-batches: max diff {d:e} ({at})");
    assert!(
        d <= TOLERANCE,
        "2 ranks and 1 process differ by {d} at {at}"
    );
    let (moved, _) = max_diff(&checkpoint(&ranks, 1), &a);
    assert!(
        moved > 100.0 * TOLERANCE,
        "training barely moved the weights ({moved})"
    );

    // Validation: the same samples counted once each, so the same counts and accuracies.
    let (va, vb) = (validations(&ranks), validations(&one));
    assert_eq!(va.len(), 2);
    for (x, y) in va.iter().zip(&vb) {
        assert_eq!(x["samples"], 5, "{x}");
        for k in ["samples", "failed", "top1", "top5"] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
        let (la, lb) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((la - lb).abs() <= 1e-5, "val loss {la} vs {lb}");
    }
    // Only rank 0 wrote: one line per step, not two.
    let steps = std::fs::read_to_string(ranks.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(r#""kind":"step""#))
        .count();
    assert_eq!(steps, 4);

    // BatchNorm over the whole 4-sample batch is a different computation.
    let mut args = vec!["train", "-c", s(&cfg), "--output", s(&plain)];
    args.extend(whole_step);
    check(tsm(&args).output().unwrap(), "one process, whole batch");
    let (d_plain, _) = max_diff(&checkpoint(&plain, 2), &a);
    println!("2 ranks vs 1 process with whole-batch BN: max diff {d_plain:e}");
    assert!(d_plain > 100.0 * TOLERANCE, "{d_plain}");

    // The 2-rank run's epoch-1 checkpoint, resumed in one process, ends where it ended.
    std::fs::create_dir(&resumed).unwrap();
    for f in ["epoch_00001.safetensors", "epoch_00001.state.safetensors"] {
        std::fs::copy(ranks.join(f), resumed.join(f)).unwrap();
    }
    let mut args = vec!["train", "-c", s(&cfg), "--output", s(&resumed), "--resume"];
    args.extend(halves);
    check(tsm(&args).output().unwrap(), "resume in one process");
    let (d, at) = max_diff(&checkpoint(&resumed, 2), &a);
    println!("resumed in 1 process vs 2 ranks: max diff {d:e} ({at})");
    assert!(d <= TOLERANCE, "resumed run differs by {d} at {at}");
}

/// The process of rank `rank` among the children of `parent`, from their environments.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let needle = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // Field 4, after the parenthesised command name.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = env.split(|&b| b == 0).any(|v| v == needle.as_bytes());
        (ppid == parent && has).then_some(pid)
    })
}

/// Whichever rank dies, rank 0 (which writes the run directory) or another, the job ends.
#[test]
fn a_killed_rank_stops_the_whole_job() {
    for rank in [1, 0] {
        kill_rank_while_training(rank);
    }
}

fn kill_rank_while_training(rank: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let out = tmp.path().join("killed");
    let mut child = mpirun(&[
        "train",
        "-c",
        s(&cfg),
        "--output",
        s(&out),
        "-o",
        "train.epochs=100",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the ranks train together (rank 0 logged a step), then kill one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let steps = out.join("metrics.jsonl");
    while !std::fs::read_to_string(&steps).is_ok_and(|t| t.contains(r#""kind":"step""#)) {
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        assert!(Instant::now() < deadline, "no step within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = rank_pid(child.id(), rank).expect("the rank among mpirun's children");
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the job still runs 60 s after rank {rank} was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    println!(
        "rank {rank} killed: job stopped {:.1}s later with {status}; stderr:\n{err}",
        killed.elapsed().as_secs_f64()
    );
    assert!(!status.success());
    assert!(
        err.contains(&format!("rank {rank}")) && err.contains("signal 9"),
        "{err}"
    );
}
