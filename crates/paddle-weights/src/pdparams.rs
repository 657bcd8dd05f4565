//! `.pdparams` bytes to named arrays: the state dict's structure on top of [`crate::pickle`],
//! with `UnpackBigParamInfor@@` pieces joined.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use crate::pickle::{self, NdArray, PickleError, Value};
use crate::WeightsError;

/// The key `paddle.save` adds with structured-name -> parameter-name strings (not a tensor).
pub const STRUCTURED_NAMES_KEY: &str = "StructuredToParameterName@@";
/// The key describing arrays split into `key@@.0`, `key@@.1`, ... by protocol 2/3 saves.
pub const BIG_PARAM_KEY: &str = "UnpackBigParamInfor@@";

/// Reads a `.pdparams` file into named arrays, in file order.
pub fn read_pdparams(path: &Path) -> Result<Vec<(String, NdArray)>, WeightsError> {
    let bytes = std::fs::read(path).map_err(|cause| WeightsError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    parse_pdparams(&bytes).map_err(|e| match e {
        ParseError::Pickle(cause) => WeightsError::Pickle {
            path: path.to_path_buf(),
            cause,
        },
        ParseError::Structure(msg) => WeightsError::NotAStateDict {
            path: path.to_path_buf(),
            msg,
        },
        ParseError::Entry(key, msg) => WeightsError::BadEntry { key, msg },
    })
}

/// Why bytes are not a state dict (the file-free part of [`read_pdparams`]).
#[derive(Debug)]
pub enum ParseError {
    /// Pickle-level failure.
    Pickle(PickleError),
    /// The value is not a dict of arrays.
    Structure(String),
    /// An entry (key, message) is unusable.
    Entry(String, String),
}

/// The reader's memory guarantee: parsing `input_len` bytes never holds more heap than this.
///
/// One opcode byte can push one value onto the unpickler's stack, and a growing `Vec` briefly
/// holds its old and new buffers, so the figure per input byte is a few stack slots (found by
/// cargo-fuzz: 1252 bytes of `EMPTY_LIST`/`EMPTY_DICT` opcodes peak at ~200 KiB). The fixed part
/// covers first allocations and small tables. `tests/hostile.rs` and the fuzz target check it.
pub fn max_heap_bytes(input_len: usize) -> usize {
    const STACK_SLOTS_PER_INPUT_BYTE: usize = 8;
    STACK_SLOTS_PER_INPUT_BYTE * std::mem::size_of::<Value>() * input_len + (64 << 10)
}

/// Parses `.pdparams` bytes into named arrays.
///
/// The arrays hold at most the file's bytes: a key given twice is an error, and so is an array
/// shared by two keys through a memo reference (`paddle.save` writes neither), because joining
/// or converting shared arrays would copy the same bytes once per key.
pub fn parse_pdparams(bytes: &[u8]) -> Result<Vec<(String, NdArray)>, ParseError> {
    let value = pickle::parse(bytes).map_err(ParseError::Pickle)?;
    let Value::Dict(items, _) = value else {
        return Err(ParseError::Structure(
            "the top-level value is not a dict".into(),
        ));
    };
    let mut arrays: Vec<Option<(String, NdArray)>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut big: Vec<(String, Value)> = Vec::new();
    let mut seen = HashSet::new();
    for (k, v) in items {
        let Value::Str(key) = k else {
            return Err(ParseError::Structure("a key is not a string".into()));
        };
        let key = key.to_string();
        if !seen.insert(key.clone()) {
            return Err(ParseError::Entry(key, "the key appears twice".into()));
        }
        match v {
            _ if key == STRUCTURED_NAMES_KEY => {}
            Value::Dict(info, _) if key == BIG_PARAM_KEY => {
                for (name, desc) in info {
                    if let Value::Str(name) = name {
                        big.push((name.to_string(), desc));
                    }
                }
            }
            Value::Array(Some(a)) => {
                index.insert(key.clone(), arrays.len());
                arrays.push(Some((key, (*a).clone())));
            }
            other => {
                return Err(ParseError::Entry(
                    key,
                    format!("expected an array, found a {}", other.kind()),
                ))
            }
        }
    }
    // Every other holder of the data (the pickle's memo and stack) is gone by now.
    if let Some((key, _)) = arrays
        .iter()
        .flatten()
        .find(|(_, a)| Rc::strong_count(&a.data) > 1)
    {
        return Err(ParseError::Entry(
            key.clone(),
            "its array is shared with another key (a memo reference)".into(),
        ));
    }
    for (name, desc) in big {
        let joined = join_big_param(&mut arrays, &index, &name, &desc)?;
        arrays.push(Some((name, joined)));
    }
    Ok(arrays.into_iter().flatten().collect())
}

/// Joins `name@@.0`, `name@@.1`, ... (flattened pieces, taken out of `arrays`, found through
/// `index`) into one array with the original shape.
fn join_big_param(
    arrays: &mut [Option<(String, NdArray)>],
    index: &HashMap<String, usize>,
    name: &str,
    desc: &Value,
) -> Result<NdArray, ParseError> {
    let err = |m: &str| ParseError::Entry(name.to_string(), format!("{BIG_PARAM_KEY}: {m}"));
    let Value::Dict(fields, _) = desc else {
        return Err(err("description is not a dict"));
    };
    let field = |f: &str| {
        fields
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s.as_ref() == f))
            .map(|(_, v)| v)
    };
    let shape: Vec<usize> = match field("OriginShape") {
        Some(Value::Tuple(items, _)) => items.to_vec(),
        Some(Value::List(items, _)) => items.clone(),
        _ => return Err(err("no OriginShape")),
    }
    .iter()
    .map(|v| match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    })
    .collect::<Option<_>>()
    .ok_or_else(|| err("OriginShape is not a list of sizes"))?;
    let slices: Vec<String> = match field("slices") {
        Some(Value::List(items, _)) => items.clone(),
        Some(Value::Tuple(items, _)) => items.to_vec(),
        _ => return Err(err("no slices")),
    }
    .into_iter()
    .map(|v| match v {
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    })
    .collect::<Option<_>>()
    .ok_or_else(|| err("slices are not names"))?;
    let mut data = Vec::new();
    let mut dtype = None;
    for s in &slices {
        let Some((_, piece)) = index.get(s).and_then(|&i| arrays[i].take()) else {
            return Err(err(&format!("piece `{s}` is missing")));
        };
        if dtype.is_some_and(|d| d != piece.dtype) {
            return Err(err("pieces have different dtypes"));
        }
        dtype = Some(piece.dtype);
        data.extend_from_slice(&piece.data);
    }
    let dtype = dtype.ok_or_else(|| err("no pieces"))?;
    let want = shape
        .iter()
        .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| err("OriginShape overflows"))?;
    if want != data.len() {
        return Err(err(&format!(
            "pieces hold {} bytes, OriginShape {shape:?} needs {want}",
            data.len()
        )));
    }
    Ok(NdArray {
        dtype,
        shape,
        data: Rc::new(data),
        fortran_order: false,
    })
}
