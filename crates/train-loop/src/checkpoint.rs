//! Checkpoints: the model as a tsm-model safetensors file and a training-state safetensors file
//! beside it (velocities, schedule position, epoch, step, seed, best score, resolved config).
//! Each file is written under a temporary name, fsynced and renamed, so a killed run leaves
//! either the old file or the new one; both carry the global step, so a pair torn by a kill
//! between the two renames is recognised and skipped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tsm_model::{
    read_checked_metadata, read_tensors, write_safetensors, TsmConfig, CONFIG_METADATA_KEY,
};

use crate::error::{io, Error, Result};

/// Metadata key of the training state (JSON) in a state file, and of the step in a model file.
pub const STATE_METADATA_KEY: &str = "train_state";
/// Metadata key of the global step in a model checkpoint.
pub const STEP_METADATA_KEY: &str = "global_step";
/// Metadata key of the resolved training config (JSON) in a state file.
pub const TRAIN_CONFIG_METADATA_KEY: &str = "train_config";

/// Where training stands after a completed epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The schedule's position, in epochs.
    pub lr_position: f64,
    /// The run's seed (every random stream derives from it and the epoch).
    pub seed: u64,
    /// Best validation top-1 so far.
    pub best_top1: f64,
    /// The epoch (1-based) that reached it; 0 before any validation.
    pub best_epoch: usize,
}

/// The two files of checkpoint `stem` in `dir`.
pub fn checkpoint_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.safetensors")),
        dir.join(format!("{stem}.state.safetensors")),
    )
}

/// The stem of the checkpoint after epoch `epoch` (1-based).
pub fn epoch_stem(epoch: usize) -> String {
    format!("epoch_{epoch:05}")
}

/// Test hook: milliseconds to sleep between writing a temporary checkpoint file and renaming
/// it, so that tests can kill a run in the middle of a checkpoint write.
pub const PAUSE_ENV: &str = "TRAIN_LOOP_TEST_CHECKPOINT_PAUSE_MS";

/// Runs `write` on a temporary path beside `path`, then fsyncs it and renames it to `path`.
fn atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    if let Some(ms) = std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable only once the directory is synced.
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Writes checkpoint `stem`: model tensors with `cfg`, then the state with velocities.
pub fn save(
    dir: &Path,
    stem: &str,
    cfg: &TsmConfig,
    model: &[(String, Tensor)],
    velocities: &[(String, Tensor)],
    state: &TrainState,
    train_config_json: &str,
) -> Result<()> {
    let (model_path, state_path) = checkpoint_paths(dir, stem);
    // A diverged model must not replace good checkpoints (the loss check catches most
    // divergence, but not an update after the last loss of an epoch).
    for (name, t) in model {
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        if !values.iter().all(|v| v.is_finite()) {
            return Err(Error::Checkpoint {
                path: model_path,
                msg: format!(
                    "`{name}` holds NaN or infinite values after epoch {}: training diverged, \
                     not saved (earlier checkpoints are kept)",
                    state.epoch
                ),
            });
        }
    }
    let step = state.global_step.to_string();
    let meta: BTreeMap<String, String> = [
        (CONFIG_METADATA_KEY.to_string(), json(cfg, &model_path)?),
        (STEP_METADATA_KEY.to_string(), step),
    ]
    .into_iter()
    .collect();
    atomic(&model_path, |tmp| Ok(write_safetensors(tmp, model, &meta)?))?;
    let meta: BTreeMap<String, String> = [
        (STATE_METADATA_KEY.to_string(), json(state, &state_path)?),
        (
            TRAIN_CONFIG_METADATA_KEY.to_string(),
            train_config_json.to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let named: Vec<(String, Tensor)> = velocities
        .iter()
        .map(|(n, t)| (format!("velocity.{n}"), t.clone()))
        .collect();
    atomic(&state_path, |tmp| {
        Ok(write_safetensors(tmp, &named, &meta)?)
    })
}

fn json<T: Serialize>(v: &T, p: &Path) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Checkpoint {
        path: p.to_path_buf(),
        msg: e.to_string(),
    })
}

