//! The recognizer: shapes, names, save/load, fusion, training mode.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use tsm_model::{parameter_shapes, Tsm, TsmConfig};

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    test_support::rel_l2(&a, &b)
}

/// A model with random weights and random BN statistics (so fusion and I/O are really tested).
fn random_model(cfg: &TsmConfig) -> (Tsm, VarMap) {
    let varmap = VarMap::new();
    let model = Tsm::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let n = var.as_tensor().elem_count();
        let shape = var.as_tensor().shape().clone();
        let r = |lo: f32, hi: f32| {
            Tensor::rand(lo, hi, n, &Device::Cpu)
                .unwrap()
                .reshape(&shape)
                .unwrap()
        };
        if name.ends_with("running_var") || name.ends_with("bn.weight") {
            var.set(&r(0.5, 1.5)).unwrap();
        } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
            var.set(&r(-0.2, 0.2)).unwrap();
        }
    }
    (model, varmap)
}

fn clips(n: usize, t: usize, s: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (n, t, 3, s, s), &Device::Cpu).unwrap()
}

#[test]
fn presets_and_config_json() {
    let c = TsmConfig::pptsm_r50(400);
    assert_eq!(
        (c.depth, c.num_seg, c.num_classes, c.shift),
        (50, 8, 400, true)
    );
    assert_eq!(c.effective_shift_ratio(), 0.125);
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<TsmConfig>(&json).unwrap(), c);
    // optional fields default
    let c: TsmConfig =
        serde_json::from_str(r#"{"depth":18,"num_seg":16,"num_classes":3}"#).unwrap();
    assert!(c.shift && c.shift_ratio.is_none() && c.dropout == 0.5);
    assert!(TsmConfig::pptsm(42, 3)
        .validate()
        .unwrap_err()
        .contains("depth 42"));
}

#[test]
fn names_follow_paddle_structure() {
    let names: Vec<String> = parameter_shapes(&TsmConfig::pptsm_r50(10))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "backbone.conv1_1.conv.weight",
        "backbone.conv1_1.bn.running_var",
        "backbone.bb_0_0.short.conv.weight",
        "backbone.bb_3_2.conv2.bn.weight",
        "head.fc.weight",
    ] {
        assert!(names.iter().any(|m| m == n), "{n}");
    }
    // 3 stem + 16 blocks * 3 + 4 shortcuts = 55 ConvBN layers * 5 tensors + fc weight and bias
    assert_eq!(names.len(), 55 * 5 + 2);
    let shapes = parameter_shapes(&TsmConfig::pptsm_r18(7)).unwrap();
    let get = |n: &str| shapes.iter().find(|(m, _)| m == n).unwrap().1.clone();
    assert_eq!(get("backbone.res2a.short.conv.weight"), [64, 64, 1, 1]);
    assert_eq!(get("backbone.res5b.conv1.conv.weight"), [512, 512, 3, 3]);
    assert_eq!(get("head.fc.weight"), [7, 512]);
    // 18: 3 stem + 8 blocks * 2 + 4 shortcuts
    assert_eq!(shapes.len(), (3 + 16 + 4) * 5 + 2);
    let d101 = parameter_shapes(&TsmConfig::pptsm_r101(5)).unwrap();
    assert!(d101
        .iter()
        .any(|(n, _)| n == "backbone.bb_2_22.conv2.bn.running_mean"));
}

#[test]
fn forward_shapes_and_features() {
    let cfg = TsmConfig::pptsm_r18(5).with_num_seg(4);
    let (m, _) = random_model(&cfg);
    let x = clips(2, 4, 40);
    assert_eq!(m.forward(&x).unwrap().dims(), &[2, 5]);
    assert_eq!(m.features(&x).unwrap().dims(), &[2, 512]);
    assert_eq!(m.feature_maps_t(&x, false).unwrap().dims(), &[8, 512, 2, 2]);
    // wrong clip length
    assert!(m
        .forward(&clips(1, 3, 40))
        .unwrap_err()
        .to_string()
        .contains("num_seg"));
    // backbone without head returns features
    let (b, _) = random_model(&TsmConfig::pptsm_r18(0).with_num_seg(4));
    assert_eq!(b.forward(&x).unwrap().dims(), &[2, 512]);
}

