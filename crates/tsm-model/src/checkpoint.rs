//! Safetensors checkpoints with the config in `__metadata__`: a small writer (candle's has no
//! metadata) and a reader that returns the config and the tensors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{TsmConfig, CONFIG_METADATA_KEY};
use crate::error::TsmError;

/// Metadata values or tensors by name.
type ByName<T> = HashMap<String, T>;

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

/// What is wrong with one tensor's entry in a safetensors header (its name is in the
/// [`TsmError::BadTensorEntry`] around this).
#[derive(Debug, thiserror::Error)]
pub enum BadTensorEntry {
    /// The entry is not `{"dtype": .., "shape": [..], "data_offsets": [begin, end]}`.
    #[error("not a tensor entry")]
    Json(#[source] serde_json::Error),
    /// A dtype candle cannot load.
    #[error("dtype `{0}` is not one of {DTYPES}")]
    Dtype(String),
    /// The shape's element count (or its byte size) does not fit a `usize`.
    #[error("shape {0:?} has more elements than memory can hold")]
    Overflow(Vec<usize>),
    /// The byte range does not hold exactly the shape's elements.
    #[error("shape {shape:?} of {dtype} is {bytes} bytes but its data_offsets [{begin}, {end}] span {span}",
        span = end.saturating_sub(*begin))]
    Size {
        /// The shape.
        shape: Vec<usize>,
        /// The dtype.
        dtype: String,
        /// Bytes the shape needs.
        bytes: u64,
        /// The declared range.
        begin: u64,
        /// Its end.
        end: u64,
    },
    /// The byte range does not start where the previous tensor's ends: tensors overlap or
    /// leave a gap (safetensors packs them end to end).
    #[error("its data begins at byte {begin} of the data, not at {expected} where the previous tensor ends")]
    Gap {
        /// The declared start.
        begin: u64,
        /// The previous tensor's end (0 for the first).
        expected: u64,
    },
}

/// The dtypes a checkpoint may hold, with their sizes in bytes: those candle loads from
/// safetensors as real numbers.
const DTYPE_SIZES: [(&str, u64); 11] = [
    ("U8", 1),
    ("U16", 2),
    ("U32", 4),
    ("I16", 2),
    ("I32", 4),
    ("I64", 8),
    ("BF16", 2),
    ("F16", 2),
    ("F32", 4),
    ("F64", 8),
    ("F8_E4M3", 1),
];
const DTYPES: &str = "U8, U16, U32, I16, I32, I64, BF16, F16, F32, F64, F8_E4M3";

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
/// data: what [`read_metadata`] needs. Files that are not safetensors
/// (videos, `.pdparams`, text) are refused from their first bytes, before anything is
/// allocated from them.
pub fn read_header(path: &Path) -> Result<Vec<u8>, TsmError> {
    Ok(open_header(path)?.0)
}

/// [`read_header`] and the file's length.
fn open_header(path: &Path) -> Result<(Vec<u8>, u64), TsmError> {
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
    Ok((header, file_len))
}

/// The JSON object of safetensors bytes (the whole file or its header) and the header's
/// length, prefix included.
fn parse_header(
    path: &Path,
    bytes: &[u8],
) -> Result<(serde_json::Map<String, serde_json::Value>, u64), TsmError> {
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
    let header = serde_json::from_slice(json)
        .map_err(|e| not_safetensors(path, BadSafetensorsHeader::Json(e)))?;
    Ok((header, 8 + header_len as u64))
}

