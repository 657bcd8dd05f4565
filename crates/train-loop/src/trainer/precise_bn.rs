//! Precise BN: BatchNorm running statistics recomputed as a plain average over training batches.

use candle_core::Tensor;

use super::{train_plan, Trainer};
use crate::comm::all_reduce_sum_tensors;
use crate::error::Result;
use crate::loader::{BatchStream, Stream};

impl Trainer {
    /// Precise BN after epoch `epoch`: with the weights fixed, the running statistics become
    /// the plain average of `precise_bn.num_iters` training batches' statistics (PaddleVideo's
    /// `do_preciseBN`). Statistics are taken per micro-batch and per rank, as in training, and
    /// averaged over all of them.
    pub fn precise_bn(&mut self, epoch: usize) -> Result<()> {
        let stats: Vec<candle_core::Var> = self
            .model
            .params()
            .iter()
            .filter(|p| p.role.is_bn_statistic())
            .map(|p| p.var())
            .collect::<candle_core::Result<_>>()?;
        let mut plan = train_plan(&self.cfg, epoch, &*self.comm);
        plan.stream = Stream::PreciseBn;
        plan.max_batches = self.cfg.precise_bn.num_iters.min(self.iters_per_epoch);
        let mut avg: Vec<Tensor> = stats
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut n = 0usize;
        for item in BatchStream::start(self.train.clone(), plan, self.pool.clone()) {
            let batch = item?;
            if batch.is_empty() {
                continue;
            }
            let len = batch.len();
            let x = Tensor::from_vec(batch.data, batch.shape.to_vec(), &self.device)?;
            let k = self.cfg.train.micro_batches.min(len);
            for part in 0..k {
                let (lo, hi) = (part * len / k, (part + 1) * len / k);
                let xs = x.narrow(0, lo * batch.views, (hi - lo) * batch.views)?;
                let batch_stats = self.model.batch_norm_statistics(&xs)?;
                n += 1;
                for (a, b) in avg.iter_mut().zip(batch_stats) {
                    *a = (&*a + ((b.tensor - &*a)? / n as f64)?)?;
                }
            }
        }
        if self.comm.world_size() > 1 {
            // The mean over all ranks' batches: sum the sums, divide by the count.
            let mut sums: Vec<Tensor> = avg
                .iter()
                .map(|a| a * n as f64)
                .collect::<candle_core::Result<_>>()?;
            sums.push(Tensor::new(&[n as f32], &self.device)?);
            let mut summed = all_reduce_sum_tensors(&*self.comm, &sums)?;
            let total = summed
                .pop()
                .map_or(Ok(0.0), |t| t.to_vec1::<f32>().map(|v| v[0]))?;
            n = total as usize;
            avg = summed
                .iter()
                .map(|s| s / f64::from(total.max(1.0)))
                .collect::<candle_core::Result<_>>()?;
        }
        for (a, v) in avg.iter().zip(&stats) {
            v.set(a)?;
        }
        self.reporter
            .info(&format!("precise BN: statistics averaged over {n} batches"));
        Ok(())
    }
}
