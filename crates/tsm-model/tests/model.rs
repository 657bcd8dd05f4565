//! The recognizer: shapes, names, save/load, fusion, training mode.
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, Optimizer, VarBuilder, VarMap, SGD};
use rand::SeedableRng;
use tsm_model::{
    parameter_shapes, ConfigError, ParamRole, ProductPrecision, Tsm, TsmConfig, TsmError,
};

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    test_support::rel_l2(a, b)
}

/// A model with random weights and random BN statistics (so fusion and I/O are really tested),
/// the same at every call.
fn random_model(cfg: &TsmConfig) -> (Tsm, VarMap) {
    use rand::Rng;
    let varmap = VarMap::new();
    let model = Tsm::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    model
        .init_weights(|i| rand_chacha::ChaCha8Rng::seed_from_u64(i as u64))
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::MAX);
    for p in model.params() {
        let mut r = |lo: f32, hi: f32| {
            let v = (0..p.tensor.elem_count())
                .map(|_| rng.random_range(lo..hi))
                .collect();
            Tensor::from_vec(v, p.tensor.shape(), &Device::Cpu).unwrap()
        };
        let value = match p.role {
            ParamRole::BnVariance | ParamRole::BnScale => r(0.5, 1.5),
            ParamRole::BnMean | ParamRole::BnShift => r(-0.2, 0.2),
            _ => continue,
        };
        p.var().unwrap().set(&value).unwrap();
    }
    (model, varmap)
}

fn clips(n: usize, t: usize, s: usize) -> Tensor {
    test_support::randn((n, t, 3, s, s))
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
    assert_eq!(
        TsmConfig::pptsm(42, 3).validate(),
        Err(ConfigError::Depth(42))
    );
    let e = TsmConfig::pptsm(42, 3).validate().unwrap_err().to_string();
    assert!(
        e.contains("depth 42 is not one of 18, 34, 50, 101, 152"),
        "{e}"
    );
    let no_frames = TsmConfig::pptsm_r18(3).with_num_seg(0);
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    assert!(matches!(
        Tsm::new(&no_frames, vb),
        Err(TsmError::Config(ConfigError::NumSeg(0)))
    ));
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
    let n_trainable = m.trainable_vars().unwrap().len();
    let n_all = varmap.all_vars().len();
    assert_eq!(n_all - n_trainable, 2 * (3 + 16 + 4));
    // loaded weights are constants, not variables to train
    let e = loaded.trainable_vars().unwrap_err().to_string();
    assert!(e.contains("not a variable"), "{e}");
}

#[test]
fn load_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("x.safetensors"), "{e}");
    std::fs::write(&p, b"\x10\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a tsm-rs checkpoint (safetensors)"),
        "{e}"
    );
    let reason = std::error::Error::source(&e).unwrap().to_string();
    assert!(reason.contains("exceeds"), "{reason}");
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
    let e = Tsm::load(&p, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("x.safetensors"), "{e}");
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(
        cause.contains("backbone.conv1_1.conv.weight"),
        "{e}: {cause}"
    );
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
    let vars = m.trainable_vars().unwrap();
    assert_eq!(vars.len(), varmap.all_vars().len() - 2 * (3 + 16 + 4));
    let with_grad = vars
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .count();
    assert_eq!(with_grad, vars.len());
}

#[test]
fn roles_cover_every_tensor() {
    let cfg = TsmConfig::pptsm_r50(7).with_num_seg(2);
    let (m, _) = random_model(&cfg);
    let params = m.params();
    let mut names: Vec<(String, Vec<usize>)> = params
        .iter()
        .map(|p| (p.name.clone(), p.tensor.dims().to_vec()))
        .collect();
    let mut shapes = parameter_shapes(&cfg).unwrap();
    names.sort();
    shapes.sort();
    assert_eq!(names, shapes);
    let count = |r: ParamRole| params.iter().filter(|p| p.role == r).count();
    // 3 stem + 16 blocks * 3 + 4 shortcuts
    for r in [
        ParamRole::ConvWeight,
        ParamRole::BnScale,
        ParamRole::BnShift,
        ParamRole::BnMean,
        ParamRole::BnVariance,
    ] {
        assert_eq!(count(r), 55, "{r:?}");
    }
    assert_eq!(
        (count(ParamRole::FcWeight), count(ParamRole::FcBias)),
        (1, 1)
    );
    let fc = params
        .iter()
        .find(|p| p.role == ParamRole::FcWeight)
        .unwrap();
    assert_eq!(fc.tensor.dims(), [7, 2048]);
    // fused: every BN becomes its conv's bias
    let fused = m.fuse_for_inference().unwrap().params();
    assert_eq!(
        fused
            .iter()
            .filter(|p| p.role == ParamRole::ConvBias)
            .count(),
        55
    );
    assert!(fused.iter().all(|p| !p.role.is_bn_statistic()));
}