/// A checkpoint's state and velocities, checked against its model file.
#[derive(Debug)]
pub struct LoadedState {
    /// Where training stood.
    pub state: TrainState,
    /// Velocities by parameter name.
    pub velocities: HashMap<String, Tensor>,
    /// The model file.
    pub model_path: PathBuf,
}

/// Reads checkpoint `stem` of `dir`; an error when a file is missing or the pair is torn.
pub fn load(dir: &Path, stem: &str, device: &Device) -> Result<LoadedState> {
    let (model_path, state_path) = checkpoint_paths(dir, stem);
    let bad = |p: &Path, msg: String| Error::Checkpoint {
        path: p.to_path_buf(),
        msg,
    };
    // Headers first, each checked against its file's size: a bogus file (a huge one included)
    // is refused before its data is read, and the model file's data is not needed here.
    let model_meta = read_checked_metadata(&model_path)?;
    let meta = read_checked_metadata(&state_path)?;
    let state: TrainState = meta
        .get(STATE_METADATA_KEY)
        .ok_or_else(|| bad(&state_path, format!("no `{STATE_METADATA_KEY}` metadata")))
        .and_then(|j| serde_json::from_str(j).map_err(|e| bad(&state_path, e.to_string())))?;
    let step = model_meta
        .get(STEP_METADATA_KEY)
        .cloned()
        .unwrap_or_default();
    if step != state.global_step.to_string() {
        return Err(bad(
            &model_path,
            format!(
                "model is at step {step:?} but its state file at step {}",
                state.global_step
            ),
        ));
    }
    let (_, tensors) = read_tensors(&state_path, device)?;
    let velocities = tensors
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("velocity.").map(|n| (n.to_string(), v)))
        .collect();
    Ok(LoadedState {
        state,
        velocities,
        model_path,
    })
}

/// Epochs (1-based) of the `epoch_NNNNN` checkpoints in `dir` whose two files exist, newest
/// first.
pub fn epoch_checkpoints(dir: &Path) -> Vec<usize> {
    let mut epochs: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name
                .strip_prefix("epoch_")?
                .strip_suffix(".state.safetensors")?;
            let epoch: usize = n.parse().ok()?;
            dir.join(format!("epoch_{n}.safetensors"))
                .exists()
                .then_some(epoch)
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    epochs
}

/// Removes checkpoint `stem`'s files (missing ones are fine).
pub fn remove(dir: &Path, stem: &str) -> Result<()> {
    let (m, s) = checkpoint_paths(dir, stem);
    for p in [m, s] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint pair of a two-tensor "model" at step 3 in `dir`.
    fn saved(dir: &Path) -> (PathBuf, PathBuf) {
        let t = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let state = TrainState {
            epoch: 1,
            global_step: 3,
            lr_position: 1.0,
            seed: 0,
            best_top1: 0.0,
            best_epoch: 0,
        };
        let model = [("w".to_string(), t.clone())];
        let velocities = [("w".to_string(), t)];
        let cfg = TsmConfig::pptsm_r18(2);
        save(dir, "ck", &cfg, &model, &velocities, &state, "{}").unwrap();
        checkpoint_paths(dir, "ck")
    }

    /// A file whose header declares less than the file holds is refused from its header: at a
    /// terabyte (sparse, so it costs no disk), reading it first would fail to allocate.
    #[test]
    fn a_huge_bogus_checkpoint_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let (model, state) = saved(dir.path());
        let loaded = load(dir.path(), "ck", &Device::Cpu).unwrap();
        assert_eq!(loaded.state.global_step, 3);
        assert_eq!(loaded.velocities.len(), 1);
        for path in [&state, &model] {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(1 << 40).unwrap();
            let e = load(dir.path(), "ck", &Device::Cpu).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(&e, Error::Model(tsm_model::TsmError::DataLength { path: p, .. }) if p == path),
                "{text}"
            );
            assert!(text.contains("bytes of tensor data but 1099511"), "{text}");
            saved(dir.path());
        }
    }
}
