//! The data loader: an index list and a [`ClipLoader`], cut into batches in a per-epoch order,
//! decoded and augmented on a rayon pool by a producer thread that keeps a bounded queue of
//! batches ahead of the model.
//!
//! Every random choice comes from a generator seeded by `(seed, epoch, sample or batch index)`,
//! never from a shared generator, so a batch is the same whichever thread made it and whatever
//! the timing: this is what makes resumed runs bit-identical.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use augment::{ClipLoader, Mixup, MixupChoice, Pipeline, PipelineConfig};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use video_io::{
    read_list, DecodeOptions, ListEntry, ListFormat, ListOptions, SampleMode, Sampling,
};

use crate::error::{Error, Result};

/// Independent random streams drawn from one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The order of an epoch's samples.
    Shuffle = 1,
    /// A sample's frame offsets and crops.
    Sample = 2,
    /// A batch's mixup draw.
    Mixup = 3,
    /// A batch's dropout masks.
    Dropout = 4,
    /// Initial weights.
    Init = 5,
    /// Precise BN's pass over the training data (its own order and augmentation).
    PreciseBn = 6,
}

/// A seed for `(seed, stream, epoch, index)`: SplitMix64 over the four, so nearby inputs give
/// unrelated generators.
pub fn derive_seed(seed: u64, stream: Stream, epoch: u64, index: u64) -> u64 {
    let mut h = seed;
    for v in [stream as u64, epoch, index] {
        h = splitmix(h ^ splitmix(v));
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A generator for `(seed, stream, epoch, index)`.
pub fn rng_for(seed: u64, stream: Stream, epoch: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(seed, stream, epoch, index))
}

/// An index list with the loader that reads its samples.
#[derive(Debug)]
pub struct Dataset {
    list: PathBuf,
    entries: Vec<ListEntry>,
    clips: ClipLoader,
    mode: SampleMode,
}

impl Dataset {
    /// Reads the list at `list` and checks the pipeline.
    pub fn open(
        list: &Path,
        format: ListFormat,
        options: &ListOptions,
        sampling: Sampling,
        pipeline: PipelineConfig,
        decode: DecodeOptions,
        mode: SampleMode,
    ) -> Result<Self> {
        let entries = read_list(list, format, options)?;
        let pipeline = Pipeline::new(pipeline)?;
        Ok(Self {
            list: list.to_path_buf(),
            entries,
            clips: ClipLoader::new(sampling, pipeline, decode),
            mode,
        })
    }

    /// The list file.
    pub fn list(&self) -> &Path {
        &self.list
    }

    /// Samples listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The list's entries.
    pub fn entries(&self) -> &[ListEntry] {
        &self.entries
    }

    /// Clips each sample yields (views of multi-view validation).
    pub fn clips_per_sample(&self) -> usize {
        self.clips.clips_per_sample(self.mode)
    }
}

/// How one pass over a dataset is batched.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    /// The run's seed.
    pub seed: u64,
    /// Which random streams: [`Stream::Sample`] for training, [`Stream::PreciseBn`] for precise
    /// BN (its shuffle and augmentation then differ from the epoch's).
    pub stream: Stream,
    /// Epoch (0-based), part of every derived seed.
    pub epoch: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Shuffle (training) or keep the list order (validation).
    pub shuffle: bool,
    /// Mix each batch.
    pub mixup: Option<Mixup>,
    /// Mixup draws and mixes within each of this many parts of a batch on its own, as that many
    /// ranks would with a part each (`train.micro_batches`); 1 mixes the whole batch.
    pub mixup_parts: usize,
    /// Stop after this many batches (0 = all).
    pub max_batches: usize,
    /// Batches queued ahead.
    pub prefetch: usize,
    /// Failures tolerated, as a fraction of the epoch's samples.
    pub max_failed_fraction: f64,
    /// This process's rank in a data-parallel job (0 alone).
    pub rank: usize,
    /// Ranks in the job (1 alone); each reads its own shard of every epoch.
    pub world_size: usize,
    /// Repeat samples from the list's head so that every rank gets as many (training, where
    /// ranks step together); without it the last ranks may get one sample fewer (validation,
    /// so that no sample counts twice).
    pub pad: bool,
}

impl EpochPlan {
    /// The sample indices of this rank's batches, in order.
    ///
    /// Paddle's `DistributedBatchSampler`: the list, padded with its own head to a multiple of
    /// the world size (when `pad`), is shuffled; rank `r` takes the `r`-th block of
    /// `batch_size` from every `world_size * batch_size` positions, and its share of the
    /// remainder. Step `k`'s batches of all ranks together are batch `k` of a single process
    /// with `world_size * batch_size` per batch. Alone, this is a plain shuffled batching.
    pub fn batches(&self, len: usize) -> Vec<Vec<usize>> {
        let world = self.world_size.max(1);
        let total = if self.pad {
            len.div_ceil(world) * world
        } else {
            len
        };
        // Positions in the padded list: position p holds sample p % len.
        let mut order: Vec<usize> = (0..total).collect();
        if self.shuffle {
            let shuffle = match self.stream {
                Stream::PreciseBn => Stream::PreciseBn,
                _ => Stream::Shuffle,
            };
            order.shuffle(&mut rng_for(self.seed, shuffle, self.epoch as u64, 0));
        }
        let b = self.batch_size.max(1);
        let full = total / (b * world) * (b * world);
        let mut mine: Vec<usize> = (self.rank * b..full)
            .step_by(b * world)
            .flat_map(|start| order[start..start + b].iter().copied())
            .collect();
        // The remainder in `world` contiguous parts, the first ones a sample longer when the
        // list is not padded.
        let tail = &order[full..];
        let (q, extra) = (tail.len() / world, tail.len() % world);
        let lo = self.rank * q + self.rank.min(extra);
        mine.extend_from_slice(&tail[lo..lo + q + usize::from(self.rank < extra)]);
        let mut batches: Vec<Vec<usize>> = mine
            .chunks(b)
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(|c| c.iter().map(|&p| p % len).collect())
            .collect();
        if self.max_batches > 0 {
            batches.truncate(self.max_batches);
        }
        batches
    }
}

