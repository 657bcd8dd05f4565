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

/// Safetensors' own cap on the JSON header: the `safetensors` crate refuses longer ones, and a
/// length prefix read from some other kind of file must not size an allocation.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Why a file is not safetensors: its first bytes are not an 8-byte little-endian length
/// followed by that many bytes of JSON object.
#[derive(Debug, thiserror::Error)]
pub enum BadSafetensorsHeader {
    /// The file cannot even hold the length prefix.
    #[error("{file_len} bytes is shorter than the 8-byte header length")]
    TooShort {
        /// The file's size.
        file_len: u64,
    },
    /// The length prefix is larger than what follows it (what the first 8 bytes of a video, a
    /// pickle or a text file read as).
    #[error("its header length {header_len} exceeds the {available} bytes after it")]
    LongerThanFile {
        /// The length prefix.
        header_len: u64,
        /// Bytes of the file after the prefix.
        available: u64,
    },
    /// The length prefix is over [`MAX_HEADER_LEN`].
    #[error("its header length {header_len} is over safetensors' limit of {MAX_HEADER_LEN}")]
    OverLimit {
        /// The length prefix.
        header_len: u64,
    },
    /// The header is not a JSON object.
    #[error("its header does not start with `{{`")]
    NotJsonObject,
    /// The header starts like a JSON object but does not parse.
    #[error("its header is not JSON")]
    Json(#[source] serde_json::Error),
}

fn not_safetensors(path: &Path, reason: BadSafetensorsHeader) -> TsmError {
    TsmError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    }
}

/// The header length a safetensors length `prefix` gives, checked against the `available`
/// bytes after it and against [`MAX_HEADER_LEN`].
fn checked_header_len(path: &Path, prefix: [u8; 8], available: u64) -> Result<usize, TsmError> {
    let header_len = u64::from_le_bytes(prefix);
    if header_len > available {
        return Err(not_safetensors(
            path,
            BadSafetensorsHeader::LongerThanFile {
                header_len,
                available,
            },
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(not_safetensors(
            path,
            BadSafetensorsHeader::OverLimit { header_len },
        ));
    }
    // At most MAX_HEADER_LEN, so it fits a usize on every target we build for.
    usize::try_from(header_len)
        .map_err(|_| not_safetensors(path, BadSafetensorsHeader::OverLimit { header_len }))
}

/// The length prefix and JSON header of the safetensors file at `path`, without its tensor
/// data: what [`read_metadata`] needs. Files that are not safetensors (videos, `.pdparams`,
/// text) are refused from their first bytes, before anything is allocated from them.
pub fn read_header(path: &Path) -> Result<Vec<u8>, TsmError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    let Some(available) = file_len.checked_sub(8) else {
        return Err(not_safetensors(
            path,
            BadSafetensorsHeader::TooShort { file_len },
        ));
    };
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(io(path))?;
    let header_len = checked_header_len(path, prefix, available)?;
    let mut header = vec![0u8; 8 + header_len];
    header[..8].copy_from_slice(&prefix);
    file.read_exact(&mut header[8..]).map_err(io(path))?;
    Ok(header)
}

/// The `__metadata__` map of safetensors bytes (the whole file, or its header as
/// [`read_header`] gives it), empty when absent. Bytes that are not safetensors give
/// [`TsmError::NotSafetensors`].
pub fn read_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, TsmError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(not_safetensors(
            path,
            BadSafetensorsHeader::TooShort {
                file_len: bytes.len() as u64,
            },
        ));
    };
    let header_len = checked_header_len(path, *prefix, rest.len() as u64)?;
    let json = &rest[..header_len];
    if json.first() != Some(&b'{') {
        return Err(not_safetensors(path, BadSafetensorsHeader::NotJsonObject));
    }
    let header: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| not_safetensors(path, BadSafetensorsHeader::Json(e)))?;
    let meta = header.get("__metadata__").cloned().unwrap_or_default();
    if meta.is_null() {
        return Ok(HashMap::new());
    }
    serde_json::from_value(meta).map_err(|e| meta_err(path, format!("__metadata__: {e}")))
}

/// The validated [`TsmConfig`] and all metadata of the checkpoint at `path`, from its header
/// alone: no tensor data is read, and nothing is sized from the config before it is checked.
pub fn read_checkpoint_config(
    path: &Path,
) -> Result<(TsmConfig, HashMap<String, String>), TsmError> {
    let header = read_header(path)?;
    let meta = read_metadata(path, &header)?;
    let json = meta
        .get(CONFIG_METADATA_KEY)
        .ok_or_else(|| TsmError::NoConfig {
            path: path.to_path_buf(),
        })?;
    let cfg: TsmConfig = serde_json::from_str(json)
        .map_err(|e| meta_err(path, format!("{CONFIG_METADATA_KEY}: {e}")))?;
    cfg.validate()
        .map_err(|source| TsmError::CheckpointConfig {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((cfg, meta))
}

/// Reads a checkpoint: the [`TsmConfig`] from its metadata and every tensor. The header and
/// config are checked before the tensor data is read.
pub fn read_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(TsmConfig, HashMap<String, Tensor>), TsmError> {
    let (cfg, _) = read_checkpoint_config(path)?;
    let bytes = std::fs::read(path).map_err(io(path))?;
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|cause| TsmError::Model {
            path: path.to_path_buf(),
            cause,
        })?;
    Ok((cfg, tensors))
}
