//! The training run: model set-up (seeded init, fine-tuning, resume), the epoch loop with
//! validation, precise BN and checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use augment::Mixup;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use tsm_model::{read_checkpoint, Tsm, BN_MOMENTUM};
use video_io::SampleMode;

use crate::checkpoint::{self, epoch_stem, TrainState};
use crate::comm::{all_reduce_sum_f64, all_reduce_sum_tensors, Communicator, SingleProcess};
use crate::config::TrainConfig;
use crate::error::{io, Error, Result};
use crate::loader::{rng_for, Batch, BatchStream, Dataset, EpochPlan, Stream};
use crate::loss::{
    average_views, cross_entropy_per_sample, distill_loss, label_ranks, topk_accuracy, train_loss,
};
use crate::metrics::{EpochMeters, EpochRecord, Reporter, StepRecord};
use crate::optim::{Momentum, WarmupCosine};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Epochs completed (all of them).
    pub epochs: usize,
    /// Best validation top-1 (0 without validation).
    pub best_top1: f64,
    /// Its epoch (1-based; 0 without validation).
    pub best_epoch: usize,
    /// The last validation, if any.
    pub last_val: Option<EpochRecord>,
    /// Samples skipped because they failed to load, over the epochs this process ran.
    pub failed: usize,
    /// The final model checkpoint.
    pub final_checkpoint: PathBuf,
}

/// A training run, set up and ready to [`Trainer::run`].
pub struct Trainer {
    cfg: TrainConfig,
    cfg_json: String,
    device: Device,
    varmap: VarMap,
    model: Tsm,
    optimizer: Momentum,
    schedule: WarmupCosine,
    teacher: Option<Tsm>,
    train: Arc<Dataset>,
    valid: Option<Arc<Dataset>>,
    pool: Arc<rayon::ThreadPool>,
    state: TrainState,
    iters_per_epoch: usize,
    out: PathBuf,
    reporter: Reporter,
    comm: Rc<dyn Communicator>,
}

