//! Two training steps against PaddleVideo (tests/reference/paddle_train.py): same weights, same
//! mixed batch, label smoothing, Nesterov momentum with PP-TSM's per-parameter decay and
//! learning-rate multipliers, warmup-cosine schedule.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use augment::{Mixup, MixupChoice};
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use paddle_weights::{convert, read_pdparams, ConvertOptions};
use train_loop::loss::train_loss;
use train_loop::optim::{Momentum, WarmupCosine};
use train_loop::{LrConfig, OptimizerConfig};
use tsm_model::{Tsm, TsmConfig};

fn converted(path: &std::path::Path, num_seg: usize) -> HashMap<String, Tensor> {
    let arrays = read_pdparams(path).unwrap();
    let opts = ConvertOptions {
        num_seg,
        ..ConvertOptions::default()
    };
    convert(&arrays, &opts).unwrap().0.into_iter().collect()
}

#[test]
fn two_steps_match_paddle() {
    let dir = test_support::reference_dir("paddle_train");
    let case = test_support::read_json(&dir.join("case.json"));
    let get = |k: &str| case[k].as_f64().unwrap();
    let num_seg = get("num_seg") as usize;
    let cfg = TsmConfig {
        dropout: 0.0,
        ..TsmConfig::pptsm(get("depth") as usize, get("num_classes") as usize).with_num_seg(num_seg)
    };

    let varmap = VarMap::new();
    let model = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let before = converted(&dir.join("before.pdparams"), num_seg);
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&before[name]).unwrap();
    }

    let batch = test_support::read_safetensors(&dir.join("batch.safetensors"));
    let labels: Vec<u32> = batch["labels"].data.iter().map(|&l| l as u32).collect();
    let choice = MixupChoice {
        lam: get("lam") as f32,
        perm: case["perm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as usize)
            .collect(),
    };
    let mixed = Mixup::default()
        .apply(&batch["clips"].data, &labels, &choice)
        .unwrap();
    let x = Tensor::from_vec(mixed.data, batch["clips"].shape.clone(), &Device::Cpu).unwrap();

    let s = &case["schedule"];
    let lr_cfg = LrConfig {
        warmup_start_lr: s["warmup_start_lr"].as_f64().unwrap(),
        warmup_epochs: s["warmup_epochs"].as_f64().unwrap(),
        cosine_base_lr: s["cosine_base_lr"].as_f64().unwrap(),
        max_epoch: None,
        iter_step: true,
    };
    let mut schedule = WarmupCosine::new(
        &lr_cfg,
        s["max_epoch"].as_f64().unwrap(),
        s["num_iters"].as_u64().unwrap() as usize,
    );
    let mut opt = Momentum::new(model.params(), &OptimizerConfig::default()).unwrap();
    let eps = get("eps");
    for (step, (paddle_loss, paddle_lr)) in case["losses"]
        .as_array()
        .unwrap()
        .iter()
        .zip(case["lrs"].as_array().unwrap())
        .enumerate()
    {
        let logits = model.forward_t(&x, true).unwrap();
        let loss = train_loss(
            &logits,
            &mixed.labels,
            Some((&mixed.permuted_labels, mixed.lam)),
            eps,
        )
        .unwrap();
        let ours = loss.to_scalar::<f32>().unwrap() as f64;
        let theirs = paddle_loss.as_f64().unwrap();
        let rel = (ours - theirs).abs() / theirs.abs();
        println!("step {step}: loss {ours} vs paddle {theirs} (rel {rel:.2e})");
        assert!(rel < 1e-5, "step {step}: loss {ours} vs {theirs}");
        let lr = schedule.lr();
        let theirs_lr = paddle_lr.as_f64().unwrap();
        assert!(
            (lr - theirs_lr).abs() <= 1e-12 * theirs_lr.abs(),
            "lr {lr} vs {theirs_lr}"
        );
        let grads = loss.backward().unwrap();
        opt.step(&grads, lr).unwrap();
        schedule.step();
    }

    let after = converted(&dir.join("after.pdparams"), num_seg);
    let ours: HashMap<String, Tensor> = model
        .params()
        .into_iter()
        .map(|p| (p.name, p.tensor))
        .collect();
    assert_eq!(ours.len(), after.len());
    let mut worst = (0f32, String::new());
    for (name, theirs) in &after {
        let moved = test_support::rel_l2(theirs, &before[name]);
        let rel = test_support::rel_l2(&ours[name], theirs);
        if rel > worst.0 {
            worst = (rel, format!("{name} (moved {moved:.2e})"));
        }
        assert!(
            rel < 1e-4,
            "{name}: relative error {rel:.2e} (it moved {moved:.2e})"
        );
    }
    println!("worst parameter/statistic: {} at {:.2e}", worst.1, worst.0);
}
