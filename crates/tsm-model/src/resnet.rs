//! ResNetTweaksTSM: PaddleVideo's ResNet-vd backbone with a temporal shift in every block.
//!
//! ResNet-C stem (three 3x3 convs), ResNet-B strides (on the 3x3 conv), ResNet-D shortcuts
//! (2x2 exclusive ceil-mode average pooling before a stride-1 1x1 conv), leaky ReLU 0.01.
//! Follows `ppvideo/paddlevideo/modeling/backbones/resnet_tweaks_tsm.py`, including its
//! (working) BasicBlock for depths 18 and 34.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::batch_norm::BatchNorm;
use crate::config::TsmConfig;
#[cfg(target_arch = "x86_64")]
use crate::cpu_plan::{BlockDesc, ConvDesc, CpuPlan, Kernel, NoKernel};
use crate::model::{Param, ParamRole};
use crate::ops::{add_leaky_relu, avg_pool2x2_ceil, leaky_relu, max_pool3x3_s2_p1};
use crate::ops::{conv2d, conv2d_bias, ProductPrecision};

/// The instructions that bf16 inference on the CPU needs ([`crate::Tsm::fuse_for_inference`]
/// of bf16 weights) and this CPU lacks; `None` when it has them.
pub fn missing_cpu_bf16_features() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    return match Kernel::for_dtype(DType::BF16) {
        Ok(_) => None,
        Err(NoKernel::Cpu(needs)) => Some(needs),
        Err(NoKernel::Dtype) => unreachable!("bf16 has a kernel"),
    };
    #[cfg(not(target_arch = "x86_64"))]
    Some("x86-64 with avx512_bf16")
}

/// What a [`ConvBn`] computes: a `k x k` conv from `cin` to `cout` channels with `stride`
/// and padding `(k - 1) / 2`, leaky ReLU after the BN unless `no_act`, a 2x2 average pool
/// before the conv when `pool_first` (ResNet-D shortcuts).
#[derive(Debug, Clone, Copy)]
struct ConvSpec {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    act: bool,
    pool_first: bool,
}

impl ConvSpec {
    /// Stride 1, leaky ReLU, no pooling.
    fn new(cin: usize, cout: usize, k: usize) -> Self {
        Self {
            cin,
            cout,
            k,
            stride: 1,
            act: true,
            pool_first: false,
        }
    }

    fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// No activation: the last conv of a residual branch, and shortcuts.
    fn no_act(self) -> Self {
        Self { act: false, ..self }
    }

    fn pool_first(self, pool_first: bool) -> Self {
        Self { pool_first, ..self }
    }
}

/// Paddle's `ConvBNLayer`: [avg-pool 2x2 ceil] -> conv (no bias) -> BN -> [leaky ReLU].
///
/// Tensors: `{prefix}.conv.weight` `[out, in, k, k]` and `{prefix}.bn.*`. After
/// [`ConvBn::fuse`], the BN is folded into the conv weight and a bias.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    weight: Tensor,
    bn: Option<BatchNorm>,
    fused_bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    act: bool,
    pool_first: bool,
    prefix: String,
}

