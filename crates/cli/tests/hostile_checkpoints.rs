//! `--weights` (and `info`'s checkpoint) are untrusted input: a checkpoint whose `tsm_config`
//! asks for 10^12 frames or a billion classes, and a file that is not safetensors at all (a
//! video, a `.pdparams` pickle, text), stop `info`, `predict` and `eval` with exit status 1
//! and one line naming the file and what is wrong: no abort on a huge allocation, no model
//! described by `info` that `predict` would then refuse.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{s, text, tsm};
use tsm_model::{Tsm, TsmConfig, CONFIG_METADATA_KEY};

/// A video the commands would classify if the weights were good.
fn video() -> PathBuf {
    test_support::media("carphone_distorted.mp4")
}

/// `predict`, `eval` and `info` of `weights`, each expected to exit 1 with one line on stderr
/// naming `weights` and containing every one of `needles`; returns the `info` and `predict`
/// lines.
fn check_refused(dir: &Path, weights: &Path, needles: &[&str]) -> (String, String) {
    let list = dir.join("list.txt");
    let video = video();
    std::fs::write(&list, format!("{} 0\n", video.display())).unwrap();
    let runs = [
        vec!["info", s(weights)],
        vec!["predict", "--weights", s(weights), s(&video)],
        vec!["eval", "--weights", s(weights), "--list", s(&list)],
    ];
    let mut lines = Vec::new();
    for args in &runs {
        let out = tsm(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.starts_with("tsm-cli: error: "), "{err}");
        assert!(err.contains(s(weights)), "{args:?}: file not named: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{n}` missing from: {err}");
        }
        lines.push(err);
    }
    (lines[0].clone(), lines[1].clone())
}

/// The tensors of a 4-class ResNet-18 written with `config_json` (as is, so any value can be
/// put there) as its `tsm_config`.
fn checkpoint_with_config(path: &Path, config_json: &str) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Tsm::new(&TsmConfig::pptsm_r18(4).with_num_seg(4), vb).unwrap();
    let tensors: Vec<_> = model
        .params()
        .into_iter()
        .map(|p| (p.name, p.tensor))
        .collect();
    let meta: BTreeMap<String, String> = [(CONFIG_METADATA_KEY.to_string(), config_json.into())]
        .into_iter()
        .collect();
    tsm_model::write_safetensors(path, &tensors, &meta).unwrap();
}

#[test]
fn a_hostile_config_is_refused_by_info_as_by_predict_and_eval() {
    let dir = test_support::fresh_test_dir!("hostile-config");
    for (name, json, needle) in [
        (
            "frames.safetensors",
            r#"{"depth":18,"num_seg":1000000000000,"num_classes":4}"#,
            "num_seg 1000000000000 is outside 1..=256",
        ),
        (
            "classes.safetensors",
            r#"{"depth":18,"num_seg":4,"num_classes":1000000000}"#,
            "num_classes 1000000000 is outside 0..=100000",
        ),
        (
            "depth.safetensors",
            r#"{"depth":19,"num_seg":4,"num_classes":4}"#,
            "depth 19 is not one of 18, 34, 50, 101, 152",
        ),
    ] {
        let weights = dir.join(name);
        checkpoint_with_config(&weights, json);
        let (info, predict) = check_refused(&dir, &weights, &["invalid `tsm_config`", needle]);
        assert_eq!(info, predict, "info and predict refuse differently");
    }
}

#[test]
fn a_file_that_is_not_safetensors_is_named_as_such() {
    let dir = test_support::fresh_test_dir!("not-safetensors");
    let text_file = dir.join("notes.txt");
    std::fs::write(&text_file, "these are not weights\n").unwrap();
    let pickle = dir.join("model.pdparams");
    std::fs::write(
        &pickle,
        b"\x80\x02}q\x00(X\x0b\x00\x00\x00conv1.weightq\x01cnumpy".repeat(20),
    )
    .unwrap();
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    for weights in [video(), text_file, pickle, empty] {
        check_refused(&dir, &weights, &["not a tsm-rs checkpoint (safetensors)"]);
    }
}

#[test]
fn a_backbone_without_head_is_described_by_info_and_refused_by_predict() {
    let dir = test_support::fresh_test_dir!("headless");
    let weights = dir.join("backbone.safetensors");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = TsmConfig::pptsm_r18(0).with_num_seg(4);
    Tsm::new(&cfg, vb).unwrap().save(&weights).unwrap();

    let out = tsm(&["info", s(&weights)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("no head (features only)"), "{stdout}");
    assert!(stdout.contains("classes:       0 (a backbone"), "{stdout}");

    let out = tsm(&["predict", "--weights", s(&weights), s(&video())]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(s(&weights)), "{err}");
    assert!(err.contains("cannot classify"), "{err}");
}
