//! A run killed with SIGKILL in the middle of an epoch and resumed ends with the same weights,
//! bit for bit, as one left alone. The runs are child processes: this test binary re-run with
//! `CHILD_ENV` set, so that they can be killed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use train_loop::{TrainConfig, Trainer};

const CHILD_ENV: &str = "TRAIN_LOOP_TEST_CHILD";

/// Not a test of its own: the body of a child run, when `CHILD_ENV` holds `config|resume`.
#[test]
fn child_run() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (config, resume) = spec.rsplit_once('|').unwrap();
    let cfg = TrainConfig::load(Path::new(config), &[]).unwrap();
    Trainer::new(cfg, resume == "1").unwrap().run().unwrap();
}

fn spawn(config: &Path, resume: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_run", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{}|{}", config.display(), u8::from(resume)),
        )
        // candle's CPU kernels split work by thread count: fix it for both runs
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) {
    assert!(child.wait().unwrap().success(), "child training run failed");
}

/// Whether `metrics.jsonl` in `dir` records a step of epoch `epoch` (1-based).
fn reached(dir: &Path, epoch: usize) -> bool {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains(r#""kind":"step""#) && l.contains(&format!(r#""epoch":{epoch},"#)))
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let train = common::tiny_videos(&data, "train", 12, 3);
    let valid = common::tiny_videos(&data, "valid", 3, 3);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let cfg = |out: &Path| {
        let p = tmp.path().join(format!(
            "{}.toml",
            out.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&p, common::tiny_config(&train, &valid, out, 3)).unwrap();
        p
    };
    let (cfg_a, cfg_b) = (cfg(&a), cfg(&b));

    let started = Instant::now();
    finish(spawn(&cfg_a, false));
    println!("uninterrupted run: {:.1}s", started.elapsed().as_secs_f64());

    let mut child = spawn(&cfg_b, false);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !reached(&b, 2) {
        assert!(child.try_wait().unwrap().is_none(), "run b ended early");
        assert!(Instant::now() < deadline, "run b never reached epoch 2");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !b.join("epoch_00002.state.safetensors").exists(),
        "the kill came after epoch 2 ended: not a mid-epoch kill"
    );
    finish(spawn(&cfg_b, true));

    let final_a = std::fs::read(a.join("epoch_00003.safetensors")).unwrap();
    let final_b = std::fs::read(b.join("epoch_00003.safetensors")).unwrap();
    assert!(final_a == final_b, "final weights differ after resume");
    let state = |d: &Path| test_support::read_safetensors(&d.join("epoch_00003.state.safetensors"));
    let (sa, sb) = (state(&a), state(&b));
    assert_eq!(sa.len(), sb.len());
    for (name, t) in &sa {
        assert!(t.data == sb[name].data, "{name} differs after resume");
    }
    println!("total: {:.1}s", started.elapsed().as_secs_f64());
}