impl ConvBn {
    /// The layer `spec` describes under `vb`, Kaiming-normal initialised when created.
    fn new(spec: ConvSpec, vb: VarBuilder) -> Result<Self> {
        let ConvSpec {
            cin,
            cout,
            k,
            stride,
            ..
        } = spec;
        let fan_in = (cin * k * k) as f64;
        let init = Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_in).sqrt(),
        };
        let weight = vb
            .pp("conv")
            .get_with_hints((cout, cin, k, k), "weight", init)?;
        let bn = BatchNorm::new(cout, vb.pp("bn"))?;
        Ok(Self {
            weight,
            bn: Some(bn),
            fused_bias: None,
            stride,
            padding: (k - 1) / 2,
            act: spec.act,
            pool_first: spec.pool_first,
            prefix: vb.prefix(),
        })
    }

    /// The same layer with the BN folded into the conv: `w' = w * scale`, `b' = shift`.
    fn fuse(&self) -> Result<Self> {
        let Some(bn) = &self.bn else {
            return Ok(self.clone());
        };
        let (scale, shift) = bn.scale_shift()?;
        let weight = self
            .weight
            .broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?
            .detach();
        Ok(Self {
            weight,
            bn: None,
            fused_bias: Some(shift.detach()),
            ..self.clone()
        })
    }

    fn params(&self, out: &mut Vec<Param>) {
        let p = &self.prefix;
        out.push(Param::new(
            format!("{p}.conv.weight"),
            ParamRole::ConvWeight,
            &self.weight,
        ));
        if let Some(bn) = &self.bn {
            bn.params(out);
        }
        if let Some(b) = &self.fused_bias {
            out.push(Param::new(format!("{p}.conv.bias"), ParamRole::ConvBias, b));
        }
    }

    /// The fused layer as the CPU plan takes it; `None` before [`ConvBn::fuse`].
    #[cfg(target_arch = "x86_64")]
    fn plan_desc(&self) -> Option<ConvDesc<'_>> {
        Some(ConvDesc {
            weight: &self.weight,
            bias: self.fused_bias.as_ref()?,
            stride: self.stride,
            act: self.act,
        })
    }

    /// Multiply-adds of the conv on an `(h, w)` input, and its output size.
    fn macs(&self, (h, w): (usize, usize)) -> Result<(u64, (usize, usize))> {
        let (o, c, k, _) = self.weight.dims4()?;
        let (h, w) = if self.pool_first {
            (h.div_ceil(2), w.div_ceil(2))
        } else {
            (h, w)
        };
        let out = |n: usize| (n + 2 * self.padding - k) / self.stride + 1;
        let (ho, wo) = (out(h), out(w));
        Ok(((ho * wo * o * c * k * k) as u64, (ho, wo)))
    }

    /// The conv weight `[out, in, k, k]` (BN folded in after [`ConvBn::fuse`]).
    #[cfg(feature = "onnx")]
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The folded BN's shift, the conv bias of a fused layer.
    #[cfg(feature = "onnx")]
    pub(crate) fn fused_bias(&self) -> Option<&Tensor> {
        self.fused_bias.as_ref()
    }

    /// `(stride, padding)` of the conv.
    #[cfg(feature = "onnx")]
    pub(crate) fn stride_padding(&self) -> (usize, usize) {
        (self.stride, self.padding)
    }

    /// Whether a leaky ReLU follows.
    #[cfg(feature = "onnx")]
    pub(crate) fn act(&self) -> bool {
        self.act
    }

    /// Whether a 2x2 exclusive ceil-mode average pool comes first.
    #[cfg(feature = "onnx")]
    pub(crate) fn pool_first(&self) -> bool {
        self.pool_first
    }

    /// The checkpoint name prefix, e.g. `backbone.conv1_1`.
    #[cfg(feature = "onnx")]
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl ConvBn {
    /// The layer on `x`, temporally shifted first when `shift` is `(num_seg, ratio)`.
    fn forward_rec(
        &self,
        x: &Tensor,
        shift: Option<(usize, f64)>,
        products: ProductPrecision,
        train: bool,
        rec: &mut Recorder,
    ) -> Result<Tensor> {
        let x = if self.pool_first {
            rec.run(|| "avg pool 2x2".into(), || avg_pool2x2_ceil(x))?
        } else {
            x.clone()
        };
        let (o, c, k, _) = self.weight.dims4()?;
        let (_, _, h, w) = x.dims4()?;
        let shifted = if shift.is_some() { " shifted" } else { "" };
        let label = |what: &str| {
            format!(
                "conv {k}x{k} s{} {c}->{o} {h}x{w}{shifted}{what}",
                self.stride
            )
        };
        let (s, p) = (self.stride, self.padding);
        let conv = |x: &Tensor| conv2d(x, &self.weight, s, p, shift, products);
        let y = match (&self.bn, &self.fused_bias) {
            (None, Some(b)) => {
                let what = if self.act { " +bias+act" } else { " +bias" };
                return rec.run(
                    || label(what),
                    || conv2d_bias(&x, &self.weight, b, s, p, shift, self.act),
                );
            }
            (Some(bn), _) => {
                let y = rec.run(|| label(""), || conv(&x))?;
                let what = if self.act {
                    "batch norm+act"
                } else {
                    "batch norm"
                };
                return rec.run(|| what.into(), || bn.forward_act(&y, train, self.act));
            }
            (None, None) => rec.run(|| label(""), || conv(&x))?,
        };
        if self.act {
            rec.run(|| "leaky relu".into(), || leaky_relu(&y))
        } else {
            Ok(y)
        }
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rec(x, None, ProductPrecision::F32, train, &mut Recorder(None))
    }
}