/// The `__metadata__` entry of a parsed header, empty when absent.
fn metadata_of(
    path: &Path,
    header: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<HashMap<String, String>, TsmError> {
    match header.remove("__metadata__") {
        None | Some(serde_json::Value::Null) => Ok(HashMap::new()),
        Some(meta) => {
            serde_json::from_value(meta).map_err(|e| meta_err(path, format!("__metadata__: {e}")))
        }
    }
}

/// The `__metadata__` map of safetensors bytes (the whole file, or its header as
/// [`read_header`] gives it), empty when absent. Bytes that are not safetensors give
/// [`TsmError::NotSafetensors`]. The tensor entries are not looked at:
/// [`read_checked_metadata`] checks them too.
pub fn read_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, TsmError> {
    let (mut header, _) = parse_header(path, bytes)?;
    metadata_of(path, &mut header)
}

/// One tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Checks every tensor entry of a parsed header (metadata removed) as safetensors and candle
/// will read it: a known dtype, a shape whose bytes fit memory and match its byte range, ranges
/// packed end to end. Returns the bytes of tensor data the entries declare.
fn checked_data_len(
    path: &Path,
    header: serde_json::Map<String, serde_json::Value>,
) -> Result<u64, TsmError> {
    let mut entries = Vec::with_capacity(header.len());
    for (name, value) in header {
        let bad = |reason| TsmError::BadTensorEntry {
            path: path.to_path_buf(),
            name: name.clone(),
            reason: Box::new(reason),
        };
        let entry: TensorEntry =
            serde_json::from_value(value).map_err(|e| bad(BadTensorEntry::Json(e)))?;
        let Some(&(_, size)) = DTYPE_SIZES.iter().find(|(d, _)| *d == entry.dtype) else {
            return Err(bad(BadTensorEntry::Dtype(entry.dtype)));
        };
        let bytes = entry
            .shape
            .iter()
            .try_fold(size, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
            .filter(|&n| usize::try_from(n).is_ok());
        let Some(bytes) = bytes else {
            return Err(bad(BadTensorEntry::Overflow(entry.shape)));
        };
        let [begin, end] = entry.data_offsets;
        if end.checked_sub(begin) != Some(bytes) {
            return Err(bad(BadTensorEntry::Size {
                shape: entry.shape,
                dtype: entry.dtype,
                bytes,
                begin,
                end,
            }));
        }
        entries.push((begin, end, name));
    }
    // safetensors orders the entries by offset, whatever their order in the JSON
    entries.sort_unstable();
    let mut expected = 0;
    for (begin, end, name) in entries {
        if begin != expected {
            return Err(TsmError::BadTensorEntry {
                path: path.to_path_buf(),
                name,
                reason: Box::new(BadTensorEntry::Gap { begin, expected }),
            });
        }
        expected = end;
    }
    Ok(expected)
}

/// The `__metadata__` map of safetensors bytes from their header (the whole file, or its
/// header as [`read_header`] gives it) in a file of `file_len` bytes, after checking every
/// tensor entry and that the data they declare is what follows the header: a truncated or
/// padded file, or one whose entries claim more bytes than it holds, is refused before any
/// tensor data is read.
fn checked_metadata(
    path: &Path,
    header: &[u8],
    file_len: u64,
) -> Result<HashMap<String, String>, TsmError> {
    let (mut json, header_len) = parse_header(path, header)?;
    let meta = metadata_of(path, &mut json)?;
    let declared = checked_data_len(path, json)?;
    let held = file_len.saturating_sub(header_len);
    if declared != held {
        return Err(TsmError::DataLength {
            path: path.to_path_buf(),
            declared,
            held,
        });
    }
    Ok(meta)
}

/// The `__metadata__` map of the safetensors file at `path`, read from its header alone after
/// checking the header: every tensor entry well formed (a dtype candle loads, a byte range
/// that holds its shape, ranges packed end to end) and the data they declare exactly what the
/// file holds after the header. A file whose header lies about its size is refused without
/// reading its data.
pub fn read_checked_metadata(path: &Path) -> Result<HashMap<String, String>, TsmError> {
    let (header, file_len) = open_header(path)?;
    checked_metadata(path, &header, file_len)
}

/// The validated config in a checkpoint's metadata.
fn config_of(path: &Path, meta: &HashMap<String, String>) -> Result<TsmConfig, TsmError> {
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
    Ok(cfg)
}

/// The validated [`TsmConfig`] and all metadata of the checkpoint at `path`, from its header
/// alone ([`read_checked_metadata`]): no tensor data is read, and nothing is sized from the
/// config before it is checked.
pub fn read_checkpoint_config(
    path: &Path,
) -> Result<(TsmConfig, HashMap<String, String>), TsmError> {
    let meta = read_checked_metadata(path)?;
    Ok((config_of(path, &meta)?, meta))
}

/// The metadata and tensors of the safetensors file at `path`; the header is checked
/// ([`read_checked_metadata`]) before the tensor data is read.
pub fn read_tensors(
    path: &Path,
    device: &Device,
) -> Result<(ByName<String>, ByName<Tensor>), TsmError> {
    let meta = read_checked_metadata(path)?;
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok((meta, load_tensors(path, &bytes, device)?))
}

/// The tensors of safetensors `bytes` whose header has been checked.
fn load_tensors(
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<HashMap<String, Tensor>, TsmError> {
    candle_core::safetensors::load_buffer(bytes, device).map_err(|cause| TsmError::Model {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads a checkpoint: the [`TsmConfig`] from its metadata and every tensor. The header and
/// config are checked before the tensor data is read.
pub fn read_checkpoint(
    path: &Path,
    device: &Device,
) -> Result<(TsmConfig, HashMap<String, Tensor>), TsmError> {
    let (cfg, _) = read_checkpoint_config(path)?;
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok((cfg, load_tensors(path, &bytes, device)?))
}

/// [`read_checkpoint`] of a checkpoint already in memory (`path` names it in errors): the
/// header and config are checked before any tensor is made.
pub(crate) fn parse_checkpoint(
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<(TsmConfig, HashMap<String, Tensor>), TsmError> {
    let meta = checked_metadata(path, bytes, bytes.len() as u64)?;
    let cfg = config_of(path, &meta)?;
    Ok((cfg, load_tensors(path, bytes, device)?))
}

/// The most heap [`crate::Tsm::from_checkpoint_bytes`] holds for the checkpoint `bytes` (in
/// f32), whatever they claim; the fuzz target and `tests/hostile_checkpoint.rs` check it.
///
/// Parsing the JSON header costs up to about 40 bytes per header byte (serde_json's values of
/// an array of one-digit numbers, while the array grows); each tensor is copied once out of the
/// data and converted to f32 at most once (u8 to f32 is 4 bytes per byte), so the data costs
/// 6 bytes per byte; the fixed part covers first allocations.
pub fn max_load_heap_bytes(bytes: &[u8]) -> usize {
    const PER_HEADER_BYTE: usize = 64;
    const PER_DATA_BYTE: usize = 6;
    let header = bytes
        .first_chunk::<8>()
        .and_then(|p| usize::try_from(u64::from_le_bytes(*p)).ok())
        .map_or(bytes.len(), |n| n.min(bytes.len()));
    PER_HEADER_BYTE * header + PER_DATA_BYTE * (bytes.len() - header) + (1 << 20)
}
