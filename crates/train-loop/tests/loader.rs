//! The loader: batch plans, determinism across thread counts, failing samples.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use augment::{Mixup, PipelineConfig, RandomCrop, RandomFlip, Transform};
use train_loop::loader::{Batch, BatchStream, Dataset, EpochPlan, Stream};
use train_loop::Error;
use video_io::{DecodeOptions, ListFormat, ListOptions, SampleMode, Sampling};

fn plan(batch_size: usize, max_failed_fraction: f64) -> EpochPlan {
    EpochPlan {
        seed: 3,
        stream: Stream::Sample,
        epoch: 0,
        batch_size,
        drop_last: true,
        shuffle: true,
        mixup: Some(Mixup { alpha: 0.2 }),
        mixup_parts: 1,
        max_batches: 0,
        prefetch: 2,
        max_failed_fraction,
        rank: 0,
        world_size: 1,
        pad: true,
    }
}

fn dataset(list: &std::path::Path) -> Arc<Dataset> {
    let pipeline = PipelineConfig {
        transforms: vec![
            Transform::RandomCrop(RandomCrop { target_size: 32 }),
            Transform::RandomFlip(RandomFlip::default()),
        ],
        ..PipelineConfig::tutorial_train()
    };
    Arc::new(
        Dataset::open(
            list,
            ListFormat::Videos,
            &ListOptions::default(),
            Sampling::Segments {
                num_seg: 4,
                seg_len: 1,
            },
            pipeline,
            DecodeOptions::default(),
            SampleMode::Train,
        )
        .unwrap(),
    )
}

fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap(),
    )
}

#[test]
fn plans_shuffle_per_epoch_and_drop_the_last_batch() {
    let p = plan(3, 0.0);
    let b = p.batches(10);
    assert_eq!(b.len(), 3);
    let mut all: Vec<usize> = b.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 9);
    assert_eq!(b, p.batches(10));
    let next = EpochPlan {
        epoch: 1,
        ..p.clone()
    };
    assert_ne!(b, next.batches(10));
    let keep = EpochPlan {
        drop_last: false,
        shuffle: false,
        ..p
    };
    assert_eq!(keep.batches(10).last().unwrap(), &vec![9]);
}

/// Each rank's batches are what Paddle's `DistributedBatchSampler` gives that rank (list order:
/// the shuffle's generator is numpy's there, ours here).
#[test]
fn shards_match_paddles_distributed_batch_sampler() {
    let cases = test_support::read_json(
        &test_support::reference_dir("paddle_sampler").join("batches.json"),
    );
    let cases = cases.as_array().unwrap();
    assert!(cases.len() > 100);
    for c in cases {
        let get = |k: &str| c[k].as_u64().unwrap() as usize;
        let p = EpochPlan {
            shuffle: false,
            batch_size: get("batch_size"),
            drop_last: c["drop_last"].as_bool().unwrap(),
            rank: get("rank"),
            world_size: get("world_size"),
            ..plan(1, 0.0)
        };
        let want: Vec<Vec<usize>> = serde_json::from_value(c["batches"].clone()).unwrap();
        assert_eq!(p.batches(get("len")), want, "case {c}");
    }
}

/// Shuffled, the ranks' batches of step k together are a single process's batch k with the
/// whole step's samples (when the list needs no padding): what lets a one-process run
/// reproduce a data-parallel one. Unpadded (validation), the ranks cover every sample once.
#[test]
fn ranks_together_see_the_single_process_batches() {
    let (world, b, len) = (3, 2, 21);
    let single = EpochPlan {
        batch_size: world * b,
        ..plan(1, 0.0)
    }
    .batches(len);
    let ranks: Vec<Vec<Vec<usize>>> = (0..world)
        .map(|rank| {
            EpochPlan {
                batch_size: b,
                rank,
                world_size: world,
                ..plan(1, 0.0)
            }
            .batches(len)
        })
        .collect();
    assert_eq!(single.len(), 3);
    for (k, batch) in single.iter().enumerate() {
        let together: Vec<usize> = ranks.iter().flat_map(|r| r[k].clone()).collect();
        assert_eq!(&together, batch, "step {k}");
    }
    let mut seen: Vec<usize> = (0..world)
        .flat_map(|rank| {
            EpochPlan {
                batch_size: b,
                rank,
                world_size: world,
                pad: false,
                drop_last: false,
                ..plan(1, 0.0)
            }
            .batches(len - 1)
            .concat()
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..len - 1).collect::<Vec<_>>());
}

#[test]
fn batches_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let list = common::tiny_videos(tmp.path(), "v", 6, 3);
    let ds = dataset(&list);
    let run = |threads| -> Vec<Batch> {
        BatchStream::start(ds.clone(), plan(3, 0.0), pool(threads))
            .map(Result::unwrap)
            .collect()
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.len(), 2);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.shape, [3, 4, 3, 32, 32]);
        assert!(a.data == b.data && a.labels == b.labels);
        assert_eq!(a.mixup.as_ref().unwrap().0, b.mixup.as_ref().unwrap().0);
    }
}

#[test]
fn failing_samples_are_skipped_counted_and_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let list = common::tiny_videos(tmp.path(), "v", 3, 3);
    let bad = tmp.path().join("corrupt.avi");
    std::fs::write(&bad, b"not a video at all").unwrap();
    let mut text = std::fs::read_to_string(&list).unwrap();
    text.push_str(&format!("{} 1\n", bad.display()));
    std::fs::write(&list, text).unwrap();
    let ds = dataset(&list);

    let batches: Vec<Batch> = BatchStream::start(ds.clone(), plan(4, 0.25), pool(2))
        .map(Result::unwrap)
        .collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].len(), 3);
    assert_eq!(batches[0].shape[0], 3);
    assert_eq!(batches[0].failures.len(), 1);
    assert!(
        batches[0].failures[0].contains("corrupt.avi"),
        "{:?}",
        batches[0].failures
    );

    let err = BatchStream::start(ds, plan(4, 0.2), pool(2))
        .find_map(Result::err)
        .unwrap();
    assert!(matches!(
        err,
        Error::TooManyFailures {
            failed: 1,
            total: 4,
            ..
        }
    ));
    assert!(err.to_string().contains("corrupt.avi"), "{err}");
}