/// Wall time per step of a forward pass, in order: `(label, seconds)`. Convolutions are
/// labelled with their kernel, stride, channels and input size.
pub type Profile = Vec<(String, f64)>;

/// Times each step into a [`Profile`] when there is one.
pub(crate) struct Recorder<'a>(pub(crate) Option<&'a mut Profile>);

impl Recorder<'_> {
    pub(crate) fn run<T>(
        &mut self,
        label: impl FnOnce() -> String,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match &mut self.0 {
            None => f(),
            Some(p) => {
                let t = std::time::Instant::now();
                let y = f()?;
                p.push((label(), t.elapsed().as_secs_f64()));
                Ok(y)
            }
        }
    }
}

/// The shift applied at the start of every residual branch (or none, for a plain TSN).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shift {
    num_seg: usize,
    ratio: Option<f64>,
}

impl Shift {
    /// `(num_seg, ratio)` when the shift is on.
    fn spec(&self) -> Option<(usize, f64)> {
        self.ratio.map(|r| (self.num_seg, r))
    }
}

/// A residual block: Bottleneck (depth >= 50) or BasicBlock (18/34).
#[derive(Debug, Clone)]
pub(crate) enum Block {
    /// shift -> 1x1 -> 3x3 (stride) -> 1x1 (no act), shortcut, add, leaky ReLU.
    Bottleneck {
        conv0: ConvBn,
        conv1: ConvBn,
        conv2: ConvBn,
        short: Option<ConvBn>,
    },
    /// shift -> 3x3 (stride) -> 3x3 (no act), shortcut, add, leaky ReLU.
    Basic {
        conv0: ConvBn,
        conv1: ConvBn,
        short: Option<ConvBn>,
    },
}

impl Block {
    fn forward_rec(
        &self,
        x: &Tensor,
        shift: Shift,
        products: ProductPrecision,
        train: bool,
        rec: &mut Recorder,
    ) -> Result<Tensor> {
        // the shift is applied by the branch's first conv as it reads x
        let shift = shift.spec();
        let (branch, short) = match self {
            Block::Bottleneck {
                conv0,
                conv1,
                conv2,
                short,
            } => {
                let y = conv0.forward_rec(x, shift, products, train, rec)?;
                let y = conv1.forward_rec(&y, None, products, train, rec)?;
                (conv2.forward_rec(&y, None, products, train, rec)?, short)
            }
            Block::Basic {
                conv0,
                conv1,
                short,
            } => {
                let y = conv0.forward_rec(x, shift, products, train, rec)?;
                (conv1.forward_rec(&y, None, products, train, rec)?, short)
            }
        };
        // the shortcut takes the unshifted input
        let short = match short {
            Some(s) => s.forward_rec(x, None, products, train, rec)?,
            None => x.clone(),
        };
        rec.run(
            || "residual add+act".into(),
            || add_leaky_relu(&short, &branch),
        )
    }

    /// Multiply-adds of the block on an `(h, w)` input, and its output size.
    fn macs(&self, input: (usize, usize)) -> Result<(u64, (usize, usize))> {
        let mut total = 0;
        let mut size = input;
        let branch: &[&ConvBn] = match self {
            Block::Bottleneck {
                conv0,
                conv1,
                conv2,
                ..
            } => &[conv0, conv1, conv2],
            Block::Basic { conv0, conv1, .. } => &[conv0, conv1],
        };
        for c in branch {
            let (m, s) = c.macs(size)?;
            total += m;
            size = s;
        }
        let (Block::Bottleneck { short, .. } | Block::Basic { short, .. }) = self;
        if let Some(s) = short {
            total += s.macs(input)?.0;
        }
        Ok((total, size))
    }

