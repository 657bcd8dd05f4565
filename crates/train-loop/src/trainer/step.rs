//! One training step: this rank's forward and backward passes over its micro-batches, the
//! gradients averaged over all ranks, the optimizer's update, and the epoch of them.

use std::time::Instant;

use candle_core::Tensor;

use super::{train_plan, Trainer};
use crate::comm::{all_reduce_sum_f64, all_reduce_sum_tensors};
use crate::error::{Error, Result};
use crate::loader::{rng_for, Batch, BatchStream, Stream};
use crate::loss::{distill_loss, topk_accuracy, train_loss};
use crate::metrics::{EpochMeters, EpochRecord, StepRecord};

impl Trainer {
    /// Training-mode logits with dropout masks drawn from `(seed, epoch, batch)`: candle's own
    /// dropout uses an unseedable generator, which would make runs unrepeatable. The masks are
    /// rows `first_row..` of the step's mask over all ranks' samples, so that a rank or a
    /// micro-batch masks its samples as a single process with the whole batch would.
    fn forward_train(
        &self,
        x: &Tensor,
        epoch: usize,
        batch: usize,
        first_row: usize,
    ) -> Result<Tensor> {
        let mut rng = rng_for(self.state.seed, Stream::Dropout, epoch as u64, batch as u64);
        // The model draws one f64, two 32-bit words of the ChaCha stream, per frame and channel.
        let channels = self.model.config().feature_dim();
        rng.set_word_pos(2 * (first_row * channels) as u128);
        Ok(self.model.forward_train(x, &mut rng)?)
    }

