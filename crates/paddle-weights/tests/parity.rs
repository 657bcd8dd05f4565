//! PaddleVideo's own model (tests/reference/paddle_model.py, ppvideo 2.3.1 on Paddle 3.3.1)
//! against ours: convert its random `.pdparams`, load, forward, compare logits and features.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use paddle_weights::{convert_file, ConvertOptions};
use tsm_model::Tsm;

/// Relative L2 error allowed on logits and pooled features.
const TOL: f32 = 1e-4;

fn check(case: &str) {
    let dir = test_support::reference_dir("paddle_model");
    let meta = test_support::read_json(&dir.join(format!("{case}.json")));
    let outputs = test_support::read_safetensors(&dir.join(meta["outputs"].as_str().unwrap()));
    let clips = &outputs["clips"];
    let clips = Tensor::from_vec(clips.data.clone(), clips.shape.clone(), &Device::Cpu).unwrap();
    let num_seg = meta["num_seg"].as_u64().unwrap() as usize;
    let tmp = tempfile::tempdir().unwrap();
    for file in meta["pdparams"].as_array().unwrap() {
        let file = file.as_str().unwrap();
        let out = tmp.path().join(format!("{file}.safetensors"));
        let opts = ConvertOptions {
            num_seg,
            ..Default::default()
        };
        let report = convert_file(&dir.join(file), &out, &opts).unwrap();
        let cfg = report.config.clone().unwrap();
        assert_eq!(cfg.depth as u64, meta["depth"].as_u64().unwrap());
        assert!(
            report.unused.is_empty(),
            "{case}: unused {:?}",
            report.unused
        );
        let model = Tsm::load(&out, &Device::Cpu).unwrap();
        let feats = model.features(&clips).unwrap();
        let e_feat = test_support::rel_l2(&feats, &outputs["features"].data);
        let mut msg = format!("{case} ({file}): features rel L2 {e_feat:.2e}");
        if let Some(want) = outputs.get("logits") {
            let logits = model.forward(&clips).unwrap();
            assert_eq!(logits.dims(), want.shape.as_slice());
            let e = test_support::rel_l2(&logits, &want.data);
            msg += &format!(", logits rel L2 {e:.2e}");
            assert!(e <= TOL, "{msg}");
            // the folded-BN model gives the same logits
            let fused = model.fuse_for_inference().unwrap().forward(&clips).unwrap();
            let ef = test_support::rel_l2(&fused, &want.data);
            msg += &format!(", fused {ef:.2e}");
            assert!(ef <= TOL, "{msg}");
        } else {
            assert_eq!(cfg.num_classes, 0);
        }
        eprintln!("{msg}");
        assert!(e_feat <= TOL, "{msg}");
    }
}

#[test]
fn r18_t8_224() {
    check("r18_t8_s224");
}

#[test]
fn r18_t16_100_protocol2() {
    check("r18_t16_s100");
}

#[test]
fn r18_backbone_only_without_prefix() {
    check("r18_t8_s100_backbone");
}

#[test]
fn r50_t8_224_protocols_2_and_4() {
    check("r50_t8_s224");
}

#[test]
fn r50_t16_100() {
    check("r50_t16_s100");
}

#[test]
fn r101_t8_100() {
    check("r101_t8_s100");
}
