//! The recognizer: ResNetTweaksTSM backbone + ppTSM head, on clips `[N, T, 3, H, W]`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::batch_norm::BN_MOMENTUM;
use crate::checkpoint::{parse_checkpoint, read_checkpoint, write_safetensors};
use crate::config::{TsmConfig, CONFIG_METADATA_KEY};
use crate::error::TsmError;
use crate::ops::ProductPrecision;
use crate::resnet::{Profile, Recorder, ResNetTweaksTsm};

/// What a tensor of the model is. The optimizer's decay and learning-rate rules, seeded
/// initialisation and precise BN go by it, never by the tensor's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamRole {
    /// A convolution kernel `[out, in, k, k]`.
    ConvWeight,
    /// The bias a BatchNorm folded into its convolution leaves ([`Tsm::fuse_for_inference`]).
    ConvBias,
    /// A BatchNorm's scale (`gamma`).
    BnScale,
    /// A BatchNorm's shift (`beta`).
    BnShift,
    /// A BatchNorm's running mean: state, not trained.
    BnMean,
    /// A BatchNorm's running (biased) variance: state, not trained.
    BnVariance,
    /// The classifier's weight `[classes, features]`.
    FcWeight,
    /// The classifier's bias.
    FcBias,
}

impl ParamRole {
    /// Whether an optimizer updates it (all but the BatchNorm running statistics).
    pub fn is_trainable(self) -> bool {
        !self.is_bn_statistic()
    }

    /// A BatchNorm running mean or variance.
    pub fn is_bn_statistic(self) -> bool {
        matches!(self, ParamRole::BnMean | ParamRole::BnVariance)
    }
}

/// One tensor of the model: its checkpoint name, its role and the tensor (a `Var`'s tensor
/// when the model was built on a `VarMap`).
#[derive(Debug, Clone)]
pub struct Param {
    /// The checkpoint name (see the crate docs).
    pub name: String,
    /// What it is.
    pub role: ParamRole,
    /// The tensor.
    pub tensor: Tensor,
}

impl Param {
    pub(crate) fn new(name: String, role: ParamRole, tensor: &Tensor) -> Self {
        Self {
            name,
            role,
            tensor: tensor.clone(),
        }
    }

    /// The variable behind the tensor, to update in place; an error when the model was not
    /// built on a `VarMap` (loaded weights are constants).
    pub fn var(&self) -> Result<Var> {
        if !self.tensor.is_variable() {
            candle_core::bail!(
                "{}: not a variable (build the model on a VarMap to train it)",
                self.name
            )
        }
        Var::from_tensor(&self.tensor)
    }
}

/// PaddleVideo's `ppTSMHead`: global average pool -> dropout -> mean over the `T` frames ->
/// linear. Frame features are averaged *before* the fc. Tensors `head.fc.weight` `[K, C]`
/// (candle layout; Paddle stores `[C, K]`) and `head.fc.bias` `[K]`.
#[derive(Debug, Clone)]
pub(crate) struct PpTsmHead {
    weight: Tensor,
    bias: Tensor,
    prefix: String,
}

impl PpTsmHead {
    /// The head for `cfg` under `vb` (`head` in [`Tsm`]); fc initialised Normal(0, 0.01), bias 0.
    fn new(cfg: &TsmConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("fc");
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        };
        let weight = vb.get_with_hints((cfg.num_classes, cfg.feature_dim()), "weight", init)?;
        let bias = vb.get_with_hints(cfg.num_classes, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            prefix: vb.prefix(),
        })
    }

    /// Logits `[N, K]` from pooled features `[N, C]`, summed in f32 whatever the weights'
    /// dtype (bf16 sums over 2048 features cost accuracy and no measurable time), in the
    /// weights' dtype.
    pub(crate) fn classify(&self, features: &Tensor) -> Result<Tensor> {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        f32(features)?
            .matmul(&f32(&self.weight)?.t()?)?
            .broadcast_add(&f32(&self.bias)?)?
            .to_dtype(self.weight.dtype())
    }

    fn params(&self, out: &mut Vec<Param>) {
        let p = &self.prefix;
        out.push(Param::new(
            format!("{p}.weight"),
            ParamRole::FcWeight,
            &self.weight,
        ));
        out.push(Param::new(
            format!("{p}.bias"),
            ParamRole::FcBias,
            &self.bias,
        ));
    }

    /// Multiply-adds of the fc for one clip.
    fn macs(&self) -> Result<u64> {
        Ok(self.weight.elem_count() as u64)
    }

    /// The fc's weight `[K, C]` and bias `[K]`.
    #[cfg(feature = "onnx")]
    pub(crate) fn fc(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }
}

