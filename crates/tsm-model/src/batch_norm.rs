//! Batch normalisation with Paddle's `BatchNorm2D` semantics.
//!
//! candle-nn's `BatchNorm` keeps an *unbiased* running variance; Paddle keeps the biased batch
//! variance, with `r = 0.9 r + 0.1 batch`. Converted weights trained further here must follow
//! Paddle's rule, so this module writes it once.

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// Paddle's default `epsilon`.
pub const BN_EPS: f64 = 1e-5;
/// Paddle's default `momentum`: `running = momentum * running + (1 - momentum) * batch`.
pub const BN_MOMENTUM: f64 = 0.9;

/// `BatchNorm2D` over `[B, C, H, W]`: affine weight and bias (trainable) and running mean and
/// variance (state, updated in training, stored in checkpoints as `running_mean`/`running_var`).
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    prefix: String,
}

impl BatchNorm {
    /// Reads or creates `weight` (1), `bias` (0), `running_mean` (0), `running_var` (1) under `vb`.
    ///
    /// When `vb` is backed by a `VarMap` the running statistics are `Var`s of that map, so the
    /// updates made in training are what the map holds (and saves).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&mean)?,
            running_var: Var::from_tensor(&var)?,
            prefix: vb.prefix(),
        })
    }

    /// Per-channel `(scale, shift)` of the eval-mode transform `y = x * scale + shift`.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor() + BN_EPS)?.sqrt()?.recip()?;
        let scale = (&self.weight * inv_std)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Normalises with the running statistics (eval) or the batch statistics (train), in which
    /// case the running statistics are updated with Paddle's rule (biased variance, momentum 0.9).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        if !train {
            let (scale, shift) = self.scale_shift()?;
            return x
                .broadcast_mul(&per_channel(&scale)?)?
                .broadcast_add(&per_channel(&shift)?);
        }
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (&var + BN_EPS)?.sqrt()?.recip()?;
        let y = centred
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&per_channel(&self.weight)?)?
            .broadcast_add(&per_channel(&self.bias)?)?;
        let (bm, bv) = (mean.flatten_all()?.detach(), var.flatten_all()?.detach());
        let m = BN_MOMENTUM;
        let new_mean = ((self.running_mean.as_tensor() * m)? + (bm * (1.0 - m))?)?;
        let new_var = ((self.running_var.as_tensor() * m)? + (bv * (1.0 - m))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(y)
    }

    /// The running mean.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running (biased) variance.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Appends `(name, tensor)` for weight, bias and both running statistics.
    pub(crate) fn named_tensors(&self, out: &mut Vec<(String, Tensor)>) {
        let p = &self.prefix;
        out.push((format!("{p}.weight"), self.weight.clone()));
        out.push((format!("{p}.bias"), self.bias.clone()));
        out.push((
            format!("{p}.running_mean"),
            self.running_mean.as_tensor().clone(),
        ));
        out.push((
            format!("{p}.running_var"),
            self.running_var.as_tensor().clone(),
        ));
    }
}
