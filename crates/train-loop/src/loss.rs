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
    let targets = targets
        .to_device(logits.device())?
        .to_dtype(logits.dtype())?;
    let logp = log_softmax(logits, 1)?;
    Ok((targets * logp)?.sum(1)?.neg()?.mean_all()?)
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
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let mut hits = vec![0usize; ks.len()];
    for (row, &l) in rows.iter().zip(labels) {
        let target = row[l as usize];
        // Rank = number of classes scoring above the label's, or equal and before it.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || (v == target && j < l as usize))
            .count();
        for (h, &k) in hits.iter_mut().zip(ks) {
            if rank < k {
                *h += 1;
            }
        }
    }
    let n = labels.len().max(1) as f64;
    Ok(hits.into_iter().map(|h| h as f64 / n).collect())
}

/// Averages the logits of `views` consecutive clips per sample: `[N * views, K]` -> `[N, K]`.
pub fn average_views(logits: &Tensor, views: usize) -> Result<Tensor> {
    if views <= 1 {
        return Ok(logits.clone());
    }
    let (nv, k) = logits.dims2()?;
    Ok(logits.reshape((nv / views, views, k))?.mean(1)?)
}