/// `[N*T, C, h, w]` -> mean over h, w -> dropout (a keep-or-drop draw per frame and channel
/// from `dropout`'s generator) -> `[N, T, C]` -> mean over T, summed in f32 and returned in f32
/// whatever the maps' dtype (in bf16 these means were the largest error after the convs').
fn pool_features(
    maps: &Tensor,
    num_seg: usize,
    dropout: Option<(f64, &mut dyn rand::RngCore)>,
) -> Result<Tensor> {
    let (nt, c, _, _) = maps.dims4()?;
    if !nt.is_multiple_of(num_seg) {
        candle_core::bail!("{nt} frames do not make whole clips of {num_seg}")
    }
    let mut x = maps.to_dtype(DType::F32)?.mean((2, 3))?;
    if let Some((p, rng)) = dropout.filter(|(p, _)| *p > 0.0) {
        // Inverted dropout as Paddle's `upscale_in_train`: kept features scaled by 1 / (1 - p).
        let keep = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..nt * c)
            .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
            .collect();
        let mask = Tensor::from_vec(mask, (nt, c), x.device())?;
        x = (x * mask)?;
    }
    x.reshape((nt / num_seg, num_seg, c))?.mean(1)
}

/// PP-TSM: the recognizer PaddleVideo calls `Recognizer2D(ResNetTweaksTSM, ppTSMHead)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{ModuleT, VarBuilder, VarMap};
/// use tsm_model::{Tsm, TsmConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = TsmConfig::pptsm_r18(5).with_num_seg(2);
/// let varmap = VarMap::new();
/// let model = Tsm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let clips = Tensor::randn(0f32, 1.0, (1, 2, 3, 32, 32), &Device::Cpu)?; // [N, T, 3, H, W]
/// let _train_logits = model.forward_t(&clips, true)?; // dropout, BN batch statistics
/// let logits = model.forward(&clips)?; // eval: BN running statistics, no dropout
/// assert_eq!(logits.dims(), &[1, 5]);
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("r18.safetensors");
/// model.save(&path)?;
/// let again = Tsm::load(&path, &Device::Cpu)?; // config comes from the file's metadata
/// let diff = (again.forward(&clips)? - &logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-6);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Tsm {
    cfg: TsmConfig,
    backbone: ResNetTweaksTsm,
    head: Option<PpTsmHead>,
    fused: bool,
}

impl Tsm {
    /// Builds the model under `vb` with tensors `backbone.*` and `head.*` (see the crate docs for
    /// the names). With a `VarMap`-backed builder the weights are created (Kaiming normal convs,
    /// BN 1/0, fc Normal(0, 0.01), from candle's generator: [`Tsm::init_weights`] redraws them
    /// from a seed) and are trainable ([`Tsm::trainable_vars`]); BN running statistics live in
    /// the same map.
    pub fn new(cfg: &TsmConfig, vb: VarBuilder) -> std::result::Result<Self, TsmError> {
        cfg.validate()?;
        let backbone = ResNetTweaksTsm::new(cfg, vb.pp("backbone"))?;
        let head = if cfg.num_classes > 0 {
            Some(PpTsmHead::new(cfg, vb.pp("head"))?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            backbone,
            head,
            fused: false,
        })
    }