impl std::fmt::Debug for Trainer {
    // candle's VarMap has no Debug; the model stands for it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("model", self.model.config())
            .field("state", &self.state)
            .field("iters_per_epoch", &self.iters_per_epoch)
            .field("out", &self.out)
            .field("comm", &self.comm)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Reads the data lists, builds the model (seeded initialisation, then `model.pretrained`
    /// if set) and, with `resume`, restores the newest complete checkpoint of the run directory.
    pub fn new(cfg: TrainConfig, resume: bool) -> Result<Self> {
        Self::with_communicator(cfg, resume, Rc::new(SingleProcess), Device::Cpu)
    }

    /// [`Trainer::new`] as one rank of a data-parallel job: this rank trains on its shard of
    /// every epoch (`data.batch_size` per rank), gradients are averaged over the ranks before
    /// each step, BatchNorm statistics stay per rank (precise BN averages them over all ranks),
    /// and only rank 0 writes the run directory. Every rank reads the checkpoint it resumes
    /// from, so the run directory must be on a file system all of them see. The model, its
    /// batches and its optimizer live on `device` (this rank's GPU, or the CPU); decoding and
    /// augmentation stay on the CPU.
    pub fn with_communicator(
        mut cfg: TrainConfig,
        resume: bool,
        comm: Rc<dyn Communicator>,
        device: Device,
    ) -> Result<Self> {
        cfg.validate().map_err(|msg| Error::Config {
            path: PathBuf::from("<config>"),
            msg,
        })?;
        let d = &cfg.data;
        let train = Arc::new(Dataset::open(
            &d.train_list,
            d.format,
            &d.list,
            d.sampling.clone(),
            d.train_pipeline.clone(),
            d.decode,
            SampleMode::Train,
        )?);
        let valid = match &d.valid_list {
            Some(list) => Some(Arc::new(Dataset::open(
                list,
                d.format,
                &d.list,
                d.sampling.clone(),
                d.valid_pipeline.clone(),
                d.decode,
                SampleMode::Valid,
            )?)),
            None => None,
        };
        let iters_per_epoch = train_plan(&cfg, 0, &*comm).batches(train.len()).len();
        if iters_per_epoch == 0 {
            return Err(Error::EmptyEpoch {
                path: d.train_list.clone(),
                samples: train.len(),
                batch_size: d.batch_size,
            });
        }
        let threads = match d.num_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .map_err(|e| Error::Config {
                path: PathBuf::from("<config>"),
                msg: format!("data.num_workers: {e}"),
            })?;

        let out = cfg.output.dir.clone();
        let main = comm.rank() == 0;
        if main {
            std::fs::create_dir_all(&out).map_err(io(&out))?;
        }
        let tsm_cfg = cfg.model.tsm();
        let varmap = VarMap::new();
        let model = Tsm::new(
            &tsm_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?;
        seeded_init(&varmap, cfg.train.seed)?;
        let mut optimizer = Momentum::new(&varmap, &cfg.optimizer)?;
        let schedule_iters = if cfg.lr.iter_step { iters_per_epoch } else { 1 };
        let mut schedule = WarmupCosine::new(&cfg.lr, cfg.lr_max_epoch(), schedule_iters);
        let mut state = TrainState {
            epoch: 0,
            global_step: 0,
            lr_position: 0.0,
            seed: cfg.train.seed,
            best_top1: 0.0,
            best_epoch: 0,
        };
        let mut notes = Vec::new();
        let loaded = if resume {
            latest_checkpoint(&out, &device, &mut notes)?
        } else {
            None
        };
        if let Some(loaded) = loaded {
            let (_, tensors) = read_checkpoint(&loaded.model_path, &device)?;
            load_into(&varmap, &tensors, &loaded.model_path, false, &mut notes)?;
            optimizer
                .set_velocities(&loaded.velocities)
                .map_err(|msg| Error::Checkpoint {
                    path: loaded.model_path.clone(),
                    msg,
                })?;
            schedule.set_position(loaded.state.lr_position);
            if loaded.state.seed != cfg.train.seed {
                notes.push(format!(
                    "the checkpoint was trained with seed {}, the config says {}: continuing with the checkpoint's",
                    loaded.state.seed, cfg.train.seed
                ));
                cfg.train.seed = loaded.state.seed;
            }
            state = loaded.state;
            notes.push(format!(
                "resumed from {} (epoch {}, step {})",
                loaded.model_path.display(),
                state.epoch,
                state.global_step
            ));
        } else if let Some(p) = &cfg.model.pretrained {
            let (_, tensors) = read_checkpoint(p, &device)?;
            load_into(&varmap, &tensors, p, true, &mut notes)?;
            notes.push(format!("fine-tuning from {}", p.display()));
        }
        let teacher = match &cfg.distill {
            Some(dc) => {
                let t = Tsm::load(&dc.teacher, &device)?;
                if t.config().num_classes != tsm_cfg.num_classes {
                    return Err(Error::Checkpoint {
                        path: dc.teacher.clone(),
                        msg: format!(
                            "teacher has {} classes, the model {}",
                            t.config().num_classes,
                            tsm_cfg.num_classes
                        ),
                    });
                }
                Some(t)
            }
            None => None,
        };
        let cfg_json = serde_json::to_string(&cfg).map_err(|e| Error::Config {
            path: PathBuf::from("<config>"),
            msg: e.to_string(),
        })?;
        let reporter = if main {
            let config_path = out.join("config.toml");
            std::fs::write(&config_path, cfg.to_toml()?).map_err(io(&config_path))?;
            Reporter::open(&out, resume.then_some(state.global_step))?
        } else {
            Reporter::silent(comm.rank())
        };
        for n in &notes {
            reporter.info(n);
        }
        if comm.world_size() > 1 {
            reporter.info(&format!(
                "data parallel over {}: {} ranks, {} samples per rank and step ({} in all)",
                comm.backend(),
                comm.world_size(),
                cfg.data.batch_size,
                cfg.data.batch_size * comm.world_size()
            ));
        }
        reporter.info(&format!(
            "train: {} samples, {} iterations per epoch; valid: {} samples; {} loader threads",
            train.len(),
            iters_per_epoch,
            valid.as_ref().map_or(0, |v| v.len()),
            threads
        ));
        Ok(Self {
            cfg,
            cfg_json,
            device,
            varmap,
            model,
            optimizer,
            schedule,
            teacher,
            train,
            valid,
            pool: Arc::new(pool),
            state,
            iters_per_epoch,
            out,
            reporter,
            comm,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Tsm {
        &self.model
    }

    /// Where training stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Iterations per training epoch.
    pub fn iters_per_epoch(&self) -> usize {
        self.iters_per_epoch
    }

    /// The data-parallel communicator (a single process unless set up otherwise).
    pub fn communicator(&self) -> &dyn Communicator {
        &*self.comm
    }

    /// Trains the remaining epochs: each one trains, runs precise BN and validation when due,
    /// and checkpoints.
    pub fn run(&mut self) -> Result<RunSummary> {
        let epochs = self.cfg.train.epochs;
        let mut last_val = None;
        let mut failed = 0;
        for epoch in self.state.epoch..epochs {
            failed += self.train_epoch(epoch)?.failed;
            let last = epoch + 1 == epochs;
            let pbn = &self.cfg.precise_bn;
            if pbn.enabled && (epoch % pbn.interval == 0 || last) {
                self.precise_bn(epoch)?;
            }
            let mut is_best = false;
            if self.valid.is_some() && (epoch % self.cfg.train.val_interval == 0 || last) {
                let v = self.validate(epoch)?;
                failed += v.failed;
                if v.top1 > self.state.best_top1 || self.state.best_epoch == 0 {
                    self.state.best_top1 = v.top1;
                    self.state.best_epoch = epoch + 1;
                    is_best = true;
                }
                last_val = Some(v);
            }
            self.state.epoch = epoch + 1;
            self.state.lr_position = self.schedule.position();
            self.save(&epoch_stem(epoch + 1))?;
            if is_best {
                self.save("best")?;
                self.reporter.info(&format!(
                    "best top1 {:.5} at epoch {}",
                    self.state.best_top1, self.state.best_epoch
                ));
            }
            // Keep every save_interval-th epoch and the newest; drop the previous newest.
            if self.comm.rank() == 0 && epoch > 0 && epoch % self.cfg.train.save_interval != 0 {
                checkpoint::remove(&self.out, &epoch_stem(epoch))?;
            }
        }
        Ok(RunSummary {
            epochs,
            best_top1: self.state.best_top1,
            best_epoch: self.state.best_epoch,
            last_val,
            failed,
            final_checkpoint: checkpoint::checkpoint_paths(&self.out, &epoch_stem(epochs)).0,
        })
    }

    /// Writes checkpoint `stem` (rank 0 only: the ranks hold the same weights).
    fn save(&self, stem: &str) -> Result<()> {
        if self.comm.rank() != 0 {
            return Ok(());
        }
        checkpoint::save(
            &self.out,
            stem,
            self.model.config(),
            &self.model.named_tensors(),
            &self.optimizer.velocities(),
            &self.state,
            &self.cfg_json,
        )
    }

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
        let maps = self.model.feature_maps_t(x, true)?;
        let mut feats = maps.mean((2, 3))?;
        let (nt, c) = feats.dims2()?;
        let p = self.model.config().dropout;
        if p > 0.0 {
            let mut rng = rng_for(self.state.seed, Stream::Dropout, epoch as u64, batch as u64);
            // One f64 draw takes two 32-bit words of the ChaCha stream.
            rng.set_word_pos(2 * (first_row * c) as u128);
            let keep = (1.0 / (1.0 - p)) as f32;
            let mask: Vec<f32> = (0..nt * c)
                .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
                .collect();
            feats = (feats * Tensor::from_vec(mask, (nt, c), &self.device)?)?;
        }
        let t = self.model.config().num_seg;
        let pooled = feats.reshape((nt / t, t, c))?.mean(1)?;
        let head = self.model.head().ok_or_else(|| Error::Config {
            path: PathBuf::from("<config>"),
            msg: "model.num_classes must be at least 1".into(),
        })?;
        Ok(head.classify(&pooled)?)
    }

    /// One training epoch (`epoch` 0-based).
    pub fn train_epoch(&mut self, epoch: usize) -> Result<EpochRecord> {
        let stream = BatchStream::start(
            self.train.clone(),
            train_plan(&self.cfg, epoch, &*self.comm),
            self.pool.clone(),
        );
        let epochs = self.cfg.train.epochs;
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

    /// Validation after epoch `epoch` (0-based): eval mode, plain cross entropy, top-1/top-5
    /// over every sample (multi-view logits averaged). Ranks validate disjoint shards and sum
    /// per-sample results by sample index, so the numbers equal a single process's exactly.
    pub fn validate(&mut self, epoch: usize) -> Result<EpochRecord> {
        let Some(valid) = self.valid.clone() else {
            return Err(Error::Config {
                path: PathBuf::from("<config>"),
                msg: "data.valid_list is not set".into(),
            });
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

    /// Precise BN after epoch `epoch`: with the weights fixed, the running statistics become
    /// the plain average of `precise_bn.num_iters` training batches' statistics (PaddleVideo's
    /// `do_preciseBN`). Statistics are taken per micro-batch and per rank, as in training, and
    /// averaged over all of them.
    pub fn precise_bn(&mut self, epoch: usize) -> Result<()> {
        let stats: Vec<candle_core::Var> = {
            let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
            let mut named: Vec<_> = data
                .iter()
                .filter(|(k, _)| k.ends_with(".running_mean") || k.ends_with(".running_var"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named.into_iter().map(|(_, v)| v).collect()
        };
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
                // From zero, one update leaves (1 - momentum) * batch statistic in each.
                for v in &stats {
                    v.set(&v.as_tensor().zeros_like()?)?;
                }
                let xs = x.narrow(0, lo * batch.views, (hi - lo) * batch.views)?;
                self.model.feature_maps_t(&xs, true)?;
                n += 1;
                for (a, v) in avg.iter_mut().zip(&stats) {
                    let batch_stat = (v.as_tensor() / (1.0 - BN_MOMENTUM))?;
                    *a = (&*a + ((batch_stat - &*a)? / n as f64)?)?;
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

/// This rank's sums over a batch's samples, and its forward/backward passes.
#[derive(Debug, Default)]
struct LocalSums {
    loss: f64,
    top1: f64,
    top5: f64,
    parts: usize,
}

/// This rank's training plan of `epoch`.
fn train_plan(cfg: &TrainConfig, epoch: usize, comm: &dyn Communicator) -> EpochPlan {
    EpochPlan {
        seed: cfg.train.seed,
        stream: Stream::Sample,
        epoch,
        batch_size: cfg.data.batch_size,
        drop_last: cfg.data.drop_last,
        shuffle: true,
        mixup: cfg.train.mixup_alpha.map(|alpha| Mixup { alpha }),
        mixup_parts: cfg.train.micro_batches,
        max_batches: cfg.train.max_iters,
        prefetch: cfg.data.prefetch,
        max_failed_fraction: cfg.data.max_failed_fraction,
        rank: comm.rank(),
        world_size: comm.world_size(),
        pad: true,
    }
}

/// PaddleVideo's initialisation, from `seed` rather than candle's unseedable generator:
/// convolutions Kaiming normal (`std = sqrt(2 / fan_in)`), the fc Normal(0, 0.01); BatchNorm
/// and biases keep their constant initial values.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let dims = var.as_tensor().dims().to_vec();
        let std = if name.ends_with("conv.weight") && dims.len() == 4 {
            (2.0 / (dims[1] * dims[2] * dims[3]) as f64).sqrt()
        } else if name == "head.fc.weight" {
            0.01
        } else {
            continue;
        };
        let normal = Normal::new(0.0f32, std as f32).map_err(|e| Error::Config {
            path: PathBuf::from("<init>"),
            msg: e.to_string(),
        })?;
        let mut rng = rng_for(seed, Stream::Init, 0, i as u64);
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        var.set(&Tensor::from_vec(v, dims, var.as_tensor().device())?)?;
    }
    Ok(())
}

/// Copies `tensors` into the variables of `varmap`. With `new_head_ok`, head tensors that are
/// missing or shaped for another number of classes keep their fresh initialisation (a note
/// says so); any other missing or mismatched tensor is an error naming it.
fn load_into(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    new_head_ok: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut fresh = Vec::new();
    for name in names {
        let var = &data[name];
        let head = name.starts_with("head.");
        match tensors.get(name) {
            Some(t) if t.dims() == var.as_tensor().dims() => {
                var.set(&t.to_dtype(DType::F32)?)?;
            }
            other if head && new_head_ok => fresh.push(match other {
                Some(t) => format!("{name} {:?} -> {:?}", t.dims(), var.as_tensor().dims()),
                None => format!("{name} (absent)"),
            }),
            Some(t) => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!(
                        "`{name}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.as_tensor().dims()
                    ),
                })
            }
            None => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    msg: format!("no tensor `{name}`"),
                })
            }
        }
    }
    if !fresh.is_empty() {
        notes.push(format!("new head initialised: {}", fresh.join(", ")));
    }
    Ok(())
}

/// The newest checkpoint of `dir` whose model and state agree; torn ones are noted and skipped.
/// None (noted) when there is none: a run killed before its first checkpoint starts over.
fn latest_checkpoint(
    dir: &Path,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<Option<checkpoint::LoadedState>> {
    for epoch in checkpoint::epoch_checkpoints(dir) {
        match checkpoint::load(dir, &epoch_stem(epoch), device) {
            Ok(l) => return Ok(Some(l)),
            Err(e) => notes.push(format!("skipping checkpoint of epoch {epoch}: {e}")),
        }
    }
    notes.push(format!(
        "no complete checkpoint in {} to resume from: starting from the beginning",
        dir.display()
    ));
    Ok(None)
}
