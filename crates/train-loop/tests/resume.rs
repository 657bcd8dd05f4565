//! A run killed with SIGKILL at seeded random moments (mid-epoch, and in the middle of writing a
//! checkpoint's model or state file) and resumed after each kill ends with the same weights, bit
//! for bit, as one left alone; every resume starts from the newest complete checkpoint, never
//! from a torn pair or a temporary file. The runs are child processes (the crate's `train-run`
//! binary), so that they can be killed.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use train_loop::checkpoint::PAUSE_ENV;

/// A child run with its stdout in `log`; `pause_ms` holds every checkpoint write open that long
/// between writing the temporary file and renaming it.
fn spawn(config: &Path, resume: bool, pause_ms: u64, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_train-run"));
    cmd.arg(config);
    if resume {
        cmd.arg("--resume");
    }
    cmd.env(PAUSE_ENV, pause_ms.to_string())
        // candle's CPU kernels split work by thread count: fix it for all runs
        .env("RAYON_NUM_THREADS", "2")
        .stdout(File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn finish(mut child: Child) {
    assert!(child.wait().unwrap().success(), "child training run failed");
}

/// What a kill waits for.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// The run has logged this many training steps.
    Steps(usize),
    /// A model file is being written (its temporary file exists, not yet renamed).
    ModelWrite,
    /// A state file is being written: its model file is already renamed into place, so the
    /// pair on disk is torn until the state follows.
    StateWrite,
}

/// A temporary checkpoint file in `dir` created since `since`, of a state file or not.
fn fresh_tmp(dir: &Path, since: SystemTime, state: bool) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let fresh = e.metadata().ok()?.modified().ok()? >= since;
        let is_state = name.ends_with(".state.safetensors.tmp");
        (fresh && name.ends_with(".safetensors.tmp") && is_state == state).then(|| e.path())
    })
}

/// The newest epoch whose state file (written after its model file) exists.
fn newest_complete(dir: &Path) -> Option<usize> {
    (1..100)
        .rev()
        .find(|e| dir.join(format!("epoch_{e:05}.state.safetensors")).exists())
}

#[test]
fn killed_at_random_moments_and_resumed_is_bit_identical() {
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
    let log = |i: usize| tmp.path().join(format!("b{i}.log"));

    let started = Instant::now();
    finish(spawn(&cfg_a, false, 0, &tmp.path().join("a.log")));
    println!("uninterrupted run: {:.1}s", started.elapsed().as_secs_f64());

    // First a kill in epoch 2 (6 steps an epoch), so that later runs resume from a checkpoint;
    // then every kind of moment in a seeded random order, mid-epoch ones at random steps.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut plan = vec![
        Moment::Steps(rng.random_range(1..=5)),
        Moment::ModelWrite,
        Moment::StateWrite,
    ];
    plan.shuffle(&mut rng);
    plan.insert(0, Moment::Steps(rng.random_range(7..=11)));
    let mut kills = Vec::new();
    let mut finished = false;
    for moment in plan {
        let resume = !kills.is_empty();
        let expected_start = newest_complete(&b);
        let since = SystemTime::now() - Duration::from_millis(10);
        let run_log = log(kills.len());
        let mut child = spawn(&cfg_b, resume, 300, &run_log);
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut torn_tmp = None;
        loop {
            if child.try_wait().unwrap().is_some() {
                assert!(
                    child.wait().unwrap().success(),
                    "run {} failed",
                    kills.len()
                );
                finished = true;
                break;
            }
            let steps = std::fs::read_to_string(&run_log)
                .unwrap_or_default()
                .matches("train step:")
                .count();
            let reached = match moment {
                Moment::Steps(k) => steps >= k,
                Moment::ModelWrite => {
                    torn_tmp = fresh_tmp(&b, since, false);
                    torn_tmp.is_some()
                }
                Moment::StateWrite => {
                    torn_tmp = fresh_tmp(&b, since, true);
                    torn_tmp.is_some()
                }
            };
            if reached {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                break;
            }
            assert!(Instant::now() < deadline, "{moment:?} never came");
            std::thread::sleep(Duration::from_millis(2));
        }
        if resume {
            // The run started from the newest complete checkpoint, or from scratch without one.
            let text = std::fs::read_to_string(&run_log).unwrap();
            let from = expected_start.map_or("starting from the beginning".to_string(), |e| {
                format!("epoch_{e:05}.safetensors (epoch {e},")
            });
            assert!(text.contains(&from), "expected `{from}` in:\n{text}");
        }
        if finished {
            break;
        }
        if let Some(t) = &torn_tmp {
            assert!(
                t.exists(),
                "{moment:?}: the kill came after the rename of {t:?}"
            );
        }
        println!(
            "kill {} at {moment:?} ({:.1}s), newest complete checkpoint: {:?}",
            kills.len() + 1,
            started.elapsed().as_secs_f64(),
            newest_complete(&b)
        );
        kills.push(moment);
    }
    if !finished {
        finish(spawn(&cfg_b, true, 0, &log(kills.len())));
    }
    assert_eq!(kills.len(), 4, "the run ended before its kills: {kills:?}");

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
