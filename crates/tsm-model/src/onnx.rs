//! ONNX export of a [`Tsm`] for serving (ONNX Runtime, OpenVINO, TensorRT).
//!
//! The graph is the fused (BN-folded) eval model written with plain ONNX operators only, the
//! set in [`ONNX_OPERATORS`], all of which TensorRT's ONNX parser supports: the temporal shift
//! becomes Reshape -> Slice -> Pad -> Concat -> Reshape, so no custom op is needed. The input
//! `clips` is `[N, T, 3, H, W]` float32 with `N` dynamic (`batch`) and `T`, `H`, `W` fixed; the
//! output is `logits` `[N, K]` (or `features` `[N, C]` for a backbone without head). The
//! model's `metadata_props` carry the [`TsmConfig`] and the input layout, plus whatever the
//! caller adds (preprocessing, class names).

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

use crate::config::CONFIG_METADATA_KEY;
use crate::ops::{shift_folds, LEAKY_SLOPE};
use crate::resnet::ConvBn;
use crate::Tsm;

/// The graph input's name: clips `[N, T, 3, H, W]`, float32, normalised as in training.
pub const ONNX_INPUT: &str = "clips";
/// The graph output's name for a model with a head: logits `[N, K]` (no softmax).
pub const ONNX_LOGITS: &str = "logits";
/// The graph output's name for a backbone without head: pooled features `[N, C]`.
pub const ONNX_FEATURES: &str = "features";
/// The opsets [`Tsm::to_onnx`] writes. The graph means the same in all of them; only how
/// ReduceMean takes its axes changes (an input from 18 on).
pub const ONNX_OPSETS: std::ops::RangeInclusive<i64> = 13..=21;
/// The default opset: 17, which ONNX Runtime, OpenVINO and TensorRT 8.6+ all read.
pub const DEFAULT_OPSET: i64 = 17;
/// Every operator the exported graph may contain.
pub const ONNX_OPERATORS: &[&str] = &[
    "AveragePool",
    "Add",
    "Concat",
    "Conv",
    "Gemm",
    "GlobalAveragePool",
    "LeakyRelu",
    "MaxPool",
    "Pad",
    "ReduceMean",
    "Reshape",
    "Slice",
];

/// How to export: opset, the fixed frame size, and metadata to add.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// ONNX opset, one of [`ONNX_OPSETS`].
    pub opset: i64,
    /// Frame height the model takes (the crop size of the test pipeline).
    pub height: usize,
    /// Frame width.
    pub width: usize,
    /// Extra `metadata_props` (key, value), e.g. normalisation and class names; keys may not
    /// be ones the exporter writes itself (see [`Tsm::to_onnx`]).
    pub metadata: Vec<(String, String)>,
}

