//! Validation: every sample of the validation list in eval mode, shards summed over the ranks.

use std::time::Instant;

use candle_core::Tensor;

use super::Trainer;
use crate::comm::all_reduce_sum_f64;
use crate::config::ConfigError;
use crate::error::Result;
use crate::loader::{BatchStream, EpochPlan, Stream};
use crate::loss::{average_views, cross_entropy_per_sample, label_ranks};
use crate::metrics::{EpochMeters, EpochRecord};

impl Trainer {
    /// Validation after epoch `epoch` (0-based): eval mode, plain cross entropy, top-1/top-5
    /// over every sample (multi-view logits averaged). Ranks validate disjoint shards and sum
    /// per-sample results by sample index, so the numbers equal a single process's exactly.
    pub fn validate(&mut self, epoch: usize) -> Result<EpochRecord> {
        let Some(valid) = self.valid.clone() else {
            return Err(ConfigError::Value("data.valid_list is not set".into()).into());
        };
        let plan = EpochPlan {
            seed: self.state.seed,
            stream: Stream::Sample,
            epoch,
            batch_size: self
                .cfg
                .data
                .valid_batch_size
                .unwrap_or(self.cfg.data.batch_size),
            drop_last: false,
            shuffle: false,
            mixup: None,
            mixup_parts: 1,
            max_batches: 0,
            prefetch: self.cfg.data.prefetch,
            max_failed_fraction: self.cfg.data.max_failed_fraction,
            rank: self.comm.rank(),
            world_size: self.comm.world_size(),
            pad: false,
        };
        // Per sample: loaded (0/1), loss, top-1 hit, top-5 hit; then failures.
        let len = valid.len();
        let mut slots = vec![0f64; 4 * len + 1];
        let mut meters = EpochMeters::default();
        let mut tic = Instant::now();
        for item in BatchStream::start(valid, plan, self.pool.clone()) {
            let batch = item?;
            let reader_time = tic.elapsed().as_secs_f64();
            for f in &batch.failures {
                self.reporter.warn(&format!("skipped sample: {f}"));
            }
            slots[4 * len] += batch.failures.len() as f64;
            if !batch.is_empty() {
                let x = Tensor::from_vec(batch.data, batch.shape.to_vec(), &self.device)?;
                let logits = average_views(&self.model.forward(&x)?, batch.views)?;
                let losses = cross_entropy_per_sample(&logits, &batch.labels)?;
                let ranks = label_ranks(&logits, &batch.labels)?;
                for ((&i, loss), rank) in batch.indices.iter().zip(losses).zip(ranks) {
                    let s = &mut slots[4 * i..4 * i + 4];
                    s.copy_from_slice(&[
                        1.0,
                        f64::from(loss),
                        f64::from(u8::from(rank < 1)),
                        f64::from(u8::from(rank < 5)),
                    ]);
                }
                meters.batch.add(tic.elapsed().as_secs_f64(), 1.0);
                meters.reader.add(reader_time, 1.0);
            }
            tic = Instant::now();
        }
        // Each slot is written by one rank only, and x + 0 = x: the sums are exact.
        let slots = all_reduce_sum_f64(&*self.comm, &slots)?;
        let mut samples = 0;
        for s in slots[..4 * len].chunks_exact(4).filter(|s| s[0] > 0.0) {
            meters.loss.add(s[1], 1.0);
            meters.top1.add(s[2], 1.0);
            meters.top5.add(s[3], 1.0);
            samples += 1;
        }
        let failed = slots[4 * len] as usize;
        let rec = meters.record("val", epoch + 1, self.state.global_step, samples, failed);
        self.reporter.epoch(&rec)?;
        Ok(rec)
    }
}