    fn convs(&self) -> Vec<&ConvBn> {
        match self {
            Block::Bottleneck {
                conv0,
                conv1,
                conv2,
                short,
            } => [Some(conv0), Some(conv1), Some(conv2), short.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            Block::Basic {
                conv0,
                conv1,
                short,
            } => [Some(conv0), Some(conv1), short.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        }
    }

    fn map_convs(&self, f: &impl Fn(&ConvBn) -> Result<ConvBn>) -> Result<Self> {
        let opt = |s: &Option<ConvBn>| s.as_ref().map(f).transpose();
        Ok(match self {
            Block::Bottleneck {
                conv0,
                conv1,
                conv2,
                short,
            } => Block::Bottleneck {
                conv0: f(conv0)?,
                conv1: f(conv1)?,
                conv2: f(conv2)?,
                short: opt(short)?,
            },
            Block::Basic {
                conv0,
                conv1,
                short,
            } => Block::Basic {
                conv0: f(conv0)?,
                conv1: f(conv1)?,
                short: opt(short)?,
            },
        })
    }
}

/// The name of block `i` of stage `stage` (0-based), as PaddleVideo's state dicts have it:
/// `bb_{stage}_{i}` for Bottleneck depths, `res{stage+2}{a,b,...}` for BasicBlock depths.
fn block_name(cfg: &TsmConfig, stage: usize, i: usize) -> String {
    if cfg.is_bottleneck() {
        format!("bb_{stage}_{i}")
    } else {
        let letter = char::from(b'a' + (i as u8));
        format!("res{}{letter}", stage + 2)
    }
}

/// The backbone: `[N*T, 3, H, W]` -> `[N*T, C, H/32, W/32]` feature maps.
#[derive(Debug, Clone)]
pub(crate) struct ResNetTweaksTsm {
    stem: [ConvBn; 3],
    blocks: Vec<Block>,
    shift: Shift,
    /// The precision of the per-op path's conv products (the CPU plan's are its dtype's).
    products: ProductPrecision,
    /// The fused backbone's forward on x86-64 CPUs (see `cpu_plan`), when it fits.
    #[cfg(target_arch = "x86_64")]
    plan: Option<std::sync::Arc<CpuPlan>>,
}

impl ResNetTweaksTsm {
    /// Builds the backbone for `cfg` (validated) under `vb` (`backbone` in [`crate::Tsm`]).
    pub(crate) fn new(cfg: &TsmConfig, vb: VarBuilder) -> Result<Self> {
        let Some(stages) = cfg.stage_blocks() else {
            candle_core::bail!("unsupported depth {}", cfg.depth)
        };
        let stem = [
            ConvBn::new(ConvSpec::new(3, 32, 3).stride(2), vb.pp("conv1_1"))?,
            ConvBn::new(ConvSpec::new(32, 32, 3), vb.pp("conv1_2"))?,
            ConvBn::new(ConvSpec::new(32, 64, 3), vb.pp("conv1_3"))?,
        ];
        let widths = [64, 128, 256, 512];
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (stage, (&n, &width)) in stages.iter().zip(&widths).enumerate() {
            for i in 0..n {
                let vb = vb.pp(block_name(cfg, stage, i));
                let stride = if i == 0 && stage != 0 { 2 } else { 1 };
                let block = if cfg.is_bottleneck() {
                    let cout = width * 4;
                    let short = if i == 0 {
                        // ResNet-D: pool then stride-1 conv, except the very first block
                        let spec = ConvSpec::new(cin, cout, 1).no_act().pool_first(stage != 0);
                        Some(ConvBn::new(spec, vb.pp("short"))?)
                    } else {
                        None
                    };
                    Block::Bottleneck {
                        conv0: ConvBn::new(ConvSpec::new(cin, width, 1), vb.pp("conv0"))?,
                        conv1: ConvBn::new(
                            ConvSpec::new(width, width, 3).stride(stride),
                            vb.pp("conv1"),
                        )?,
                        conv2: ConvBn::new(ConvSpec::new(width, cout, 1).no_act(), vb.pp("conv2"))?,
                        short,
                    }
                } else {
                    let short = if i == 0 {
                        // ppvideo's BasicBlock: a strided 1x1 projection, no pooling
                        let spec = ConvSpec::new(cin, width, 1).stride(stride).no_act();
                        Some(ConvBn::new(spec, vb.pp("short"))?)
                    } else {
                        None
                    };
                    Block::Basic {
                        conv0: ConvBn::new(
                            ConvSpec::new(cin, width, 3).stride(stride),
                            vb.pp("conv0"),
                        )?,
                        conv1: ConvBn::new(
                            ConvSpec::new(width, width, 3).no_act(),
                            vb.pp("conv1"),
                        )?,
                        short,
                    }
                };
                blocks.push(block);
                cin = if cfg.is_bottleneck() {
                    width * 4
                } else {
                    width
                };
            }
        }
        let shift = Shift {
            num_seg: cfg.num_seg,
            ratio: cfg.shift.then(|| cfg.effective_shift_ratio()),
        };
        Ok(Self {
            stem,
            blocks,
            shift,
            products: ProductPrecision::F32,
            #[cfg(target_arch = "x86_64")]
            plan: None,
        })
    }

    /// The weights' dtype.
    pub(crate) fn dtype(&self) -> DType {
        self.stem[0].weight.dtype()
    }

    /// The weights' device.
    pub(crate) fn device(&self) -> &Device {
        self.stem[0].weight.device()
    }

    pub(crate) fn set_products(&mut self, products: ProductPrecision) {
        self.products = products;
    }

    pub(crate) fn products(&self) -> ProductPrecision {
        self.products
    }

    /// The same backbone with every BN folded into its conv (inference only), with its CPU
    /// plan where it fits. bf16 weights on the CPU need the plan's bf16 kernel: without it
    /// (a CPU without AVX-512 BF16) this is an error, not the per-op path's far slower bf16.
    pub(crate) fn fuse(&self) -> Result<Self> {
        let fused = self.fuse_layers()?;
        let on_cpu = fused.stem[0].weight.device().is_cpu();
        if let (DType::BF16, true, Some(needs)) =
            (fused.dtype(), on_cpu, missing_cpu_bf16_features())
        {
            candle_core::bail!(
                "bf16 inference on the CPU needs {needs}, which this CPU lacks; run in f32 instead"
            )
        }
        #[cfg(target_arch = "x86_64")]
        if let (true, Ok(kernel)) = (on_cpu, Kernel::for_dtype(fused.dtype())) {
            return fused.with_plan(kernel);
        }
        Ok(fused)
    }

    /// This fused backbone with its CPU plan on `kernel`, where the network fits it.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn with_plan(self, kernel: Kernel) -> Result<Self> {
        Ok(Self {
            plan: self.cpu_plan(kernel)?.map(std::sync::Arc::new),
            ..self
        })
    }

    /// [`ResNetTweaksTsm::fuse`] without the CPU plan: the per-op path, which the plan's tests
    /// compare it with.
    pub(crate) fn fuse_layers(&self) -> Result<Self> {
        let f = |c: &ConvBn| c.fuse();
        Ok(Self {
            stem: [
                self.stem[0].fuse()?,
                self.stem[1].fuse()?,
                self.stem[2].fuse()?,
            ],
            blocks: self
                .blocks
                .iter()
                .map(|b| b.map_convs(&f))
                .collect::<Result<_>>()?,
            shift: self.shift,
            products: self.products,
            #[cfg(target_arch = "x86_64")]
            plan: None,
        })
    }

    /// Whether [`ResNetTweaksTsm::forward_t`] runs the CPU plan.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(crate) fn has_cpu_plan(&self) -> bool {
        self.plan.is_some()
    }