impl Default for OnnxOptions {
    /// Opset 17, 224 x 224 frames, no extra metadata.
    fn default() -> Self {
        Self {
            opset: DEFAULT_OPSET,
            height: 224,
            width: 224,
            metadata: Vec::new(),
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The opset is outside [`ONNX_OPSETS`].
    #[error(
        "opset {0} is not supported: choose one from {lo} to {hi}",
        lo = ONNX_OPSETS.start(),
        hi = ONNX_OPSETS.end()
    )]
    Opset(i64),
    /// A frame side is zero.
    #[error("frame size {height}x{width}: both sides must be at least 1")]
    Size {
        /// The height asked for.
        height: usize,
        /// The width asked for.
        width: usize,
    },
    /// A metadata key the exporter writes itself was given again.
    #[error("metadata key `{0}` is written by the exporter itself")]
    ReservedKey(String),
    /// Folding the BatchNorms or reading a weight failed.
    #[error("reading the model's weights")]
    Weights(#[source] candle_core::Error),
}

/// Metadata keys the exporter writes: the config, and the input's layout and size.
const INPUT_SIZE_KEY: &str = "input_size";
const INPUT_LAYOUT_KEY: &str = "input_layout";

impl Tsm {
    /// The model as a serialised ONNX `ModelProto`: BatchNorm folded (the model is fused
    /// first if it is not), float32 weights, the graph described in the [module docs](self).
    ///
    /// `metadata_props` hold `tsm_config` (the [`crate::TsmConfig`] as JSON), `input_size`
    /// (`[H, W]`), `input_layout` (`NTCHW`) and then `opts.metadata`.
    pub fn to_onnx(&self, opts: &OnnxOptions) -> Result<Vec<u8>, OnnxError> {
        if !ONNX_OPSETS.contains(&opts.opset) {
            return Err(OnnxError::Opset(opts.opset));
        }
        if opts.height == 0 || opts.width == 0 {
            return Err(OnnxError::Size {
                height: opts.height,
                width: opts.width,
            });
        }
        let reserved = [CONFIG_METADATA_KEY, INPUT_SIZE_KEY, INPUT_LAYOUT_KEY];
        if let Some((k, _)) = opts.metadata.iter().find(|(k, _)| reserved.contains(&&**k)) {
            return Err(OnnxError::ReservedKey(k.clone()));
        }
        let fused = self.fuse_for_inference().map_err(OnnxError::Weights)?;
        let graph = GraphBuilder::new(opts.opset)
            .model(&fused, opts.height, opts.width)
            .map_err(OnnxError::Weights)?;
        let cfg = serde_json::to_string(self.config()).unwrap_or_default();
        let mut metadata = vec![
            (CONFIG_METADATA_KEY.to_string(), cfg),
            (
                INPUT_SIZE_KEY.to_string(),
                format!("[{}, {}]", opts.height, opts.width),
            ),
            (INPUT_LAYOUT_KEY.to_string(), "NTCHW".to_string()),
        ];
        metadata.extend(opts.metadata.iter().cloned());
        let model = ModelProto {
            ir_version: ir_version(opts.opset),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opts.opset,
            }],
            producer_name: "tsm-rs".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: format!(
                "PP-TSM ResNet-{} (BatchNorm folded), {} frames per clip",
                self.config().depth,
                self.config().num_seg
            ),
            graph: Some(graph),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        };
        Ok(model.encode_to_vec())
    }
}

/// The oldest IR version that carries `opset` (ONNX's versioning table), so older readers
/// accept the file.
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// A named tensor in the graph being built, with its static shape past the batch dimension.
struct Value {
    name: String,
    /// `[C, H, W]` of a frame feature map.
    chw: [usize; 3],
}

/// Nodes and initializers in order, with unique names.
struct GraphBuilder {
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// int64 constants by value, each stored once.
    constants: HashMap<Vec<i64>, String>,
    /// How many nodes of each op exist, for their names.
    counts: HashMap<&'static str, usize>,
}