    /// Loads a checkpoint written by [`Tsm::save`] or by the `.pdparams` converter, in f32.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> std::result::Result<Self, TsmError> {
        Self::load_with_dtype(path, DType::F32, device)
    }

    /// Loads a checkpoint, converting its tensors to `dtype`.
    pub fn load_with_dtype(
        path: impl AsRef<Path>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, TsmError> {
        let path = path.as_ref();
        let (cfg, tensors) = read_checkpoint(path, device)?;
        Self::from_checkpoint(path, &cfg, tensors, dtype, device)
    }

    /// [`Tsm::load_with_dtype`] of a checkpoint already in memory; `path` names it in errors.
    /// Whatever the bytes, it returns a model or an error, holding at most
    /// [`crate::max_load_heap_bytes`] of heap (in f32).
    pub fn from_checkpoint_bytes(
        path: &Path,
        bytes: &[u8],
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, TsmError> {
        let (cfg, tensors) = parse_checkpoint(path, bytes, device)?;
        Self::from_checkpoint(path, &cfg, tensors, dtype, device)
    }

    /// The model of a checkpoint's config and tensors; tensors that do not fit it are an error
    /// naming the file.
    fn from_checkpoint(
        path: &Path,
        cfg: &TsmConfig,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, TsmError> {
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Tsm::new(cfg, vb).map_err(|e| match e {
            TsmError::Candle(cause) => TsmError::Model {
                path: path.to_path_buf(),
                cause,
            },
            e => e,
        })
    }

    /// Writes every tensor (weights and BN running statistics) and the config as metadata.
    pub fn save(&self, path: impl AsRef<Path>) -> std::result::Result<(), TsmError> {
        if self.fused {
            return Err(TsmError::Fused);
        }
        let cfg = serde_json::to_string(&self.cfg).map_err(|e| TsmError::Metadata {
            path: path.as_ref().to_path_buf(),
            msg: e.to_string(),
        })?;
        let meta = [(CONFIG_METADATA_KEY.to_string(), cfg)]
            .into_iter()
            .collect();
        let tensors: Vec<(String, Tensor)> = self
            .params()
            .into_iter()
            .map(|p| (p.name, p.tensor))
            .collect();
        write_safetensors(path.as_ref(), &tensors, &meta)
    }

    /// The configuration.
    pub fn config(&self) -> &TsmConfig {
        &self.cfg
    }

    /// The weights' dtype: what [`Tsm::forward`] takes its clips in and gives its logits in.
    pub fn dtype(&self) -> DType {
        self.backbone.dtype()
    }

    /// The same model with its convolutions' products in `products`, forward and backward:
    /// [`ProductPrecision::Bf16`] is mixed-precision training as PyTorch's CPU autocast runs
    /// it (each conv's operands rounded to bf16, products summed in f32; weights, activations,
    /// gradients and the optimizer in f32). It takes an f32 model, on the CPU one with
    /// avx512_bf16 (elsewhere a one-line error). The fused inference path keeps its own
    /// precision, its weights' dtype.
    pub fn with_product_precision(mut self, products: ProductPrecision) -> Result<Self> {
        if products == ProductPrecision::Bf16 {
            if self.dtype() != DType::F32 {
                candle_core::bail!(
                    "bf16 products take an f32 model (master weights), not {:?}; load it in f32",
                    self.dtype()
                )
            }
            let on_cpu = self.backbone.device().is_cpu();
            if on_cpu && !crate::ops::bf16_products_run_here() {
                candle_core::bail!(
                    "bf16 training products on the CPU need avx512_bf16, which this CPU lacks; \
                     train in f32 instead"
                )
            }
        }
        self.backbone.set_products(products);
        Ok(self)
    }

    /// The precision of the convolutions' products (see [`Tsm::with_product_precision`]).
    pub fn product_precision(&self) -> ProductPrecision {
        self.backbone.products()
    }

    #[cfg(any(feature = "onnx", all(test, target_arch = "x86_64")))]
    pub(crate) fn backbone(&self) -> &ResNetTweaksTsm {
        &self.backbone
    }

    #[cfg(feature = "onnx")]
    pub(crate) fn head(&self) -> Option<&PpTsmHead> {
        self.head.as_ref()
    }

    /// Every tensor with its checkpoint name and role, in model order.
    pub fn params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        self.backbone.params(&mut out);
        if let Some(h) = &self.head {
            h.params(&mut out);
        }
        out
    }

    /// The variables an optimiser should update (all but BN running statistics), by name; an
    /// error when the model was not built on a `VarMap`.
    pub fn trainable_vars(&self) -> Result<Vec<Var>> {
        let mut params: Vec<Param> = self
            .params()
            .into_iter()
            .filter(|p| p.role.is_trainable())
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        params.iter().map(Param::var).collect()
    }

    /// Redraws the weights as PaddleVideo initialises them, from generators the caller seeds:
    /// convolutions Kaiming normal (`std = sqrt(2 / fan_in)`), the fc Normal(0, 0.01); BatchNorm
    /// and biases keep their constant initial values. Parameter `i` of the name-sorted
    /// [`Tsm::params`] draws from `rng_for(i)`, so a run is repeatable and independent of the
    /// order the model was built in.
    pub fn init_weights<R: Rng>(&self, mut rng_for: impl FnMut(usize) -> R) -> Result<()> {
        let mut params = self.params();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, p) in params.iter().enumerate() {
            let dims = p.tensor.dims();
            let std = match p.role {
                ParamRole::ConvWeight => (2.0 / dims[1..].iter().product::<usize>() as f64).sqrt(),
                ParamRole::FcWeight => 0.01,
                _ => continue,
            };
            let normal = Normal::new(0.0f32, std as f32).map_err(candle_core::Error::wrap)?;
            let mut rng = rng_for(i);
            let v: Vec<f32> = (0..p.tensor.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            let t = Tensor::from_vec(v, dims, p.tensor.device())?.to_dtype(p.tensor.dtype())?;
            p.var()?.set(&t)?;
        }
        Ok(())
    }

    /// Clips `[N, T, 3, H, W]` -> frames `[N*T, 3, H, W]`, checking `T`.
    fn frames(&self, clips: &Tensor) -> Result<Tensor> {
        let (n, t, c, h, w) = clips.dims5()?;
        if t != self.cfg.num_seg {
            candle_core::bail!(
                "clips have {t} frames but the model was built for num_seg = {}",
                self.cfg.num_seg
            )
        }
        clips.reshape((n * t, c, h, w))
    }

    /// Pooled clip features `[N, C]` (C = 2048 or 512): what the fc sees, in eval mode.
    pub fn features(&self, clips: &Tensor) -> Result<Tensor> {
        let maps = self.backbone.forward_t(&self.frames(clips)?, false)?;
        pool_features(&maps, self.cfg.num_seg, None)?.to_dtype(self.dtype())
    }

    /// Eval-mode logits `[N, K]` (or pooled features `[N, C]` for a backbone without head).
    pub fn forward(&self, clips: &Tensor) -> Result<Tensor> {
        self.forward_t(clips, false)
    }

    /// Training-mode logits: BN batch statistics (running statistics updated with Paddle's
    /// rule) and the head's dropout drawn from `rng`, one `f64` per frame and feature channel in
    /// row-major `[N*T, C]` order, so that a caller who seeds (and positions) the generator
    /// repeats a run exactly.
    pub fn forward_train(&self, clips: &Tensor, rng: &mut impl Rng) -> Result<Tensor> {
        if self.fused {
            candle_core::bail!("a model fused for inference cannot run in training mode")
        }
        let maps = self.backbone.forward_t(&self.frames(clips)?, true)?;
        self.logits(&pool_features(
            &maps,
            self.cfg.num_seg,
            Some((self.cfg.dropout, rng)),
        )?)
    }

    /// The head's logits of pooled features (f32), or, without a head, the features, in the
    /// model's dtype.
    fn logits(&self, feats: &Tensor) -> Result<Tensor> {
        match &self.head {
            Some(h) => h.classify(feats),
            None => feats.to_dtype(self.dtype()),
        }
    }

    /// Each BatchNorm's statistics over `clips` in training mode, as `(role, name, statistic)`
    /// with role [`ParamRole::BnMean`] or [`ParamRole::BnVariance`] (biased), in
    /// [`Tsm::params`] order: what precise BN averages. The running statistics are left as they
    /// were.
    pub fn batch_norm_statistics(&self, clips: &Tensor) -> Result<Vec<Param>> {
        let stats: Vec<Param> = self
            .params()
            .into_iter()
            .filter(|p| p.role.is_bn_statistic())
            .collect();
        let vars: Vec<Var> = stats.iter().map(Param::var).collect::<Result<_>>()?;
        let saved: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<Result<_>>()?;
        // From zero, one training update leaves (1 - momentum) * the batch's statistic.
        for v in &vars {
            v.set(&v.as_tensor().zeros_like()?)?;
        }
        let run = self.backbone.forward_t(&self.frames(clips)?, true);
        let batch: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor() / (1.0 - BN_MOMENTUM))
            .collect::<Result<_>>()?;
        for (v, s) in vars.iter().zip(&saved) {
            v.set(s)?;
        }
        run?;
        Ok(stats
            .into_iter()
            .zip(batch)
            .map(|(p, tensor)| Param { tensor, ..p })
            .collect())
    }

    /// Floating-point operations (2 per multiply-add) of the convolutions and the classifier for
    /// one clip of `num_seg` frames of `height` x `width`; BatchNorm, activations, pooling and
    /// the shift are left out, as PaddleVideo's and MMAction2's FLOPs tables do.
    pub fn flops_per_clip(&self, height: usize, width: usize) -> Result<u64> {
        let frame = self.backbone.macs((height, width))?;
        let head = match &self.head {
            Some(h) => h.macs()?,
            None => 0,
        };
        Ok(2 * (frame * self.cfg.num_seg as u64 + head))
    }

    /// Eval-mode logits (as [`Tsm::forward`]) and the wall time of every step of the pass: the
    /// per-layer profile `cargo xtask bench model` prints.
    pub(crate) fn forward_profiled(&self, clips: &Tensor) -> Result<(Tensor, Profile)> {
        let mut profile = Profile::new();
        let maps = self.backbone.forward_rec(
            &self.frames(clips)?,
            false,
            &mut Recorder(Some(&mut profile)),
        )?;
        let t = std::time::Instant::now();
        let out = self.logits(&pool_features(&maps, self.cfg.num_seg, None)?)?;
        profile.push(("head (pool + fc)".into(), t.elapsed().as_secs_f64()));
        Ok((out, profile))
    }

    /// A copy with every BatchNorm folded into its convolution, for inference: the same eval
    /// outputs, fewer operations. It cannot be trained or saved. With f32 weights on an x86-64
    /// CPU with AVX2 and FMA, its forward runs the CPU plan (the network in one blocked layout,
    /// the shift, residual add and activation inside the convolutions), which keeps its
    /// activation buffers between calls (and across clones) until the model is dropped.
    pub fn fuse_for_inference(&self) -> Result<Self> {
        Ok(Self {
            cfg: self.cfg.clone(),
            backbone: self.backbone.fuse()?,
            head: self.head.clone(),
            fused: true,
        })
    }
}