    /// The CPU plan of this fused backbone, `None` where it does not fit.
    #[cfg(target_arch = "x86_64")]
    fn cpu_plan(&self, kernel: Kernel) -> Result<Option<CpuPlan>> {
        let stem: Option<Vec<ConvDesc>> = self.stem.iter().map(ConvBn::plan_desc).collect();
        let blocks: Option<Vec<BlockDesc>> = self
            .block_convs()
            .into_iter()
            .map(|(branch, short)| {
                let short = match short {
                    Some(s) => Some((s.plan_desc()?, s.pool_first)),
                    None => None,
                };
                Some(BlockDesc {
                    branch: branch
                        .into_iter()
                        .map(ConvBn::plan_desc)
                        .collect::<Option<_>>()?,
                    short,
                })
            })
            .collect();
        let (Some(stem), Some(blocks)) = (stem, blocks) else {
            return Ok(None);
        };
        let shift = self.shift.ratio.map(|r| (self.shift.num_seg, r));
        CpuPlan::new(&stem, &blocks, shift, kernel)
    }

    pub(crate) fn params(&self, out: &mut Vec<Param>) {
        for c in &self.stem {
            c.params(out);
        }
        for b in &self.blocks {
            for c in b.convs() {
                c.params(out);
            }
        }
    }