    /// One training epoch (`epoch` 0-based).
    pub fn train_epoch(&mut self, epoch: usize) -> Result<EpochRecord> {
        let stream = BatchStream::start(
            self.train.clone(),
            train_plan(&self.cfg, epoch, &*self.comm),
            self.pool.clone(),
        );
        let epochs = self.cfg.train.epochs;
        self.reporter
            .epoch_start(epoch + 1, epochs, self.iters_per_epoch);
        let mut meters = EpochMeters::default();
        let (mut samples, mut failed) = (0, 0);
        let mut tic = Instant::now();
        for item in stream {
            let batch = item?;
            let reader_time = tic.elapsed().as_secs_f64();
            for f in &batch.failures {
                self.reporter.warn(&format!("skipped sample: {f}"));
            }
            let lr = self.schedule.lr();
            let (index, local_n, local_failed) = (batch.index, batch.len(), batch.failures.len());
            let (grads, local) = self.gradients(batch, epoch)?;
            // Sums over the ranks: loss, top-1 and top-5 (times samples), samples, failures,
            // forward/backward passes.
            let [loss_sum, top1_sum, top5_sum, n, batch_failed, parts] = all_reduce_sum_f64(
                &*self.comm,
                &[
                    local.loss,
                    local.top1,
                    local.top5,
                    local_n as f64,
                    local_failed as f64,
                    local.parts as f64,
                ],
            )?[..] else {
                unreachable!("all_reduce_sum_f64 keeps the length")
            };
            failed += batch_failed as usize;
            if n > 0.0 {
                let loss = loss_sum / n;
                if !loss.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        loss: loss as f32,
                        epoch: epoch + 1,
                        iter: index,
                    });
                }
                let grads = self.average_gradients(grads, parts as usize)?;
                self.optimizer.step_with(&grads, lr)?;
                self.state.global_step += 1;
                let (top1, top5) = (top1_sum / n, top5_sum / n);
                let batch_time = tic.elapsed().as_secs_f64();
                meters.loss.add(loss, n);
                meters.top1.add(top1, n);
                meters.top5.add(top5, n);
                meters.batch.add(batch_time, 1.0);
                meters.reader.add(reader_time, 1.0);
                samples += n as usize;
                let rec = StepRecord {
                    kind: "step",
                    epoch: epoch + 1,
                    iter: index,
                    global_step: self.state.global_step,
                    loss,
                    lr,
                    top1,
                    top5,
                    batch_time,
                    reader_time,
                    ips: n / batch_time.max(1e-9),
                };
                let print = index % self.cfg.train.log_interval == 0;
                self.reporter.step(&rec, epochs, print)?;
            }
            if self.cfg.lr.iter_step {
                self.schedule.step();
            }
            tic = Instant::now();
        }
        if !self.cfg.lr.iter_step {
            self.schedule.step();
        }
        let rec = meters.record("epoch", epoch + 1, self.state.global_step, samples, failed);
        self.reporter.epoch(&rec)?;
        Ok(rec)
    }

    /// This rank's gradients of `batch` (summed over its `train.micro_batches` parts, in
    /// [`Momentum::params`] order) and its sums of loss, top-1 and top-5 over the samples.
    fn gradients(&self, batch: Batch, epoch: usize) -> Result<(Vec<Option<Tensor>>, LocalSums)> {
        let params = self.optimizer.params();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut sums = LocalSums::default();
        let n = batch.len();
        if n == 0 {
            return Ok((grads, sums));
        }
        let eps = self.cfg.train.label_smoothing;
        let x = Tensor::from_vec(batch.data, batch.shape.to_vec(), &self.device)?;
        let views = batch.views;
        let rows_per_sample = views * self.model.config().num_seg;
        let k = self.cfg.train.micro_batches.min(n);
        sums.parts = k;
        for part in 0..k {
            let (lo, hi) = (part * n / k, (part + 1) * n / k);
            let xs = x.narrow(0, lo * views, (hi - lo) * views)?;
            let labels = &batch.labels[lo..hi];
            let first_row = (self.comm.rank() * self.cfg.data.batch_size + lo) * rows_per_sample;
            let logits = self.forward_train(&xs, epoch, batch.index, first_row)?;
            let mix = batch
                .mixup
                .as_ref()
                .map(|(c, mixed)| (&mixed[lo..hi], c.lam));
            let mut loss = train_loss(&logits, labels, mix, eps)?;
            if let (Some(t), Some(dc)) = (&self.teacher, &self.cfg.distill) {
                let soft = distill_loss(&logits, &t.forward(&xs)?, dc.temperature)?;
                loss = ((loss * (1.0 - dc.weight))? + (soft * dc.weight)?)?;
            }
            let w = (hi - lo) as f64;
            sums.loss += f64::from(loss.to_scalar::<f32>()?) * w;
            let acc = topk_accuracy(&logits, labels, &[1, 5])?;
            let (top1, top5) = match mix {
                Some((mixed, lam)) => {
                    let b = topk_accuracy(&logits, mixed, &[1, 5])?;
                    let lam = f64::from(lam);
                    (
                        lam * acc[0] + (1.0 - lam) * b[0],
                        lam * acc[1] + (1.0 - lam) * b[1],
                    )
                }
                None => (acc[0], acc[1]),
            };
            sums.top1 += top1 * w;
            sums.top5 += top5 * w;
            let store = loss.backward()?;
            for (g, p) in grads.iter_mut().zip(params) {
                if let Some(new) = store.get(p.var.as_tensor()) {
                    *g = Some(match g.take() {
                        Some(acc) => (acc + new)?,
                        None => new.clone(),
                    });
                }
            }
        }
        Ok((grads, sums))
    }

    /// The mean gradient over the `parts` forward/backward passes of all ranks. Alone and
    /// in one pass, the gradients as they are. Otherwise every parameter gets one (zero where
    /// this rank had none, e.g. after an empty batch), so that all ranks sum the same buckets.
    fn average_gradients(
        &self,
        grads: Vec<Option<Tensor>>,
        parts: usize,
    ) -> Result<Vec<Option<Tensor>>> {
        if parts == 1 && self.comm.world_size() == 1 {
            return Ok(grads);
        }
        let full: Vec<Tensor> = grads
            .into_iter()
            .zip(self.optimizer.params())
            .map(|(g, p)| g.map_or_else(|| p.var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        all_reduce_sum_tensors(&*self.comm, &full)?
            .into_iter()
            .map(|t| Ok(Some((t / parts as f64)?)))
            .collect()
    }
}

/// This rank's sums over a batch's samples, and its forward/backward passes.
#[derive(Debug, Default)]
struct LocalSums {
    loss: f64,
    top1: f64,
    top5: f64,
    parts: usize,
}
