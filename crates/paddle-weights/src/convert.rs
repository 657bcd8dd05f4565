//! Named Paddle arrays to our tensors, checked against the model's shapes, with a [`Report`];
//! and the whole file-to-checkpoint conversion.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use tsm_model::{TsmConfig, CONFIG_METADATA_KEY};

use crate::pickle::{Dtype, NdArray};
use crate::{read_pdparams, rename, WeightsError, STRUCTURED_NAMES_KEY};

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
