//! Safetensors checkpoints with the config in `__metadata__`: a small writer (candle's has no
//! metadata) and a reader that returns the config and the tensors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{TsmConfig, CONFIG_METADATA_KEY};
use crate::error::TsmError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TsmError + '_ {
    move |cause| TsmError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

fn meta_err(path: &Path, msg: impl Into<String>) -> TsmError {
    TsmError::Metadata {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Writes `tensors` (f32, f64, i64, u32 or u8) to a safetensors file with string `metadata`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), TsmError> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).unwrap_or_default(),
    );
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let flat = t.flatten_all()?;
        let (dtype, bytes): (&str, Vec<u8>) = match t.dtype() {
            DType::F32 => (
                "F32",
                flat.to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::F64 => (
                "F64",
                flat.to_vec1::<f64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::I64 => (
                "I64",
                flat.to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::U32 => (
                "U32",
                flat.to_vec1::<u32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::U8 => ("U8", flat.to_vec1::<u8>()?),
            other => {
                return Err(meta_err(
                    path,
                    format!("{name}: cannot write dtype {other:?}"),
                ));
            }
        };
        let begin = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.dims(), "data_offsets": [begin, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| meta_err(path, e.to_string()))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + head.len() + data.len());
    file.extend_from_slice(&(head.len() as u64).to_le_bytes());
    file.extend_from_slice(&head);
    file.extend_from_slice(&data);
    std::fs::write(path, file).map_err(io(path))
}

/// The `__metadata__` map of safetensors bytes (empty when absent).
pub fn read_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, TsmError> {
    let Some(len) = bytes.get(..8) else {
        return Err(meta_err(path, "shorter than a safetensors header"));
    };
    let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| meta_err(path, format!("header length {len} exceeds the file")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| meta_err(path, e.to_string()))?;
    let meta = header.get("__metadata__").cloned().unwrap_or_default();
    if meta.is_null() {
        return Ok(HashMap::new());
    }
    serde_json::from_value(meta).map_err(|e| meta_err(path, format!("__metadata__: {e}")))
}

/// Reads a checkpoint: the [`TsmConfig`] from its metadata and every tensor.
pub fn read_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(TsmConfig, HashMap<String, Tensor>), TsmError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let meta = read_metadata(path, &bytes)?;
    let json = meta.get(CONFIG_METADATA_KEY).ok_or_else(|| {
        meta_err(
            path,
            format!("no `{CONFIG_METADATA_KEY}` in the safetensors metadata"),
        )
    })?;
    let cfg: TsmConfig = serde_json::from_str(json)
        .map_err(|e| meta_err(path, format!("{CONFIG_METADATA_KEY}: {e}")))?;
    cfg.validate()
        .map_err(|source| TsmError::CheckpointConfig {
            path: path.to_path_buf(),
            source,
        })?;
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|cause| TsmError::Model {
            path: path.to_path_buf(),
            cause,
        })?;
    Ok((cfg, tensors))
}
