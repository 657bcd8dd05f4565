//! Paddle's `Momentum` optimizer with per-parameter attributes, and PaddleVideo's
//! `CustomWarmupCosineDecay` schedule.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use tsm_model::{Param as ModelParam, ParamRole};

use crate::config::{LrConfig, OptimizerConfig};
use crate::error::Result;

/// One parameter with its attributes and velocity.
#[derive(Debug)]
pub struct Param {
    /// Checkpoint name.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// L2 decay coefficient.
    pub decay: f64,
    /// Learning-rate multiplier.
    pub lr_mult: f64,
    /// Momentum buffer (Paddle's `velocity`).
    pub velocity: Tensor,
}

/// Momentum SGD as Paddle computes it: `g = grad + decay * w; v = mu * v + g;` then
/// `w -= lr * (g + mu * v)` (Nesterov) or `w -= lr * v`, with `lr` the schedule's value times
/// the parameter's multiplier.
#[derive(Debug)]
pub struct Momentum {
    params: Vec<Param>,
    momentum: f64,
    nesterov: bool,
}

/// PP-TSM's per-parameter rules, `(decay, lr_mult)`: BatchNorm scales and shifts, the fc weight
/// and bias have their own decay; the fc's learning rate is scaled.
pub fn param_attributes(role: ParamRole, cfg: &OptimizerConfig) -> (f64, f64) {
    match role {
        ParamRole::BnScale | ParamRole::BnShift => (cfg.bn_weight_decay, 1.0),
        ParamRole::FcWeight => (cfg.fc_weight_decay, cfg.fc_weight_lr_mult),
        ParamRole::FcBias => (cfg.fc_bias_decay, cfg.fc_bias_lr_mult),
        _ => (cfg.weight_decay, 1.0),
    }
}

impl Momentum {
    /// The trainable ones of a model's `params` (all but BN running statistics, see
    /// `Tsm::params`), by name, with zero velocity.
    pub fn new(model_params: Vec<ModelParam>, cfg: &OptimizerConfig) -> Result<Self> {
        let mut params = model_params
            .into_iter()
            .filter(|p| p.role.is_trainable())
            .map(|p| {
                let (decay, lr_mult) = param_attributes(p.role, cfg);
                Ok(Param {
                    var: p.var()?,
                    velocity: p.tensor.zeros_like()?,
                    name: p.name,
                    decay,
                    lr_mult,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            params,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
        })
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// One update with learning rate `lr`. A parameter without gradient is left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let grads: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()).cloned())
            .collect();
        self.step_with(&grads, lr)
    }

    /// One update from gradients given in [`Momentum::params`] order (`None`: the parameter
    /// is left alone).
    pub fn step_with(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        let mu = self.momentum;
        for (p, grad) in self.params.iter_mut().zip(grads) {
            let Some(grad) = grad else {
                continue;
            };
            let w = p.var.as_tensor();
            let g = if p.decay != 0.0 {
                (grad + (w * p.decay)?)?
            } else {
                grad.clone()
            };
            let v = ((&p.velocity * mu)? + &g)?;
            let lr = lr * p.lr_mult;
            let update = if self.nesterov {
                (&g + (&v * mu)?)?
            } else {
                v.clone()
            };
            p.var.set(&(w - (update * lr)?)?)?;
            // Detached: `v` records the ops that made it, back through this step's gradients
            // to the forward pass and the previous velocity, so every step's graph would be kept.
            p.velocity = v.detach();
        }
        Ok(())
    }

    /// Velocities by parameter name, for checkpoints.
    pub fn velocities(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.velocity.clone()))
            .collect()
    }

    /// Restores velocities saved by [`Momentum::velocities`]; every parameter must have one of
    /// its shape. Returns the name of the first missing or mismatched one as an error message.
    pub fn set_velocities(
        &mut self,
        saved: &HashMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        for p in &mut self.params {
            let v = saved
                .get(&p.name)
                .ok_or_else(|| format!("no velocity for `{}`", p.name))?;
            if v.dims() != p.velocity.dims() {
                return Err(format!(
                    "velocity of `{}` has shape {:?}, the parameter {:?}",
                    p.name,
                    v.dims(),
                    p.velocity.dims()
                ));
            }
            p.velocity = v
                .to_device(p.velocity.device())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// PaddleVideo's `CustomWarmupCosineDecay`: cosine from `cosine_base_lr` over `max_epoch`
/// epochs, and over the first `warmup_epochs` a straight line from `warmup_start_lr` to the
/// cosine's value there. Its position is a fractional epoch advanced by `1 / num_iters` per
/// iteration, accumulated in f64 as Python does.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupCosine {
    warmup_start_lr: f64,
    warmup_epochs: f64,
    cosine_base_lr: f64,
    max_epoch: f64,
    num_iters: usize,
    last_epoch: f64,
}

impl WarmupCosine {
    /// The schedule at epoch 0; `num_iters` is the training loader's length (or 1 to step per
    /// epoch).
    pub fn new(cfg: &LrConfig, max_epoch: f64, num_iters: usize) -> Self {
        Self {
            warmup_start_lr: cfg.warmup_start_lr,
            warmup_epochs: cfg.warmup_epochs,
            cosine_base_lr: cfg.cosine_base_lr,
            max_epoch,
            num_iters: num_iters.max(1),
            last_epoch: 0.0,
        }
    }

    fn cosine(&self, epoch: f64) -> f64 {
        self.cosine_base_lr * ((std::f64::consts::PI * epoch / self.max_epoch).cos() + 1.0) * 0.5
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        let e = self.last_epoch;
        if e < self.warmup_epochs {
            let end = self.cosine(self.warmup_epochs);
            let alpha = (end - self.warmup_start_lr) / self.warmup_epochs;
            e * alpha + self.warmup_start_lr
        } else {
            self.cosine(e)
        }
    }

    /// Advances by one step (`1 / num_iters` epoch).
    pub fn step(&mut self) {
        self.last_epoch += 1.0 / self.num_iters as f64;
    }

    /// The position, in (fractional) epochs.
    pub fn position(&self) -> f64 {
        self.last_epoch
    }

    /// Restores a position saved from [`WarmupCosine::position`].
    pub fn set_position(&mut self, epoch: f64) {
        self.last_epoch = epoch;
    }
}
