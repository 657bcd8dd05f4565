//! Losses, accuracies, the schedule and the optimizer's per-parameter rules on hand-computed
//! cases.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use train_loop::loss::{cross_entropy, distill_loss, smoothed_targets, topk_accuracy, train_loss};
use train_loop::optim::{param_attributes, Momentum, WarmupCosine};
use train_loop::{LrConfig, OptimizerConfig};
use train_loop::{TrainConfig, Trainer};
use tsm_model::{ParamRole, Tsm};

fn t(v: &[f32], rows: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-6 * b.abs().max(1.0), "{a} vs {b}");
}

#[test]
fn losses_and_accuracy() {
    let s = smoothed_targets(&[1], 4, 0.1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (got, want) in s[0].iter().zip([0.025, 0.925, 0.025, 0.025]) {
        close(f64::from(*got), want);
    }
    let ce = |logits: &Tensor, l: &[u32], eps| {
        f64::from(
            cross_entropy(logits, l, eps)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    close(ce(&t(&[0.0, 0.0], 1), &[0], 0.0), 2f64.ln());
    // smoothing: (1 - eps) * CE + eps * mean over classes of -log p
    let l = t(&[1.0, 3.0, 2.0], 1);
    let logp: Vec<f64> = {
        let z: f64 = [1f64, 3.0, 2.0].iter().map(|v| v.exp()).sum();
        [1f64, 3.0, 2.0].iter().map(|v| v - z.ln()).collect()
    };
    let want = -(0.9 * logp[0] + 0.1 / 3.0 * logp.iter().sum::<f64>());
    close(ce(&l, &[0], 0.1), want);
    // mixup weights the two label sets
    let mixed = train_loss(&l, &[0], Some((&[1], 0.25)), 0.0).unwrap();
    close(
        f64::from(mixed.to_scalar::<f32>().unwrap()),
        -(0.25 * logp[0] + 0.75 * logp[1]),
    );
    let acc = topk_accuracy(&t(&[1.0, 3.0, 2.0, 5.0, 0.0, 0.0], 2), &[2, 0], &[1, 2]).unwrap();
    assert_eq!(acc, vec![0.5, 1.0]);
    // distillation against itself: T^2 times the entropy of the softened distribution
    let d = distill_loss(&l, &l, 2.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let p: Vec<f64> = {
        let e: Vec<f64> = [0.5f64, 1.5, 1.0].iter().map(|v| v.exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    close(
        f64::from(d),
        4.0 * -p.iter().map(|q| q * q.ln()).sum::<f64>(),
    );
}

#[test]
fn warmup_cosine_follows_paddlevideo() {
    let cfg = LrConfig {
        warmup_start_lr: 0.0005,
        warmup_epochs: 5.0,
        cosine_base_lr: 0.001,
        max_epoch: None,
        iter_step: true,
    };
    let cosine = |e: f64| 0.001 * ((std::f64::consts::PI * e / 30.0).cos() + 1.0) * 0.5;
    let mut s = WarmupCosine::new(&cfg, 30.0, 4);
    close(s.lr(), 0.0005);
    for _ in 0..10 {
        s.step();
    }
    close(s.position(), 2.5);
    close(s.lr(), 0.0005 + 2.5 * (cosine(5.0) - 0.0005) / 5.0);
    for _ in 0..30 {
        s.step();
    }
    close(s.lr(), cosine(10.0));
}

#[test]
fn per_parameter_rules() {
    let c = OptimizerConfig::default();
    assert_eq!(param_attributes(ParamRole::BnScale, &c), (0.0, 1.0));
    assert_eq!(param_attributes(ParamRole::BnShift, &c), (0.0, 1.0));
    assert_eq!(param_attributes(ParamRole::ConvWeight, &c), (1e-4, 1.0));
    assert_eq!(param_attributes(ParamRole::FcWeight, &c), (1e-4, 5.0));
    assert_eq!(param_attributes(ParamRole::FcBias, &c), (0.0, 10.0));
    // the optimizer takes a model's trainable tensors with their rules, by name
    let cfg = tsm_model::TsmConfig::pptsm_r18(3).with_num_seg(2);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Tsm::new(&cfg, vb).unwrap();
    let opt = Momentum::new(model.params(), &c).unwrap();
    let ps = opt.params();
    assert_eq!(ps.len(), varmap.all_vars().len() - 2 * (3 + 16 + 4));
    assert!(ps.windows(2).all(|w| w[0].name < w[1].name));
    let lr_mults: Vec<f64> = ps.iter().map(|p| p.lr_mult).filter(|&m| m != 1.0).collect();
    assert_eq!(lr_mults, [10.0, 5.0]); // head.fc.bias, head.fc.weight
}

/// The velocities the optimizer keeps are plain values: a velocity that recorded the ops that
/// made it would keep every step's graph (forward pass included) alive, step after step.
#[test]
fn velocities_hold_no_graph() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let w = vb
        .get_with_hints(3, "layer.weight", candle_nn::Init::Const(1.0))
        .unwrap();
    let weight = tsm_model::Param {
        name: "layer.weight".into(),
        role: ParamRole::ConvWeight,
        tensor: w.clone(),
    };
    let mut opt = Momentum::new(vec![weight], &OptimizerConfig::default()).unwrap();
    let x = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    for _ in 0..2 {
        let loss = (w.clone() * &x).unwrap().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 0.1).unwrap();
        for (name, v) in opt.velocities() {
            assert!(!v.track_op(), "{name}'s velocity records its ops");
        }
    }
}

/// The student's fc bias margin of the last class over the others after a short run, with the
/// extra config lines `extra`.
fn last_class_margin(dir: &std::path::Path, name: &str, extra: &str) -> f32 {
    let train = common::tiny_videos(dir, "train", 6, 3);
    let valid = common::tiny_videos(dir, "valid", 3, 3);
    let toml = common::tiny_config(&train, &valid, &dir.join(name), 4) + extra;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let cfg = TrainConfig::load(&path, &[]).unwrap();
    let mut trainer = Trainer::new(cfg, false).unwrap();
    trainer.run().unwrap();
    let bias = trainer
        .model()
        .params()
        .into_iter()
        .find(|p| p.role == ParamRole::FcBias)
        .unwrap();
    let b = bias.tensor.to_vec1::<f32>().unwrap();
    b[2] - b[0].max(b[1])
}

/// Distillation end to end: a teacher that always favours the last class (fc bias +10) pulls a
/// student trained on the soft loss alone (`distill.weight = 1`) towards that class, although
/// the labels are balanced; the same run without the teacher stays near even.
#[test]
fn a_teacher_pulls_the_student_towards_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let train = common::tiny_videos(dir.path(), "train", 6, 3);
    let cfg = TrainConfig::load(
        &{
            let p = dir.path().join("probe.toml");
            let toml = common::tiny_config(&train, &train, &dir.path().join("probe"), 1);
            std::fs::write(&p, toml).unwrap();
            p
        },
        &[],
    )
    .unwrap();
    let varmap = VarMap::new();
    let teacher = Tsm::new(
        &cfg.model.arch,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let fc_bias = teacher
        .params()
        .into_iter()
        .find(|p| p.role == ParamRole::FcBias);
    fc_bias
        .unwrap()
        .var()
        .unwrap()
        .set(&Tensor::new(&[0f32, 0.0, 10.0], &Device::Cpu).unwrap())
        .unwrap();
    let teacher_path = dir.path().join("teacher.safetensors");
    teacher.save(&teacher_path).unwrap();

    let alone = last_class_margin(dir.path(), "alone", "");
    let distill = format!(
        "\n[distill]\nteacher = {:?}\ntemperature = 1.0\nweight = 1.0\n",
        teacher_path.display().to_string()
    );
    let taught = last_class_margin(dir.path(), "taught", &distill);
    println!("last-class fc bias margin: {alone} alone, {taught} taught");
    assert!(taught > alone + 0.5, "{taught} vs {alone}");
}
