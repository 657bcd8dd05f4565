//! Batch normalisation with Paddle's `BatchNorm2D` semantics.
//!
//! candle-nn's `BatchNorm` keeps an *unbiased* running variance; Paddle keeps the biased batch
//! variance, with `r = 0.9 r + 0.1 batch`. Converted weights trained further here must follow
//! Paddle's rule, so this module writes it once.
//!
//! Training mode normalises with the batch's statistics in one op (`ops::batch_norm_train`).

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::model::{Param, ParamRole};
use crate::ops::{batch_norm_train, leaky_relu, BN_EPS};

/// Paddle's default `momentum`: `running = momentum * running + (1 - momentum) * batch`.
pub(crate) const BN_MOMENTUM: f64 = 0.9;

/// `BatchNorm2D` over `[B, C, H, W]`: affine weight and bias (trainable) and running mean and
/// variance (state, updated in training, stored in checkpoints as `running_mean`/`running_var`).
#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
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
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
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
    pub(crate) fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor() + BN_EPS)?.sqrt()?.recip()?;
        let scale = (&self.weight * inv_std)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Normalises with the running statistics (eval) or the batch statistics (train), in which
    /// case the running statistics are updated with Paddle's rule (biased variance, momentum
    /// 0.9); then leaky ReLU (slope `LEAKY_SLOPE`) when `leaky`: one op in CPU training, which
    /// saves a pass each way and keeps one activation less for the backward.
    pub(crate) fn forward_act(&self, x: &Tensor, train: bool, leaky: bool) -> Result<Tensor> {
        let act = |y: Tensor| if leaky { leaky_relu(&y) } else { Ok(y) };
        let c = self.weight.dim(0)?;
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        if !train {
            let (scale, shift) = self.scale_shift()?;
            return act(x
                .broadcast_mul(&per_channel(&scale)?)?
                .broadcast_add(&per_channel(&shift)?)?);
        }
        let (y, bm, bv) = batch_norm_train(x, &self.weight, &self.bias, leaky)?;
        let m = BN_MOMENTUM;
        let new_mean = ((self.running_mean.as_tensor() * m)? + (bm * (1.0 - m))?)?;
        let new_var = ((self.running_var.as_tensor() * m)? + (bv * (1.0 - m))?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(y)
    }

    /// Appends weight, bias and both running statistics.
    pub(crate) fn params(&self, out: &mut Vec<Param>) {
        let p = &self.prefix;
        out.push(Param::new(
            format!("{p}.weight"),
            ParamRole::BnScale,
            &self.weight,
        ));
        out.push(Param::new(
            format!("{p}.bias"),
            ParamRole::BnShift,
            &self.bias,
        ));
        out.push(Param::new(
            format!("{p}.running_mean"),
            ParamRole::BnMean,
            self.running_mean.as_tensor(),
        ));
        out.push(Param::new(
            format!("{p}.running_var"),
            ParamRole::BnVariance,
            self.running_var.as_tensor(),
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;

    #[test]
    fn training_updates_running_stats_like_paddle() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let bn = BatchNorm::new(2, vb.pp("bn")).unwrap();
        // channel 0 holds 1..=8, channel 1 holds 2 * (1..=8), over B=2, H=2, W=2
        let v: Vec<f32> = (0..16)
            .map(|i| {
                let (b, c, k) = (i / 8, (i / 4) % 2, i % 4);
                let base = (b * 4 + k + 1) as f32;
                if c == 0 {
                    base
                } else {
                    2.0 * base
                }
            })
            .collect();
        let x = Tensor::from_vec(v, (2, 2, 2, 2), &Device::Cpu).unwrap();
        let y = bn.forward_act(&x, true, false).unwrap();
        // mean 4.5, biased variance 5.25 (channel 0); 9 and 21 (channel 1)
        let rm = bn.running_mean.as_tensor().to_vec1::<f32>().unwrap();
        let rv = bn.running_var.as_tensor().to_vec1::<f32>().unwrap();
        assert!(
            (rm[0] - 0.45).abs() < 1e-6 && (rm[1] - 0.9).abs() < 1e-6,
            "{rm:?}"
        );
        assert!(
            (rv[0] - (0.9 + 0.525)).abs() < 1e-5 && (rv[1] - (0.9 + 2.1)).abs() < 1e-5,
            "{rv:?}"
        );
        // the output is normalised with the batch statistics
        let y0 = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = (1.0 - 4.5) / (5.25f32 + 1e-5).sqrt();
        assert!((y0[0] - want).abs() < 1e-5);
        // the statistics live in the VarMap (so they are saved with it)
        let data = varmap.data().lock().unwrap();
        let stored = data["bn.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(stored, rm);
        drop(data);
        // eval uses the running statistics and changes nothing
        let _ = bn.forward_act(&x, false, false).unwrap();
        assert_eq!(bn.running_mean.as_tensor().to_vec1::<f32>().unwrap(), rm);
    }
}