/// One collated batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position in the epoch (0-based).
    pub index: usize,
    /// `[N * views, T, 3, H, W]` values, mixed when the plan mixes.
    pub data: Vec<f32>,
    /// Shape of `data`.
    pub shape: [usize; 5],
    /// Clips per sample (consecutive in `data`).
    pub views: usize,
    /// Labels of the samples that loaded.
    pub labels: Vec<u32>,
    /// Their indices in the dataset.
    pub indices: Vec<usize>,
    /// The mixup draw (of the first part, see [`EpochPlan::mixup_parts`]; every part has its
    /// lambda) and the labels mixed in (`labels[perm[i]]`, within each part).
    pub mixup: Option<(MixupChoice, Vec<u32>)>,
    /// Samples that failed to load: `file (list line n): error`.
    pub failures: Vec<String>,
    /// Time spent decoding and collating.
    pub load_time: Duration,
}

impl Batch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether every sample failed.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Batches of one epoch, produced ahead by a background thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct BatchStream {
    rx: Option<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    len: usize,
}

impl BatchStream {
    /// Starts loading `plan`'s batches of `dataset` on `pool`.
    pub fn start(dataset: Arc<Dataset>, plan: EpochPlan, pool: Arc<rayon::ThreadPool>) -> Self {
        let batches = plan.batches(dataset.len());
        let len = batches.len();
        let (tx, rx) = sync_channel(plan.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let total: usize = batches.iter().map(Vec::len).sum();
            let mut failed = 0;
            for (b, indices) in batches.iter().enumerate() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let batch = load_batch(&dataset, &plan, &pool, b, indices);
                let batch = batch.and_then(|batch| {
                    failed += batch.failures.len();
                    if failed as f64 > plan.max_failed_fraction * total as f64 {
                        return Err(Error::TooManyFailures {
                            epoch: plan.epoch + 1,
                            failed,
                            total,
                            max_fraction: plan.max_failed_fraction,
                            last: batch.failures.last().cloned().unwrap_or_default(),
                        });
                    }
                    Ok(batch)
                });
                let fatal = batch.is_err();
                if tx.send(batch).is_err() || fatal {
                    return;
                }
            }
        });
        Self {
            rx: Some(rx),
            stop,
            handle: Some(handle),
            len,
        }
    }

    /// Batches in the epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting on a full queue.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Loads, collates and mixes one batch.
fn load_batch(
    ds: &Dataset,
    plan: &EpochPlan,
    pool: &rayon::ThreadPool,
    index: usize,
    indices: &[usize],
) -> Result<Batch> {
    let start = Instant::now();
    let epoch = plan.epoch as u64;
    let loaded: Vec<_> = pool.install(|| {
        indices
            .par_iter()
            .map(|&i| {
                let e = &ds.entries[i];
                let seed = derive_seed(plan.seed, plan.stream, epoch, i as u64);
                (i, e, ds.clips.load_seeded(&e.location, ds.mode, seed))
            })
            .collect()
    });
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut loaded_indices = Vec::new();
    let mut failures = Vec::new();
    let mut shape: Option<[usize; 4]> = None;
    let mut views = 1;
    for (i, entry, result) in loaded {
        let clip = match result {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!(
                    "{} ({} line {}): {e}",
                    entry.location.path().display(),
                    ds.list.display(),
                    entry.line
                ));
                continue;
            }
        };
        views = clip.clips.len();
        for c in &clip.clips {
            let s = c.shape();
            match shape {
                None => shape = Some(s),
                Some(expected) if expected != s => {
                    return Err(Error::ClipShape {
                        path: entry.location.path().to_path_buf(),
                        got: s,
                        expected,
                    })
                }
                Some(_) => {}
            }
            data.extend_from_slice(&c.data);
        }
        labels.push(entry.label as u32);
        loaded_indices.push(i);
    }
    let [t, c, h, w] = shape.unwrap_or([0; 4]);
    let mut batch = Batch {
        index,
        data,
        shape: [labels.len() * views, t, c, h, w],
        views,
        labels,
        indices: loaded_indices,
        mixup: None,
        failures,
        load_time: Duration::ZERO,
    };
    if let Some(m) = plan.mixup.as_ref().filter(|_| !batch.is_empty()) {
        let n = batch.len();
        let k = plan.mixup_parts.clamp(1, n);
        let per_sample = batch.data.len() / n;
        let mut data = Vec::with_capacity(batch.data.len());
        let mut permuted = Vec::with_capacity(n);
        let mut first = None;
        for part in 0..k {
            let (lo, hi) = (part * n / k, (part + 1) * n / k);
            // The draw a rank makes for its batch: the key has no rank, so every part (every
            // rank) gets the same lambda, and a permutation of its own samples.
            let choice = m.sample(
                hi - lo,
                &mut rng_for(plan.seed, Stream::Mixup, epoch, index as u64),
            )?;
            let part_data = &batch.data[lo * per_sample..hi * per_sample];
            let mixed = m.apply(part_data, &batch.labels[lo..hi], &choice)?;
            data.extend_from_slice(&mixed.data);
            permuted.extend_from_slice(&mixed.permuted_labels);
            first.get_or_insert(choice);
        }
        batch.data = data;
        batch.mixup = first.map(|choice| (choice, permuted));
    }
    batch.load_time = start.elapsed();
    Ok(batch)
}