impl ModuleT for Tsm {
    /// Logits `[N, K]` of clips `[N, T, 3, H, W]`; `train` turns on dropout (from the thread's
    /// generator; [`Tsm::forward_train`] takes a seeded one) and BN batch statistics.
    fn forward_t(&self, clips: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return self.forward_train(clips, &mut rand::rng());
        }
        let maps = self.backbone.forward_t(&self.frames(clips)?, false)?;
        self.logits(&pool_features(&maps, self.cfg.num_seg, None)?)
    }
}

/// Every tensor name and shape of a model with `cfg`, in model order, without allocating the
/// weights: the name table the converter maps Paddle's names onto.
pub fn parameter_shapes(
    cfg: &TsmConfig,
) -> std::result::Result<Vec<(String, Vec<usize>)>, TsmError> {
    let recorder = ShapeRecorder::default();
    let vb = VarBuilder::from_backend(Box::new(recorder.clone()), DType::F32, Device::Cpu);
    // The model is dropped at once: its weights are zero-strided views of one scalar.
    Tsm::new(cfg, vb)?;
    let names = std::mem::take(&mut *recorder.0.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(names)
}

/// A VarBuilder backend that records the names and shapes asked for.
#[derive(Clone, Default)]
struct ShapeRecorder(std::sync::Arc<std::sync::Mutex<NameShapes>>);

type NameShapes = Vec<(String, Vec<usize>)>;

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a shape is required")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