#[test]
fn seeded_initialisation_is_repeatable_and_kaiming() {
    let cfg = TsmConfig::pptsm_r18(5).with_num_seg(2);
    let rng = |seed: u64| move |i: usize| rand_chacha::ChaCha8Rng::seed_from_u64(seed + i as u64);
    let values = |seed: u64| {
        let (m, _) = random_model(&cfg);
        m.init_weights(rng(seed)).unwrap();
        m.params()
    };
    let (a, b, c) = (values(1), values(1), values(2));
    let conv = |ps: &[tsm_model::Param]| {
        let p = ps
            .iter()
            .find(|p| p.name == "backbone.res3a.conv0.conv.weight")
            .unwrap();
        p.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(conv(&a), conv(&b));
    assert_ne!(conv(&a), conv(&c));
    // Kaiming normal: std sqrt(2 / fan_in), fan_in = 64 * 3 * 3 here
    let v = conv(&a);
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let want = (2.0f32 / (64.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.05, "{std} vs {want}");
    // BN statistics keep their values (random_model drew them), the fc std is 0.01
    let fc = a.iter().find(|p| p.role == ParamRole::FcWeight).unwrap();
    let f = fc.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let std = (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt();
    assert!((std / 0.01 - 1.0).abs() < 0.1, "{std}");
    // loaded models have no variables to draw into
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    random_model(&cfg).0.save(&p).unwrap();
    let loaded = Tsm::load(&p, &Device::Cpu).unwrap();
    assert!(loaded.init_weights(rng(1)).is_err());
}

#[test]
fn seeded_dropout_repeats_and_drops() {
    let cfg = TsmConfig {
        dropout: 0.5,
        ..TsmConfig::pptsm_r18(4).with_num_seg(2)
    };
    let (m, _) = random_model(&cfg);
    let x = clips(2, 2, 32);
    let run = |seed: u64| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        m.forward_train(&x, &mut rng).unwrap()
    };
    let (a, b, c) = (run(3), run(3), run(4));
    assert_eq!(rel(&a, &b), 0.0);
    assert!(rel(&a, &c) > 1e-3);
    // without dropout, the draws change nothing
    let no_drop = TsmConfig {
        dropout: 0.0,
        ..cfg
    };
    let (m, _) = random_model(&no_drop);
    let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let (a, b) = (
        m.forward_train(&x, &mut r1).unwrap(),
        m.forward_train(&x, &mut r2).unwrap(),
    );
    assert_eq!(rel(&a, &b), 0.0);
}

#[test]
fn batch_norm_statistics_are_the_batchs_and_leave_the_running_ones() {
    let cfg = TsmConfig::pptsm_r18(3).with_num_seg(2);
    let (m, _) = random_model(&cfg);
    let x = clips(2, 2, 32);
    let running = |m: &Tsm| -> Vec<Vec<f32>> {
        m.params()
            .iter()
            .filter(|p| p.role.is_bn_statistic())
            .map(|p| p.tensor.to_vec1::<f32>().unwrap())
            .collect()
    };
    let before = running(&m);
    let stats = m.batch_norm_statistics(&x).unwrap();
    assert_eq!(running(&m), before);
    assert_eq!(stats.len(), before.len());
    // the stem's first BN normalises conv1_1's output: its batch mean, computed directly
    let first = &stats[0];
    assert_eq!(
        (first.name.as_str(), first.role),
        ("backbone.conv1_1.bn.running_mean", ParamRole::BnMean)
    );
    let w = m.params()[0].tensor.clone();
    let frames = x.reshape((4, 3, 32, 32)).unwrap();
    let y = frames.conv2d(&w, 1, 2, 1, 1).unwrap();
    let mean = y.mean_keepdim((0, 2, 3)).unwrap().flatten_all().unwrap();
    assert!(rel(&first.tensor, &mean) < 1e-5);
    let var = &stats[1];
    assert_eq!(var.role, ParamRole::BnVariance);
    let want = y
        .broadcast_sub(&mean.reshape((1, (), 1, 1)).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_keepdim((0, 2, 3))
        .unwrap()
        .flatten_all()
        .unwrap();
    assert!(rel(&var.tensor, &want) < 1e-4);
}

#[test]
fn flops_match_published_resnet_figures() {
    let flops = |cfg: TsmConfig, side| {
        // one frame per clip: the shift ratio PP-TSM would take (1 / num_seg) is out of range
        let cfg = TsmConfig {
            shift_ratio: Some(0.125),
            ..cfg
        };
        let m = Tsm::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
        m.flops_per_clip(side, side).unwrap()
    };
    // ResNet-50-vd: ~4.3 G multiply-adds per 224x224 frame (torchvision's ResNet-50: 4.1 G,
    // the vd stem and shortcuts add ~0.2 G); ResNet-18-vd: ~2.0 G (ResNet-18: 1.8 G).
    let per_frame = |cfg: TsmConfig| flops(cfg.with_num_seg(1), 224) as f64 / 2e9;
    let r50 = per_frame(TsmConfig::pptsm_r50(0));
    assert!((4.2..4.5).contains(&r50), "{r50}");
    let r18 = per_frame(TsmConfig::pptsm_r18(0));
    assert!((1.8..2.2).contains(&r18), "{r18}");
    let eight = flops(TsmConfig::pptsm_r50(400), 224);
    let one = flops(TsmConfig::pptsm_r50(400).with_num_seg(1), 224);
    assert_eq!(eight - 2 * 2048 * 400, 8 * (one - 2 * 2048 * 400));
    // odd sides round up through the ceil-mode shortcut pools as the convs do
    assert!(
        flops(TsmConfig::pptsm_r50(0).with_num_seg(1), 225)
            > flops(TsmConfig::pptsm_r50(0).with_num_seg(1), 224)
    );
}

/// `n` generated clips of `t` frames at `s x s`, normalised as the pipelines do: each a
/// colour grating of its own orientation, frequency and phase drifting over the frames, with
/// noise, so that clips differ in content and in motion.
fn generated_clips(n: usize, t: usize, s: usize) -> Tensor {
    use rand::Rng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let dev = &Device::Cpu;
    let ramp = (Tensor::arange(0f32, s as f32, dev).unwrap() / s as f64).unwrap();
    let (u, v) = (
        ramp.reshape((1, 1, s)).unwrap(),
        ramp.reshape((1, s, 1)).unwrap(),
    );
    let frames = Tensor::arange(0f32, t as f32, dev)
        .unwrap()
        .reshape((t, 1, 1))
        .unwrap();
    let clips: Vec<Tensor> = (0..n)
        .map(|_| {
            let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let freq: f32 = rng.random_range(1.0..8.0);
            let speed: f64 = rng.random_range(-0.5..0.5);
            let colour: Vec<f32> = (0..3).map(|_| rng.random_range(-1.5..1.5)).collect();
            let (dx, dy) = (
                f64::from(angle.cos() * freq) * std::f64::consts::TAU,
                f64::from(angle.sin() * freq) * std::f64::consts::TAU,
            );
            // [t, s, s]: sin(2 pi (dx u + dy v) + speed * frame)
            let phase = (u
                .affine(dx, 0.0)
                .unwrap()
                .broadcast_add(&v.affine(dy, 0.0).unwrap()))
            .unwrap()
            .broadcast_add(&frames.affine(speed, 0.0).unwrap())
            .unwrap();
            let colour = Tensor::from_vec(colour, (1, 3, 1, 1), dev).unwrap();
            let wave = phase.sin().unwrap().unsqueeze(1).unwrap();
            let noise: Vec<f32> = (0..t * 3 * s * s)
                .map(|_| rng.random_range(-0.3..0.3))
                .collect();
            let noise = Tensor::from_vec(noise, (t, 3, s, s), dev).unwrap();
            (wave.broadcast_mul(&colour).unwrap() + noise).unwrap()
        })
        .collect();
    Tensor::stack(&clips, 0).unwrap()
}

/// bf16 inference on the CPU (AVX-512 BF16; elsewhere the error names the missing
/// instructions): PP-TSM R50's logits within 1e-2 relative L2 of f32's on every clip of a
/// generated set, and the same top-1 class on at least 99 % of them.
#[test]
fn bf16_on_the_cpu_keeps_the_logits_and_the_top1() {
    let (m, _) = random_model(&TsmConfig::pptsm_r50(101));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    m.save(&path).unwrap();
    let bf16 = Tsm::load_with_dtype(&path, DType::BF16, &Device::Cpu).unwrap();
    if let Some(needs) = tsm_model::missing_cpu_bf16_features() {
        let e = bf16.fuse_for_inference().unwrap_err().to_string();
        assert!(e.contains(needs) && e.contains("run in f32"), "{e}");
        return;
    }
    let (f32_model, bf16) = (
        m.fuse_for_inference().unwrap(),
        bf16.fuse_for_inference().unwrap(),
    );
    let (clips_n, batch) = (100, 10);
    let clips = generated_clips(clips_n, 8, 160);
    let (mut worst, mut same_top1) = (0f32, 0);
    let (mut all_want, mut all_got) = (Vec::new(), Vec::new());
    for start in (0..clips_n).step_by(batch) {
        let x = clips.narrow(0, start, batch).unwrap();
        let want = f32_model.forward(&x).unwrap();
        let got = bf16
            .forward(&x.to_dtype(DType::BF16).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        for i in 0..batch {
            let (w, g) = (want.get(i).unwrap(), got.get(i).unwrap());
            worst = worst.max(rel(&g, &w));
            let top1 = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            same_top1 += usize::from(top1(&w) == top1(&g));
        }
        all_want.push(want);
        all_got.push(got);
    }
    let set = rel(
        &Tensor::cat(&all_got, 0).unwrap(),
        &Tensor::cat(&all_want, 0).unwrap(),
    );
    eprintln!(
        "bf16 vs f32 on {clips_n} clips: logits rel L2 {set:.2e} (worst clip {worst:.2e}), \
         same top-1 on {same_top1}"
    );
    assert!(set <= 1e-2, "rel L2 {set}");
    assert!(
        same_top1 * 100 >= 99 * clips_n,
        "same top-1 on {same_top1} of {clips_n}"
    );
}

/// Mixed-precision training (bf16 conv products, everything else f32) against f32, on R18
/// from PaddleVideo's initialisation: the loss and the gradients of one step, then the losses
/// of ten SGD steps on one batch; on a CPU without the instructions, the one-line error.
#[test]
fn bf16_products_train_as_f32_does() {
    let cfg = TsmConfig {
        dropout: 0.0,
        ..TsmConfig::pptsm_r18(10).with_num_seg(4)
    };
    let model = |products| {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let m = Tsm::new(&cfg, vb).unwrap();
        m.init_weights(|i| rand_chacha::ChaCha8Rng::seed_from_u64(i as u64))
            .unwrap();
        m.with_product_precision(products)
    };
    let bf16 = match (
        model(ProductPrecision::Bf16),
        tsm_model::missing_cpu_bf16_features(),
    ) {
        (Err(e), Some(_)) => {
            let e = e.to_string();
            assert!(
                e.contains("avx512_bf16") && e.contains("train in f32"),
                "{e}"
            );
            return;
        }
        (Ok(m), None) => m,
        (r, needs) => panic!("{:?} with missing features {needs:?}", r.err()),
    };
    assert_eq!(bf16.product_precision(), ProductPrecision::Bf16);
    let f32_model = model(ProductPrecision::F32).unwrap();
    let x = generated_clips(2, 4, 64);
    let labels = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
    let gradients = |m: &Tsm| {
        let logits = m.forward_t(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let flat = |m: &Tsm, grads: &candle_core::backprop::GradStore| {
        let each: Vec<Tensor> = m
            .trainable_vars()
            .unwrap()
            .iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap())
            .collect();
        Tensor::cat(&each, 0).unwrap()
    };
    let (loss32, g32) = gradients(&f32_model);
    let (loss16, g16) = gradients(&bf16);
    let grad_err = rel(&flat(&bf16, &g16), &flat(&f32_model, &g32));
    // bf16 rounds each conv's operands (relative 2^-9); a ResNet's gradients are sensitive to
    // that much: a 1e-3 relative perturbation of the input alone moves these by about 9 %
    assert!(
        (loss16 - loss32).abs() <= 5e-3 * loss32,
        "loss {loss16} vs {loss32}"
    );
    assert!(grad_err <= 0.3, "gradients rel L2 {grad_err}");
    let train = |m: &Tsm| {
        let mut opt = SGD::new(m.trainable_vars().unwrap(), 0.05).unwrap();
        (0..10)
            .map(|_| {
                let (loss, grads) = gradients(m);
                opt.step(&grads).unwrap();
                loss
            })
            .collect::<Vec<f32>>()
    };
    let (curve32, curve16) = (train(&f32_model), train(&bf16));
    eprintln!(
        "bf16 products: one step's gradients rel L2 {grad_err:.2e}; ten steps' losses f32 \
         {curve32:.3?}, bf16 {curve16:.3?}"
    );
    let (last32, last16) = (curve32[9], curve16[9]);
    assert!(last32 < 0.5 * curve32[0], "f32 does not learn: {curve32:?}");
    assert!(
        (last16 - last32).abs() <= 0.1 * last32.max(0.05),
        "bf16 {curve16:?} against f32 {curve32:?}"
    );
}
