//! Batch Mixup (Zhang et al., 2018): blend each sample with another of the same batch.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_alpha() -> f64 {
    0.2
}

/// PaddleVideo's `Mixup`: one `lam ~ Beta(alpha, alpha)` and one permutation per batch; the
/// data becomes `lam * x + (1 - lam) * x[perm]` and the loss `lam * L(y) + (1 - lam) * L(y[perm])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mixup {
    /// Beta parameter (default 0.2); must be positive.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
}

impl Default for Mixup {
    fn default() -> Self {
        Self {
            alpha: default_alpha(),
        }
    }
}

/// What Mixup drew for a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixupChoice {
    /// Weight of the original samples, in [0, 1].
    pub lam: f32,
    /// Sample `i` is mixed with sample `perm[i]`.
    pub perm: Vec<usize>,
}

/// A mixed batch with what the loss needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MixedBatch {
    /// The mixed samples, laid out as the input.
    pub data: Vec<f32>,
    /// The original labels.
    pub labels: Vec<u32>,
    /// The labels of the samples mixed in (`labels[perm[i]]`).
    pub permuted_labels: Vec<u32>,
    /// The weight of `labels` in the loss.
    pub lam: f32,
}

impl Mixup {
    /// Draws a permutation of `batch` samples, then `lam` (the Python's order).
    pub fn sample(&self, batch: usize, rng: &mut impl Rng) -> Result<MixupChoice> {
        let beta = Beta::new(self.alpha, self.alpha).map_err(|e| Error::InvalidParameter {
            transform: "Mixup",
            reason: format!("alpha = {}: {e}", self.alpha),
        })?;
        let mut perm: Vec<usize> = (0..batch).collect();
        perm.shuffle(rng);
        let lam = beta.sample(rng).clamp(0.0, 1.0) as f32;
        Ok(MixupChoice { lam, perm })
    }

    /// Mixes `data`, `labels.len()` equally long samples back to back, as `choice` says.
    pub fn apply(&self, data: &[f32], labels: &[u32], choice: &MixupChoice) -> Result<MixedBatch> {
        let batch = labels.len();
        let shape_err = Error::BatchShape {
            len: data.len(),
            batch,
        };
        if batch == 0 || !data.len().is_multiple_of(batch) {
            return Err(shape_err);
        }
        let mut seen = vec![false; batch];
        for &p in &choice.perm {
            match seen.get_mut(p) {
                Some(s) if !*s => *s = true,
                _ => {
                    return Err(Error::InvalidParameter {
                        transform: "Mixup",
                        reason: format!("{:?} is not a permutation of 0..{batch}", choice.perm),
                    })
                }
            }
        }
        if choice.perm.len() != batch {
            return Err(shape_err);
        }
        let n = data.len() / batch;
        let (lam, rest) = (choice.lam, 1.0 - choice.lam);
        let mut out = Vec::with_capacity(data.len());
        for (i, &p) in choice.perm.iter().enumerate() {
            let (a, b) = (&data[i * n..(i + 1) * n], &data[p * n..(p + 1) * n]);
            out.extend(a.iter().zip(b).map(|(x, y)| lam * x + rest * y));
        }
        Ok(MixedBatch {
            data: out,
            labels: labels.to_vec(),
            permuted_labels: choice.perm.iter().map(|&p| labels[p]).collect(),
            lam,
        })
    }

    /// Draws and applies.
    pub fn mix(&self, data: &[f32], labels: &[u32], rng: &mut impl Rng) -> Result<MixedBatch> {
        let choice = self.sample(labels.len(), rng)?;
        self.apply(data, labels, &choice)
    }
}
