//! Losses and accuracies as PaddleVideo's `BaseHead.loss` computes them.

use candle_core::{DType, Tensor};
use candle_nn::ops::log_softmax;

use crate::error::Result;

/// Paddle's `F.label_smooth(one_hot(labels), eps)`: `(1 - eps) * onehot + eps / K`, `[N, K]`.
pub fn smoothed_targets(labels: &[u32], num_classes: usize, eps: f64) -> Result<Tensor> {
    let off = (eps / num_classes as f64) as f32;
    let on = (1.0 - eps) as f32 + off;
    let mut v = vec![off; labels.len() * num_classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * num_classes + l as usize] = on;
    }
    Ok(Tensor::from_vec(
        v,
        (labels.len(), num_classes),
        &candle_core::Device::Cpu,
    )?)
}

/// Mean over the batch of `-sum_k target * log_softmax(logits)`.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(soft_cross_entropy_per_sample(logits, targets)?.mean_all()?)
}

/// `-sum_k target * log_softmax(logits)` of each sample, `[N]`.
fn soft_cross_entropy_per_sample(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets
        .to_device(logits.device())?
        .to_dtype(logits.dtype())?;
    let logp = log_softmax(logits, 1)?;
    Ok((targets * logp)?.sum(1)?.neg()?)
}

/// Plain cross entropy of each sample (validation, where samples are summed across ranks).
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &[u32]) -> Result<Vec<f32>> {
    let k = logits.dim(1)?;
    let targets = smoothed_targets(labels, k, 0.0)?;
    Ok(soft_cross_entropy_per_sample(logits, &targets)?
        .to_dtype(DType::F32)?
        .to_vec1()?)
}

/// Cross entropy with hard labels (label smoothing `eps`; 0 for plain cross entropy).
pub fn cross_entropy(logits: &Tensor, labels: &[u32], eps: f64) -> Result<Tensor> {
    let k = logits.dim(1)?;
    soft_cross_entropy(logits, &smoothed_targets(labels, k, eps)?)
}

/// The training loss: `lam * L(labels) + (1 - lam) * L(mixed_labels)` under mixup, else
/// `L(labels)`, with `L` the smoothed cross entropy.
pub fn train_loss(
    logits: &Tensor,
    labels: &[u32],
    mixup: Option<(&[u32], f32)>,
    eps: f64,
) -> Result<Tensor> {
    let a = cross_entropy(logits, labels, eps)?;
    match mixup {
        None => Ok(a),
        Some((b_labels, lam)) => {
            let b = cross_entropy(logits, b_labels, eps)?;
            Ok(((a * f64::from(lam))? + (b * f64::from(1.0 - lam))?)?)
        }
    }
}

/// Distillation: `T^2 * CE(softmax(teacher / T), log_softmax(student / T))`.
pub fn distill_loss(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let soft = candle_nn::ops::softmax(&(teacher.detach() / temperature)?, 1)?;
    let loss = soft_cross_entropy(&(student / temperature)?, &soft)?;
    Ok((loss * (temperature * temperature))?)
}

/// Fractions of samples whose label is among the `k` highest logits, for each `k` in `ks`
/// (Paddle's `paddle.metric.accuracy`: ties ranked by position).
pub fn topk_accuracy(logits: &Tensor, labels: &[u32], ks: &[usize]) -> Result<Vec<f64>> {
    let ranks = label_ranks(logits, labels)?;
    let n = labels.len().max(1) as f64;
    Ok(ks
        .iter()
        .map(|&k| ranks.iter().filter(|&&r| r < k).count() as f64 / n)
        .collect())
}

/// Each sample's label rank among its logits (0 = top-1): the number of classes scoring above
/// the label's, or equal and before it.
pub fn label_ranks(logits: &Tensor, labels: &[u32]) -> Result<Vec<usize>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .zip(labels)
        .map(|(row, &l)| {
            let target = row[l as usize];
            row.iter()
                .enumerate()
                .filter(|&(j, &v)| v > target || (v == target && j < l as usize))
                .count()
        })
        .collect())
}

/// Averages the logits of `views` consecutive clips per sample: `[N * views, K]` -> `[N, K]`.
pub fn average_views(logits: &Tensor, views: usize) -> Result<Tensor> {
    if views <= 1 {
        return Ok(logits.clone());
    }
    let (nv, k) = logits.dims2()?;
    Ok(logits.reshape((nv / views, views, k))?.mean(1)?)
}