#[test]
fn shift_switch_changes_the_output() {
    let cfg = TsmConfig::pptsm_r18(3).with_num_seg(2);
    let (m, varmap) = random_model(&cfg);
    let off = TsmConfig {
        shift: false,
        ..cfg
    };
    // the same weights without shift
    let mut tensors = std::collections::HashMap::new();
    for (k, v) in varmap.data().lock().unwrap().iter() {
        tensors.insert(k.clone(), v.as_tensor().clone());
    }
    let tsn = Tsm::new(
        &off,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = clips(1, 2, 32);
    assert!(rel(&m.forward(&x).unwrap(), &tsn.forward(&x).unwrap()) > 1e-3);
    // frames shuffled within a clip: TSN (mean of per-frame features) does not care
    let swapped =
        Tensor::cat(&[x.narrow(1, 1, 1).unwrap(), x.narrow(1, 0, 1).unwrap()], 1).unwrap();
    assert!(rel(&tsn.forward(&x).unwrap(), &tsn.forward(&swapped).unwrap()) < 1e-5);
}

#[test]
fn fused_equals_unfused() {
    for cfg in [
        TsmConfig::pptsm_r18(6).with_num_seg(2),
        TsmConfig::pptsm_r50(6).with_num_seg(2),
    ] {
        let (m, _) = random_model(&cfg);
        let x = clips(1, 2, 45);
        let fused = m.fuse_for_inference().unwrap();
        let (a, b) = (m.forward(&x).unwrap(), fused.forward(&x).unwrap());
        let e = rel(&b, &a);
        assert!(e <= 1e-5, "depth {}: rel {e}", cfg.depth);
        assert!(fused.forward_t(&x, true).is_err());
        assert!(fused
            .save(std::env::temp_dir().join("never.safetensors"))
            .is_err());
    }
}

#[test]
fn save_load_round_trip_keeps_bn_statistics() {
    let cfg = TsmConfig::pptsm_r18(4).with_num_seg(2);
    let (m, varmap) = random_model(&cfg);
    let x = clips(2, 2, 32);
    // a training step moves the running statistics
    let before = m.forward(&x).unwrap();
    let _ = m.forward_t(&x, true).unwrap();
    let after = m.forward(&x).unwrap();
    assert!(
        rel(&after, &before) > 1e-4,
        "training mode did not update the running stats"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    m.save(&path).unwrap();
    let loaded = Tsm::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), &cfg);
    assert_eq!(rel(&loaded.forward(&x).unwrap(), &after), 0.0);
    // trainable variables exclude the statistics
    let n_trainable = Tsm::trainable_vars(&varmap).len();
    let n_all = varmap.all_vars().len();
    assert_eq!(n_all - n_trainable, 2 * (3 + 16 + 4));
}

#[test]
fn load_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("x.safetensors"), "{e}");
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("exceeds"), "{e}");
    // no config in the metadata
    tsm_model::write_safetensors(&p, &[], &Default::default()).unwrap();
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("tsm_config"), "{e}");
    // a config but no tensors: the error names the first tensor
    let meta = [(
        "tsm_config".to_string(),
        serde_json::to_string(&TsmConfig::pptsm_r18(2)).unwrap(),
    )]
    .into_iter()
    .collect();
    tsm_model::write_safetensors(&p, &[], &meta).unwrap();
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("backbone.conv1_1.conv.weight"), "{e}");
}

#[test]
fn gradients_flow_in_training_mode() {
    let cfg = TsmConfig {
        dropout: 0.0,
        ..TsmConfig::pptsm_r18(3).with_num_seg(2)
    };
    let (m, varmap) = random_model(&cfg);
    let logits = m.forward_t(&clips(2, 2, 32), true).unwrap();
    let loss = logits.sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = Tsm::trainable_vars(&varmap);
    let with_grad = vars
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .count();
    assert_eq!(with_grad, vars.len());
}
