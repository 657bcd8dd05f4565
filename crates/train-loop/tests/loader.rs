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
        max_batches: 0,
        prefetch: 2,
        max_failed_fraction,
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
