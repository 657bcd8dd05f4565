//! The recognizer: ResNetTweaksTSM backbone + ppTSM head, on clips `[N, T, 3, H, W]`.

use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder, VarMap};

use crate::checkpoint::{read_checkpoint, write_safetensors};
use crate::config::{TsmConfig, CONFIG_METADATA_KEY};
use crate::error::TsmError;
use crate::resnet::{Profile, Recorder, ResNetTweaksTsm};

/// PaddleVideo's `ppTSMHead`: global average pool -> dropout -> mean over the `T` frames ->
/// linear. Frame features are averaged *before* the fc. Tensors `head.fc.weight` `[K, C]`
/// (candle layout; Paddle stores `[C, K]`) and `head.fc.bias` `[K]`.
#[derive(Debug, Clone)]
pub struct PpTsmHead {
    weight: Tensor,
    bias: Tensor,
    dropout: f32,
    num_seg: usize,
    prefix: String,
}

impl PpTsmHead {
    /// The head for `cfg` under `vb` (`head` in [`Tsm`]); fc initialised Normal(0, 0.01), bias 0.
    pub fn new(cfg: &TsmConfig, vb: VarBuilder) -> Result<Self> {
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
            dropout: cfg.dropout as f32,
            num_seg: cfg.num_seg,
            prefix: vb.prefix(),
        })
    }

    /// Pooled clip features `[N, C]` from frame feature maps `[N*T, C, h, w]`.
    pub fn pool(&self, maps: &Tensor, train: bool) -> Result<Tensor> {
        pool_features(maps, self.num_seg, train.then_some(self.dropout))
    }

    /// Logits `[N, K]` from pooled features `[N, C]`.
    pub fn classify(&self, features: &Tensor) -> Result<Tensor> {
        features
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)
    }

    fn named_tensors(&self, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{}.weight", self.prefix), self.weight.clone()));
        out.push((format!("{}.bias", self.prefix), self.bias.clone()));
    }

    /// The fc's weight `[K, C]` and bias `[K]`.
    pub(crate) fn fc(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }
}

/// `[N*T, C, h, w]` -> mean over h, w -> optional dropout -> `[N, T, C]` -> mean over T.
fn pool_features(maps: &Tensor, num_seg: usize, dropout: Option<f32>) -> Result<Tensor> {
    let (nt, c, _, _) = maps.dims4()?;
    if !nt.is_multiple_of(num_seg) {
        candle_core::bail!("{nt} frames do not make whole clips of {num_seg}")
    }
    let mut x = maps.mean((2, 3))?;
    if let Some(p) = dropout.filter(|p| *p > 0.0) {
        x = candle_nn::ops::dropout(&x, p)?;
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
    /// BN 1/0, fc Normal(0, 0.01)) and are trainable; BN running statistics live in the same map
    /// (see [`Tsm::trainable_vars`]).
    pub fn new(cfg: &TsmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
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
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        Tsm::new(&cfg, vb).map_err(|cause| TsmError::Model {
            path: path.to_path_buf(),
            cause,
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
        write_safetensors(path.as_ref(), &self.named_tensors(), &meta)
    }

    /// The configuration.
    pub fn config(&self) -> &TsmConfig {
        &self.cfg
    }

    /// The backbone.
    pub fn backbone(&self) -> &ResNetTweaksTsm {
        &self.backbone
    }

    /// The head (`None` when `num_classes == 0`).
    pub fn head(&self) -> Option<&PpTsmHead> {
        self.head.as_ref()
    }

    /// Every tensor with its checkpoint name, in model order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.backbone.named_tensors(&mut out);
        if let Some(h) = &self.head {
            h.named_tensors(&mut out);
        }
        out
    }

    /// The variables of `varmap` an optimiser should update: all but BN running statistics.
    pub fn trainable_vars(varmap: &VarMap) -> Vec<Var> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut named: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
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

    /// Frame feature maps `[N*T, C, H/32, W/32]` of clips `[N, T, 3, H, W]`.
    pub fn feature_maps_t(&self, clips: &Tensor, train: bool) -> Result<Tensor> {
        self.backbone.forward_t(&self.frames(clips)?, train)
    }

    /// Pooled clip features `[N, C]` (C = 2048 or 512): what the fc sees, before dropout.
    pub fn features(&self, clips: &Tensor) -> Result<Tensor> {
        pool_features(&self.feature_maps_t(clips, false)?, self.cfg.num_seg, None)
    }

    /// Pooled clip features `[N, C]`, in training mode when `train` (BN batch statistics and
    /// dropout, as the head applies it).
    pub fn features_t(&self, clips: &Tensor, train: bool) -> Result<Tensor> {
        let maps = self.feature_maps_t(clips, train)?;
        let p = (train && self.head.is_some()).then_some(self.cfg.dropout as f32);
        pool_features(&maps, self.cfg.num_seg, p)
    }

    /// Eval-mode logits `[N, K]` (or pooled features `[N, C]` for a backbone without head).
    pub fn forward(&self, clips: &Tensor) -> Result<Tensor> {
        self.forward_t(clips, false)
    }

    /// Eval-mode logits (as [`Tsm::forward`]) and the wall time of every step of the pass: the
    /// per-layer profile `cargo xtask bench model` prints.
    pub fn forward_profiled(&self, clips: &Tensor) -> Result<(Tensor, Profile)> {
        let mut profile = Profile::new();
        let maps = self.backbone.forward_rec(
            &self.frames(clips)?,
            false,
            &mut Recorder(Some(&mut profile)),
        )?;
        let t = std::time::Instant::now();
        let feats = pool_features(&maps, self.cfg.num_seg, None)?;
        let out = match &self.head {
            Some(h) => h.classify(&feats)?,
            None => feats,
        };
        profile.push(("head (pool + fc)".into(), t.elapsed().as_secs_f64()));
        Ok((out, profile))
    }

    /// A copy with every BatchNorm folded into its convolution, for inference: the same eval
    /// outputs, fewer operations. It cannot be trained or saved.
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
    /// Logits `[N, K]` of clips `[N, T, 3, H, W]`; `train` turns on dropout and BN batch
    /// statistics (updating the running statistics with Paddle's rule).
    fn forward_t(&self, clips: &Tensor, train: bool) -> Result<Tensor> {
        if train && self.fused {
            candle_core::bail!("a model fused for inference cannot run in training mode")
        }
        let feats = self.features_t(clips, train)?;
        match &self.head {
            Some(h) => h.classify(&feats),
            None => Ok(feats),
        }
    }
}

/// Every tensor name and shape of a model with `cfg`, in model order, without allocating the
/// weights: the name table the converter maps Paddle's names onto.
pub fn parameter_shapes(cfg: &TsmConfig) -> Result<Vec<(String, Vec<usize>)>> {
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