    /// Multiply-adds of the convolutions for one `(h, w)` frame.
    pub(crate) fn macs(&self, input: (usize, usize)) -> Result<u64> {
        let mut total = 0;
        let mut size = input;
        for c in &self.stem {
            let (m, s) = c.macs(size)?;
            total += m;
            size = s;
        }
        // the 3x3 stride-2 max pool
        size = ((size.0 - 1) / 2 + 1, (size.1 - 1) / 2 + 1);
        for b in &self.blocks {
            let (m, s) = b.macs(size)?;
            total += m;
            size = s;
        }
        Ok(total)
    }

    /// The three stem convs (a 3x3 stride-2 max pool follows them).
    #[cfg(feature = "onnx")]
    pub(crate) fn stem(&self) -> &[ConvBn; 3] {
        &self.stem
    }

    /// Every block as its branch convs in order and its shortcut conv (identity when `None`):
    /// Bottleneck and BasicBlock differ only in the branch.
    #[cfg(any(feature = "onnx", target_arch = "x86_64"))]
    pub(crate) fn block_convs(&self) -> Vec<(Vec<&ConvBn>, Option<&ConvBn>)> {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Bottleneck {
                    conv0,
                    conv1,
                    conv2,
                    short,
                } => (vec![conv0, conv1, conv2], short.as_ref()),
                Block::Basic {
                    conv0,
                    conv1,
                    short,
                } => (vec![conv0, conv1], short.as_ref()),
            })
            .collect()
    }

    /// `(num_seg, ratio)` of the temporal shift at the start of every branch; ratio `None`
    /// when the shift is off.
    #[cfg(feature = "onnx")]
    pub(crate) fn shift(&self) -> (usize, Option<f64>) {
        (self.shift.num_seg, self.shift.ratio)
    }
}

impl ResNetTweaksTsm {
    pub(crate) fn forward_rec(
        &self,
        x: &Tensor,
        train: bool,
        rec: &mut Recorder,
    ) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let Some(plan) = &self.plan {
            if !train && x.device().is_cpu() && x.dtype() == plan.dtype() {
                return plan.forward(x, rec);
            }
        }
        let mut y = x.clone();
        for c in &self.stem {
            y = c.forward_rec(&y, None, self.products, train, rec)?;
        }
        let mut y = rec.run(|| "max pool 3x3".into(), || max_pool3x3_s2_p1(&y))?;
        for b in &self.blocks {
            y = b.forward_rec(&y, self.shift, self.products, train, rec)?;
        }
        Ok(y)
    }
}

impl ModuleT for ResNetTweaksTsm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rec(x, train, &mut Recorder(None))
    }
}