impl GraphBuilder {
    fn new(opset: i64) -> Self {
        Self {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            constants: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    /// The whole graph of a fused model on `height` x `width` frames.
    fn model(
        mut self,
        model: &Tsm,
        height: usize,
        width: usize,
    ) -> candle_core::Result<GraphProto> {
        let cfg = model.config();
        let t = cfg.num_seg;
        let backbone = model.backbone();
        let frames = self.reshape(ONNX_INPUT, &[-1, 3, height as i64, width as i64]);
        let mut x = Value {
            name: frames,
            chw: [3, height, width],
        };
        for conv in backbone.stem() {
            x = self.conv_bn(conv, &x)?;
        }
        x = self.max_pool(&x);
        let (num_seg, ratio) = backbone.shift();
        for (branch, short) in backbone.block_convs() {
            let mut y = match ratio {
                Some(r) => self.temporal_shift(&x, num_seg, r),
                None => Value {
                    name: x.name.clone(),
                    chw: x.chw,
                },
            };
            for conv in branch {
                y = self.conv_bn(conv, &y)?;
            }
            let short = match short {
                Some(s) => self.conv_bn(s, &x)?.name,
                None => x.name.clone(),
            };
            let sum = self.node("Add", &[&short, &y.name], vec![]);
            x = Value {
                name: self.leaky_relu(&sum),
                chw: y.chw,
            };
        }
        let c = x.chw[0];
        // ppTSMHead: spatial mean, then the mean over the T frames of each clip, then the fc
        let pooled = self.node("GlobalAveragePool", &[&x.name], vec![]);
        let per_clip = self.reshape(&pooled, &[-1, t as i64, c as i64]);
        let (output, width_out) = match model.head() {
            Some(head) => {
                let mean = self.reduce_mean_axis1(&per_clip, None);
                let (w, b) = head.fc();
                let w = self.initializer("head.fc.weight", w)?;
                let b = self.initializer("head.fc.bias", b)?;
                let attrs = vec![int("transB", 1)];
                self.node_to("Gemm", &[&mean, &w, &b], attrs, ONNX_LOGITS.into());
                (ONNX_LOGITS, cfg.num_classes)
            }
            None => {
                self.reduce_mean_axis1(&per_clip, Some(ONNX_FEATURES));
                (ONNX_FEATURES, c)
            }
        };
        let input_dims = [
            Dim::Batch,
            Dim::Fixed(t),
            Dim::Fixed(3),
            Dim::Fixed(height),
            Dim::Fixed(width),
        ];
        Ok(GraphProto {
            name: "pptsm".into(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(ONNX_INPUT, &input_dims)],
            output: vec![value_info(output, &[Dim::Batch, Dim::Fixed(width_out)])],
            doc_string: format!(
                "{ONNX_INPUT}: [batch, {t}, 3, {height}, {width}] float32, frames normalised as \
                 in training; {output}: [batch, {width_out}] float32"
            ),
            ..Default::default()
        })
    }

    /// Adds a node with a fresh output named after it; returns the output's name.
    fn node(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        let n = self.counts.entry(op).or_default();
        *n += 1;
        let name = format!("{op}_{n}");
        self.node_to(op, inputs, attribute, name)
    }

    /// Adds a node writing `output` (a graph output, or a fresh name from [`Self::node`]).
    fn node_to(
        &mut self,
        op: &'static str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        output: String,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
        output
    }

    /// A float32 weight as an initializer named `name`.
    fn initializer(&mut self, name: &str, t: &Tensor) -> candle_core::Result<String> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.initializers.push(TensorProto {
            dims: t.dims().iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(name.into())
    }

    /// A 1-D int64 constant (shapes, slice bounds, pads), shared by every node that needs it.
    fn constant(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.constants.get(values) {
            return name.clone();
        }
        let name = format!("const_{}", self.constants.len() + 1);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        self.constants.insert(values.to_vec(), name.clone());
        name
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let shape = self.constant(shape);
        self.node("Reshape", &[x, &shape], vec![])
    }

    fn leaky_relu(&mut self, x: &str) -> String {
        self.node("LeakyRelu", &[x], vec![float("alpha", LEAKY_SLOPE as f32)])
    }

    /// `[N, T, C]` -> `[N, C]`, into `output` when given: the axes are an attribute before
    /// opset 18, an input from 18 on.
    fn reduce_mean_axis1(&mut self, x: &str, output: Option<&str>) -> String {
        let (inputs, mut attrs) = if self.opset >= 18 {
            (vec![x.to_string(), self.constant(&[1])], vec![])
        } else {
            (vec![x.to_string()], vec![ints("axes", &[1])])
        };
        attrs.push(int("keepdims", 0));
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        match output {
            Some(o) => self.node_to("ReduceMean", &inputs, attrs, o.into()),
            None => self.node("ReduceMean", &inputs, attrs),
        }
    }

    /// Paddle's `MaxPool2D(3, 2, 1)`: ONNX pads with -inf, so padding never wins there either.
    fn max_pool(&mut self, x: &Value) -> Value {
        let name = self.node(
            "MaxPool",
            &[&x.name],
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ],
        );
        let [c, h, w] = x.chw;
        Value {
            name,
            chw: [c, (h - 1) / 2 + 1, (w - 1) / 2 + 1],
        }
    }

    /// `ConvBNLayer` with its BN folded: [AvgPool 2x2 ceil, exclusive] -> Conv (+bias) ->
    /// [LeakyRelu].
    fn conv_bn(&mut self, conv: &ConvBn, x: &Value) -> candle_core::Result<Value> {
        let mut input = Value {
            name: x.name.clone(),
            chw: x.chw,
        };
        if conv.pool_first() {
            let name = self.node(
                "AveragePool",
                &[&x.name],
                vec![
                    ints("kernel_shape", &[2, 2]),
                    ints("strides", &[2, 2]),
                    int("ceil_mode", 1),
                    int("count_include_pad", 0),
                ],
            );
            let [c, h, w] = x.chw;
            input = Value {
                name,
                chw: [c, h.div_ceil(2), w.div_ceil(2)],
            };
        }
        let (cout, _, k, _) = conv.weight().dims4()?;
        let (stride, pad) = conv.stride_padding();
        let mut inputs = vec![input.name.clone()];
        inputs.push(self.initializer(&format!("{}.conv.weight", conv.prefix()), conv.weight())?);
        if let Some(b) = conv.fused_bias() {
            inputs.push(self.initializer(&format!("{}.conv.bias", conv.prefix()), b)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        let mut name = self.node(
            "Conv",
            &inputs,
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
            ],
        );
        if conv.act() {
            name = self.leaky_relu(&name);
        }
        let out = |side: usize| (side + 2 * pad - k as usize) / stride + 1;
        let [_, h, w] = input.chw;
        Ok(Value {
            name,
            chw: [cout, out(h), out(w)],
        })
    }

    /// Paddle's temporal shift on `[N*T, C, H, W]` (see [`crate::temporal_shift`]): channels
    /// `[0, c1)` take frame `t-1`, `[c1, c2)` frame `t+1`, zeros where that frame does not
    /// exist. As `[N, T, C, H, W]`: slice the first fold without its last frame and pad a zero
    /// frame in front, the second without its first frame and pad one behind, concatenate
    /// along C with the unshifted rest.
    fn temporal_shift(&mut self, x: &Value, num_seg: usize, ratio: f64) -> Value {
        let [c, h, w] = x.chw;
        let (c1, c2) = shift_folds(c, ratio);
        let (t, ci, hi, wi) = (num_seg as i64, c as i64, h as i64, w as i64);
        let x5 = self.reshape(&x.name, &[-1, t, ci, hi, wi]);
        let mut parts = Vec::new();
        // (channels, frames taken, zero frames padded before, after)
        let folds = [
            (0..c1, 0..t - 1, 1, 0),
            (c1..c2, 1..t, 0, 1),
            (c2..c, 0..t, 0, 0),
        ];
        for (chans, frames, before, after) in folds {
            if chans.is_empty() {
                continue;
            }
            let starts = self.constant(&[frames.start, chans.start as i64]);
            let ends = self.constant(&[frames.end, chans.end as i64]);
            let axes = self.constant(&[1, 2]);
            let mut part = self.node("Slice", &[&x5, &starts, &ends, &axes], vec![]);
            if before + after > 0 {
                let pads = self.constant(&[0, before, 0, 0, 0, 0, after, 0, 0, 0]);
                part = self.node("Pad", &[&part, &pads], vec![]);
            }
            parts.push(part);
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let cat = self.node("Concat", &parts, vec![int("axis", 2)]);
        Value {
            name: self.reshape(&cat, &[-1, ci, hi, wi]),
            chw: x.chw,
        }
    }
}

/// One dimension of a graph input or output.
enum Dim {
    /// The dynamic batch dimension, `batch`.
    Batch,
    Fixed(usize),
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    use tensor_shape_proto::dimension::Value as D;
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Batch => D::DimParam("batch".into()),
                Dim::Fixed(n) => D::DimValue(*n as i64),
            }),
            denotation: String::new(),
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::Float as i32,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}
