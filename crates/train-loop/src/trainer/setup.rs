//! Setting a run up: data, model (seeded initialisation, fine-tuning), optimizer and schedule,
//! and resuming from the newest complete checkpoint.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use tsm_model::{read_checkpoint, ParamRole, Tsm};
use video_io::SampleMode;

use super::{train_plan, Trainer};
use crate::checkpoint::{self, epoch_stem, TrainState};
use crate::comm::{Communicator, SingleProcess};
use crate::config::{ConfigError, TrainConfig};
use crate::error::{io, Error, Result};
use crate::loader::{rng_for, Dataset, Stream};
use crate::metrics::Reporter;
use crate::optim::{Momentum, WarmupCosine};

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
        cfg.validate()?;
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
            .map_err(|e| ConfigError::Value(format!("data.num_workers: {e}")))?;

        let out = cfg.output.dir.clone();
        let main = comm.rank() == 0;
        if main {
            std::fs::create_dir_all(&out).map_err(io(&out))?;
        }
        let tsm_cfg = cfg.model.arch.clone();
        let varmap = VarMap::new();
        let model = Tsm::new(
            &tsm_cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &device),
        )?
        .with_product_precision(cfg.train.precision)?;
        let seed = cfg.train.seed;
        model.init_weights(|i| rng_for(seed, Stream::Init, 0, i as u64))?;
        let mut optimizer = Momentum::new(model.params(), &cfg.optimizer)?;
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
            load_into(&model, &tensors, &loaded.model_path, false, &mut notes)?;
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
            load_into(&model, &tensors, p, true, &mut notes)?;
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
        let cfg_json = serde_json::to_string(&cfg)
            .map_err(|e| ConfigError::Value(format!("the config as JSON: {e}")))?;
        let mut reporter = if main {
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
}

/// Copies `tensors` into the model's variables. With `new_head_ok`, classifier tensors that
/// are missing or shaped for another number of classes keep their fresh initialisation (a note
/// says so); any other missing or mismatched tensor is an error naming it.
fn load_into(
    model: &Tsm,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    new_head_ok: bool,
    notes: &mut Vec<String>,
) -> Result<()> {
    let mut params = model.params();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    let mut fresh = Vec::new();
    for p in params {
        let (name, var) = (&p.name, p.var()?);
        let head = matches!(p.role, ParamRole::FcWeight | ParamRole::FcBias);
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
