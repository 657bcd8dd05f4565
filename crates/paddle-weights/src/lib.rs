//! PaddlePaddle `.pdparams` files read safely, and PaddleVideo PP-TSM weights converted to
//! [`tsm_model`] safetensors checkpoints.
//!
//! `paddle.save` writes a plain pickle of `{name: numpy array}`. [`pickle`] reads that subset
//! without executing anything; [`read_pdparams`] turns it into named arrays (skipping
//! `StructuredToParameterName@@`, joining `UnpackBigParamInfor@@` pieces); [`convert`] renames
//! Paddle's names to ours with the [`RENAME_RULES`] table, transposes Linear weights, checks every
//! shape against [`tsm_model::parameter_shapes`] and reports what was converted, unused and
//! missing. `cargo xtask convert-weights` is the command-line front.

#![warn(missing_docs)]

pub mod pickle;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use candle_core::{Device, Tensor};
use pickle::{Dtype, NdArray, PickleError, Value};
use tsm_model::{TsmConfig, CONFIG_METADATA_KEY};

/// The key `paddle.save` adds with structured-name -> parameter-name strings (not a tensor).
pub const STRUCTURED_NAMES_KEY: &str = "StructuredToParameterName@@";
/// The key describing arrays split into `key@@.0`, `key@@.1`, ... by protocol 2/3 saves.
pub const BIG_PARAM_KEY: &str = "UnpackBigParamInfor@@";

