//! The shipped configs, overrides and error messages.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use augment::PipelineConfig;
use train_loop::{Error, TrainConfig};

fn asset(name: &str) -> std::path::PathBuf {
    test_support::project_root()
        .join("assets/configs")
        .join(name)
}

fn load(name: &str, overrides: &[&str]) -> Result<TrainConfig, Error> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&asset(name), &o)
}

#[test]
fn shipped_configs_are_the_recipes() {
    let t = load("pptsm_ucf101_tutorial.toml", &[]).unwrap();
    assert_eq!(t.data.train_pipeline, PipelineConfig::tutorial_train());
    assert_eq!(t.data.valid_pipeline, PipelineConfig::tutorial_valid());
    assert_eq!(
        (t.train.epochs, t.data.batch_size, t.model.num_classes),
        (30, 16, 101)
    );
    assert_eq!((t.lr.warmup_start_lr, t.lr.cosine_base_lr), (0.0005, 0.001));
    assert_eq!(
        (t.train.label_smoothing, t.train.mixup_alpha),
        (0.1, Some(0.2))
    );
    assert!(t.lr.iter_step && t.precise_bn.enabled && t.optimizer.nesterov);

    let k = load("pptsm_k400_frames_uniform.toml", &[]).unwrap();
    assert_eq!(k.data.train_pipeline, PipelineConfig::k400_train());
    assert_eq!(k.data.valid_pipeline, PipelineConfig::k400_valid());
    assert_eq!(
        (k.train.epochs, k.lr.warmup_epochs, k.lr.cosine_base_lr),
        (80, 10.0, 0.01)
    );

    // the resolved config round-trips through TOML
    let again = TrainConfig::from_toml_str(&t.to_toml().unwrap(), Path::new("x"), &[]).unwrap();
    assert_eq!(again, t);
}

#[test]
fn overrides_set_values_and_name_bad_keys() {
    let c = load(
        "pptsm_ucf101_tutorial.toml",
        &[
            "train.epochs=3",
            "lr.cosine_base_lr = 0.01",
            "output.dir=runs/x",
            "data.list.suffix=.mp4",
            "distill.teacher=teacher.safetensors",
        ],
    )
    .unwrap();
    assert_eq!(c.train.epochs, 3);
    assert_eq!(c.lr.cosine_base_lr, 0.01);
    assert_eq!(c.output.dir, Path::new("runs/x"));
    assert_eq!(c.data.list.suffix, ".mp4");
    assert_eq!(c.distill.unwrap().temperature, 1.0);

    let msg = |o: &str| {
        load("pptsm_ucf101_tutorial.toml", &[o])
            .unwrap_err()
            .to_string()
    };
    let m = msg("train.epocs=3");
    assert!(
        m.contains("train.epocs") && m.contains("unknown field"),
        "{m}"
    );
    let m = msg("train.epochs=many");
    assert!(m.contains("train.epochs"), "{m}");
    let m = msg("optimizer.momentum=1.5");
    assert!(m.contains("momentum"), "{m}");
    let m = msg("noequals");
    assert!(m.contains("noequals"), "{m}");
}

#[test]
fn file_errors_name_the_key() {
    let text = std::fs::read_to_string(asset("pptsm_ucf101_tutorial.toml")).unwrap();
    let bad = text.replace("[train]\n", "[train]\nbogus = 1\n");
    let e = TrainConfig::from_toml_str(&bad, Path::new("my.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("my.toml") && e.contains("bogus"), "{e}");
}
