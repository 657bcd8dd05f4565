//! `Tsm::to_onnx` without an engine: the graph's structure, weights and metadata, read back
//! with the same protobuf types. The numbers are checked in ONNX Runtime and OpenVINO by
//! crates/cli/tests/export.rs.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_onnx::onnx::{
    tensor_shape_proto::dimension::Value as Dim, type_proto, GraphProto, ModelProto,
};
use prost::Message;
use tsm_model::{OnnxError, OnnxOptions, Tsm, TsmConfig, CONFIG_METADATA_KEY, ONNX_OPERATORS};

fn model(cfg: &TsmConfig) -> Tsm {
    let varmap = VarMap::new();
    Tsm::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

fn export(m: &Tsm, opts: &OnnxOptions) -> ModelProto {
    ModelProto::decode(&m.to_onnx(opts).unwrap()[..]).unwrap()
}

fn graph(p: &ModelProto) -> &GraphProto {
    p.graph.as_ref().unwrap()
}

fn count(p: &ModelProto, op: &str) -> usize {
    graph(p).node.iter().filter(|n| n.op_type == op).count()
}

fn dims(p: &ModelProto, output: bool) -> (String, Vec<String>) {
    let v = if output {
        &graph(p).output[0]
    } else {
        &graph(p).input[0]
    };
    let Some(type_proto::Value::TensorType(t)) = &v.r#type.as_ref().unwrap().value else {
        panic!("{} is not a tensor", v.name)
    };
    let d = t
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value.as_ref().unwrap() {
            Dim::DimParam(p) => p.clone(),
            Dim::DimValue(n) => n.to_string(),
        });
    (v.name.clone(), d.collect())
}

fn meta(p: &ModelProto, key: &str) -> String {
    let e = p.metadata_props.iter().find(|e| e.key == key);
    e.unwrap_or_else(|| panic!("no {key}")).value.clone()
}

#[test]
fn r18_graph_is_the_fused_model_in_plain_operators() {
    let cfg = TsmConfig::pptsm_r18(4).with_num_seg(3);
    let m = model(&cfg);
    let opts = OnnxOptions {
        height: 40,
        width: 56,
        metadata: vec![("labels".into(), "[\"a\"]".into())],
        ..Default::default()
    };
    let p = export(&m, &opts);
    assert_eq!(p.opset_import[0].version, 17);
    assert_eq!(p.ir_version, 8);
    for n in &graph(&p).node {
        assert!(
            ONNX_OPERATORS.contains(&n.op_type.as_str()),
            "{}",
            n.op_type
        );
    }
    // 3 stem convs, 2 per block, a projection shortcut in every stage's first block (ppvideo's
    // BasicBlock projects even where the widths agree); one shift per block (8 blocks)
    assert_eq!(count(&p, "Conv"), 3 + 2 * 8 + 4);
    assert_eq!(count(&p, "Pad"), 2 * 8);
    assert_eq!(count(&p, "Slice"), 3 * 8);
    assert_eq!(count(&p, "Concat"), 8);
    assert_eq!(
        count(&p, "AveragePool"),
        0,
        "BasicBlock shortcuts do not pool"
    );
    assert_eq!(count(&p, "Gemm"), 1);
    assert_eq!(
        dims(&p, false),
        (
            "clips".into(),
            ["batch", "3", "3", "40", "56"].map(String::from).to_vec()
        )
    );
    assert_eq!(
        dims(&p, true),
        ("logits".into(), ["batch", "4"].map(String::from).to_vec())
    );
    // the weights are the folded ones, bit for bit
    let fused = m.fuse_for_inference().unwrap();
    for tsm_model::Param {
        name, tensor: t, ..
    } in fused.params()
    {
        let init = graph(&p).initializer.iter().find(|i| i.name == name);
        let init = init.unwrap_or_else(|| panic!("no initializer {name}"));
        let want: Vec<u8> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(init.raw_data, want, "{name}");
    }
    let stored: TsmConfig = serde_json::from_str(&meta(&p, CONFIG_METADATA_KEY)).unwrap();
    assert_eq!(stored, cfg);
    assert_eq!(meta(&p, "input_size"), "[40, 56]");
    assert_eq!(meta(&p, "input_layout"), "NTCHW");
    assert_eq!(meta(&p, "labels"), "[\"a\"]");
}

#[test]
fn r50_shortcuts_pool_and_opset_18_takes_reduce_mean_axes_as_an_input() {
    let m = model(&TsmConfig::pptsm_r50(2).with_num_seg(2));
    for (opset, ir, inputs) in [(13, 7, 1), (17, 8, 1), (18, 8, 2), (21, 10, 2)] {
        let opts = OnnxOptions {
            opset,
            height: 32,
            width: 32,
            ..Default::default()
        };
        let p = export(&m, &opts);
        assert_eq!((p.opset_import[0].version, p.ir_version), (opset, ir));
        let mean = graph(&p).node.iter().find(|n| n.op_type == "ReduceMean");
        let mean = mean.unwrap();
        assert_eq!(mean.input.len(), inputs, "opset {opset}");
        assert_eq!(mean.attribute.iter().any(|a| a.name == "axes"), inputs == 1);
        // ResNet-D: the first block of stages 2-4 pools before its 1x1 shortcut
        assert_eq!(count(&p, "AveragePool"), 3);
        let pool = graph(&p)
            .node
            .iter()
            .find(|n| n.op_type == "AveragePool")
            .unwrap();
        let attr = |k: &str| pool.attribute.iter().find(|a| a.name == k).unwrap().i;
        assert_eq!((attr("ceil_mode"), attr("count_include_pad")), (1, 0));
    }
}

#[test]
fn a_backbone_exports_features_and_a_tsn_has_no_shift() {
    let backbone = model(&TsmConfig::pptsm_r18(0).with_num_seg(2));
    let p = export(&backbone, &OnnxOptions::default());
    assert_eq!(
        dims(&p, true),
        (
            "features".into(),
            ["batch", "512"].map(String::from).to_vec()
        )
    );
    assert_eq!(count(&p, "Gemm"), 0);
    let tsn = model(&TsmConfig {
        shift: false,
        ..TsmConfig::pptsm_r18(2)
    });
    let p = export(&tsn, &OnnxOptions::default());
    assert_eq!(
        count(&p, "Slice") + count(&p, "Pad") + count(&p, "Concat"),
        0
    );
}

#[test]
fn bad_options_are_typed_errors() {
    let m = model(&TsmConfig::pptsm_r18(2).with_num_seg(2));
    for opset in [12, 22] {
        let opts = OnnxOptions {
            opset,
            ..Default::default()
        };
        let e = m.to_onnx(&opts).unwrap_err();
        assert!(matches!(e, OnnxError::Opset(o) if o == opset), "{e}");
        assert_eq!(
            e.to_string(),
            format!("opset {opset} is not supported: choose one from 13 to 21")
        );
    }
    let opts = OnnxOptions {
        width: 0,
        ..Default::default()
    };
    assert!(matches!(m.to_onnx(&opts), Err(OnnxError::Size { .. })));
    let opts = OnnxOptions {
        metadata: vec![(CONFIG_METADATA_KEY.into(), "{}".into())],
        ..Default::default()
    };
    assert!(matches!(m.to_onnx(&opts), Err(OnnxError::ReservedKey(k)) if k == CONFIG_METADATA_KEY));
}
