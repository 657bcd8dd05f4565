//! `tsm-cli train` learns time: on generated clips whose classes differ only in frame order
//! (test-support's `motion`: a square moving right or left, a disc growing or shrinking, the
//! second class of each pair being the first's frames reversed), the demo recipe's ResNet-18
//! TSM reaches high validation accuracy. The same run with the temporal shift off is a TSN: it
//! averages per-frame features, so its scores for a clip and for the clip reversed are equal and
//! within a pair it can only guess.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use test_support::motion::{generate, Motion, MotionSpec};

/// Validation clips per class: 32 x 4 classes = 128.
const VAL_PER_CLASS: usize = 32;

/// Of the clips whose predicted class is in the right pair, the fraction that also has the
/// right direction, with how many such clips there were.
fn direction_accuracy(confusion: &[Vec<usize>]) -> (f64, usize) {
    let (mut right_pair, mut right) = (0, 0);
    for (truth, row) in confusion.iter().enumerate() {
        let pair = truth / 2 * 2;
        right_pair += row[pair] + row[pair + 1];
        right += row[truth];
    }
    (right as f64 / right_pair.max(1) as f64, right_pair)
}

/// The last epoch's weights (not `best`, which validation chose).
fn final_weights(run: &Path) -> PathBuf {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("epoch_") && !name.contains(".state.")
        })
        .max()
        .unwrap()
}

fn top1(confusion: &[Vec<usize>]) -> f64 {
    let total: usize = confusion.iter().flatten().sum();
    let right: usize = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    right as f64 / total as f64
}

#[test]
fn tsm_learns_frame_order_and_tsn_cannot() {
    let dir = common::fresh_dir("learns-time");
    let spec = MotionSpec {
        motions: vec![Motion::Horizontal, Motion::Scale],
        val_per_class: VAL_PER_CLASS,
        seed: 11,
        ..MotionSpec::default()
    };
    let set = generate(&spec, &dir.join("data")).unwrap();

    let mut results = Vec::new();
    for (name, overrides) in [("tsm", vec![]), ("tsn", vec!["model.shift=false".into()])] {
        let started = Instant::now();
        let run = dir.join(name);
        common::train_on_motion(&set, &run, &overrides);
        let weights = final_weights(&run);
        let confusion = common::val_confusion(&set, &weights, &dir.join(format!("{name}-eval")));
        let (direction, n) = direction_accuracy(&confusion);
        println!(
            "{name}: val top-1 {:.3}, right direction in {direction:.3} of the {n} clips put in the \
             right pair ({:.0} s)",
            top1(&confusion),
            started.elapsed().as_secs_f64()
        );
        results.push((top1(&confusion), direction, n));
    }
    let (tsm, _, _) = results[0];
    let (_, tsn_direction, n) = results[1];
    assert!(tsm >= 0.9, "the TSM reached only {tsm:.3} validation top-1");
    // A TSN's direction is a coin flip per clip: 0.5 with a standard deviation of
    // sqrt(0.25 / n); the bound is 3 of those above (a chance of about 1e-3 to exceed it by luck).
    let bound = 0.5 + 3.0 * (0.25 / n as f64).sqrt();
    assert!(
        tsn_direction <= bound,
        "a TSN cannot see frame order, yet it got the direction right in {tsn_direction:.3} of \
         {n} clips (> {bound:.3})"
    );
}