/// Errors reading or converting weights; each names the file, key or byte offset at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// Reading or writing a file failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The pickle is malformed, truncated or hostile.
    #[error("{path}: {cause}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What the reader found, with its byte offset.
        cause: PickleError,
    },
    /// The pickle is valid but is not a `.pdparams` state dict.
    #[error("{path}: not a Paddle state dict: {msg}")]
    NotAStateDict {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// One entry cannot be used.
    #[error("key `{key}`: {msg}")]
    BadEntry {
        /// The Paddle key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A tensor's shape differs from what the model needs.
    #[error(
        "key `{key}` (ours `{ours}`): shape {found:?} in the file, the model needs {expected:?}"
    )]
    ShapeMismatch {
        /// The Paddle key.
        key: String,
        /// Our name.
        ours: String,
        /// Shape in the file (after the Linear transpose).
        found: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// Tensors the model needs are absent from the file.
    #[error("{} tensors the model needs are missing, e.g. `{}`", .0.len(), .0.first().map(String::as_str).unwrap_or(""))]
    MissingKeys(Vec<String>),
    /// Depth, classes or segment count cannot be determined or contradict the options.
    #[error("{0}")]
    Config(String),
    /// Writing the checkpoint failed.
    #[error(transparent)]
    Tsm(#[from] tsm_model::TsmError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

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

/// The rename table, applied to each dot-separated component of a Paddle name (after the
/// optional `backbone.` prefix is set aside): Paddle's private layer names to candle's.
pub const RENAME_RULES: &[(&str, &str)] = &[
    ("_conv", "conv"),
    ("_batch_norm", "bn"),
    ("_mean", "running_mean"),
    ("_variance", "running_var"),
];

/// Paddle name -> (our name, transpose?) or `None` for names that are not model tensors.
///
/// `backbone.conv1_1._conv.weight` and `conv1_1._conv.weight` (ImageNet backbones, no prefix)
/// both give `backbone.conv1_1.conv.weight`; `head.fc.weight` gives `head.fc.weight`, transposed.
pub fn rename(paddle: &str) -> Option<(String, bool)> {
    if let Some(rest) = paddle.strip_prefix("head.") {
        return match rest {
            "fc.weight" => Some(("head.fc.weight".into(), true)),
            "fc.bias" => Some(("head.fc.bias".into(), false)),
            _ => None,
        };
    }
    let rest = paddle.strip_prefix("backbone.").unwrap_or(paddle);
    let first = rest.split('.').next().unwrap_or("");
    if !(first.starts_with("conv1_") || first.starts_with("bb_") || first.starts_with("res")) {
        return None;
    }
    let parts: Vec<&str> = rest
        .split('.')
        .map(|c| {
            RENAME_RULES
                .iter()
                .find(|(from, _)| *from == c)
                .map_or(c, |(_, to)| to)
        })
        .collect();
    Some((format!("backbone.{}", parts.join(".")), false))
}

/// Conversion options (the command line's `--num-seg`, `--num-classes`, `--depth`).
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Frames per clip the checkpoint is for (not stored in Paddle files).
    pub num_seg: usize,
    /// Expected classes; `None` takes them from `head.fc.bias`.
    pub num_classes: Option<usize>,
    /// Expected depth; `None` infers it from the block names.
    pub depth: Option<usize>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            num_seg: 8,
            num_classes: None,
            depth: None,
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(paddle name, our name)` of every converted tensor.
    pub converted: Vec<(String, String)>,
    /// Paddle keys not used (an ImageNet classifier's fc, unknown layers).
    pub unused: Vec<String>,
    /// Keys skipped on purpose (`StructuredToParameterName@@`).
    pub skipped: Vec<String>,
    /// The config written into the checkpoint.
    pub config: Option<TsmConfig>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(c) = &self.config {
            writeln!(
                f,
                "depth {}, num_seg {}, num_classes {}{}",
                c.depth,
                c.num_seg,
                c.num_classes,
                if c.num_classes == 0 {
                    " (backbone only)"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f, "converted: {} tensors", self.converted.len())?;
        writeln!(f, "missing: 0")?;
        writeln!(f, "unused: {}", self.unused.len())?;
        for u in &self.unused {
            writeln!(f, "  {u}")?;
        }
        Ok(())
    }
}

/// Infers the depth from block names: `bb_2_{i}` counts (Bottleneck) or `res{s}{letter}` (Basic).
fn infer_depth(names: &BTreeSet<String>) -> Option<usize> {
    let count = |prefix: &str| {
        names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix))
            .filter_map(|r| r.split('.').next())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let stage3 = count("backbone.bb_2_");
    if stage3 > 0 {
        return match (stage3, count("backbone.bb_1_")) {
            (6, _) => Some(50),
            (23, _) => Some(101),
            (36, _) => Some(152),
            _ => None,
        };
    }
    match count("backbone.res4") {
        2 => Some(18),
        6 => Some(34),
        _ => None,
    }
}

fn to_f32(key: &str, a: &NdArray) -> Result<Vec<f32>, WeightsError> {
    let d = &a.data;
    Ok(match a.dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b) as f32
            })
            .collect(),
        other => {
            return Err(WeightsError::BadEntry {
                key: key.into(),
                msg: format!("dtype {} is not a floating-point weight", other.name()),
            })
        }
    })
}

/// The array as an f32 tensor in C order (Fortran-order arrays are transposed back).
fn tensor_of(key: &str, a: &NdArray) -> Result<Tensor, WeightsError> {
    let v = to_f32(key, a)?;
    if a.fortran_order && a.shape.len() > 1 {
        let rev: Vec<usize> = a.shape.iter().rev().copied().collect();
        let t = Tensor::from_vec(v, rev, &Device::Cpu)?;
        let perm: Vec<usize> = (0..a.shape.len()).rev().collect();
        Ok(t.permute(perm)?.contiguous()?)
    } else {
        Ok(Tensor::from_vec(v, a.shape.clone(), &Device::Cpu)?)
    }
}

/// Converts named Paddle arrays into our tensors (in model order) and a report.
pub fn convert(
    arrays: &[(String, NdArray)],
    opts: &ConvertOptions,
) -> Result<(Vec<(String, Tensor)>, Report), WeightsError> {
    let mut report = Report::default();
    let mut by_ours: BTreeMap<String, (&str, bool, &NdArray)> = BTreeMap::new();
    for (key, a) in arrays {
        match rename(key) {
            Some((ours, transpose)) => {
                if by_ours.insert(ours.clone(), (key, transpose, a)).is_some() {
                    return Err(WeightsError::BadEntry {
                        key: key.clone(),
                        msg: format!("a second tensor maps to `{ours}`"),
                    });
                }
            }
            None => report.unused.push(key.clone()),
        }
    }
    let names: BTreeSet<String> = by_ours.keys().cloned().collect();
    let inferred = infer_depth(&names);
    let depth = match (opts.depth, inferred) {
        (Some(d), Some(i)) if d != i => {
            return Err(WeightsError::Config(format!(
                "--depth {d} but the file's blocks are those of depth {i}"
            )))
        }
        (Some(d), _) => d,
        (None, Some(i)) => i,
        (None, None) => {
            return Err(WeightsError::Config(
                "cannot infer the depth from the block names; pass --depth".into(),
            ))
        }
    };
    let file_classes = by_ours.get("head.fc.bias").map(|(_, _, a)| a.numel());
    let num_classes = match (opts.num_classes, file_classes) {
        (Some(n), Some(f)) if n != f => {
            return Err(WeightsError::Config(format!(
                "--num-classes {n} but head.fc has {f} outputs"
            )))
        }
        (Some(n), None) if n > 0 => {
            return Err(WeightsError::Config(format!(
                "--num-classes {n} but the file has no head (a backbone-only file)"
            )))
        }
        (_, Some(f)) => f,
        (_, None) => 0,
    };
    if num_classes == 0 {
        // a head-less file: any stray head tensor is unused
        for k in ["head.fc.weight", "head.fc.bias"] {
            if let Some((key, _, _)) = by_ours.remove(k) {
                report.unused.push(key.to_string());
            }
        }
    }
    let cfg = TsmConfig {
        num_seg: opts.num_seg,
        ..TsmConfig::pptsm(depth, num_classes)
    };
    cfg.validate().map_err(tsm_model::TsmError::from)?;
    let expected = tsm_model::parameter_shapes(&cfg)?;
    let missing: Vec<String> = expected
        .iter()
        .filter(|(n, _)| !by_ours.contains_key(n))
        .map(|(n, _)| n.clone())
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::MissingKeys(missing));
    }
    let mut out = Vec::with_capacity(expected.len());
    for (ours, shape) in &expected {
        let Some((key, transpose, a)) = by_ours.remove(ours) else {
            continue;
        };
        let mut found = a.shape.clone();
        if transpose {
            found.reverse();
        }
        if found != *shape || (transpose && a.shape.len() != 2) {
            return Err(WeightsError::ShapeMismatch {
                key: key.to_string(),
                ours: ours.clone(),
                found,
                expected: shape.clone(),
            });
        }
        let mut t = tensor_of(key, a)?;
        if transpose {
            t = t.t()?.contiguous()?;
        }
        report.converted.push((key.to_string(), ours.clone()));
        out.push((ours.clone(), t));
    }
    report
        .unused
        .extend(by_ours.values().map(|(k, _, _)| k.to_string()));
    report.config = Some(cfg);
    Ok((out, report))
}

/// Converts a `.pdparams` file into a safetensors checkpoint [`tsm_model::Tsm::load`] reads.
pub fn convert_file(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<Report, WeightsError> {
    let arrays = read_pdparams(input)?;
    let (tensors, mut report) = convert(&arrays, opts)?;
    report.skipped.push(STRUCTURED_NAMES_KEY.into());
    let Some(cfg) = &report.config else {
        return Err(WeightsError::Config("no config".into()));
    };
    let json = serde_json::to_string(cfg).map_err(|e| WeightsError::Config(e.to_string()))?;
    let source = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta: BTreeMap<String, String> = [
        (CONFIG_METADATA_KEY.to_string(), json),
        ("depth".into(), cfg.depth.to_string()),
        ("num_seg".into(), cfg.num_seg.to_string()),
        ("num_classes".into(), cfg.num_classes.to_string()),
        ("converted_from".into(), source),
    ]
    .into_iter()
    .collect();
    tsm_model::write_safetensors(output, &tensors, &meta)?;
    Ok(report)
}

/// One `--inspect` line: key, numpy dtype name, shape.
pub type InspectEntry = (String, &'static str, Vec<usize>);

/// `(key, dtype, shape)` of every array in a `.pdparams` file, for `--inspect`.
pub fn inspect(path: &Path) -> Result<Vec<InspectEntry>, WeightsError> {
    Ok(read_pdparams(path)?
        .into_iter()
        .map(|(k, a)| (k, a.dtype.name(), a.shape))
        .collect())
}
