//! `tsm-cli export` against the engines that serve its output: PaddleVideo's random-weight
//! models (tests/reference/paddle_model.py) converted, exported at their clip size, and run by
//! ONNX Runtime and OpenVINO (tests/export/run_engines.py, in the reference venv) on batches
//! of 1 and 3 clips; their logits must match ours and Paddle's. Also the command's errors.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use paddle_weights::{convert_file, ConvertOptions};
use serde_json::Value;
use tsm_model::{Tsm, ONNX_OPERATORS};

/// Relative L2 error allowed between ONNX Runtime and us (the same fp32 arithmetic, in
/// another order: BN folded, convolution algorithms differ).
const TOL_OURS: f32 = 1e-5;
/// ... between either engine and PaddleVideo, and between OpenVINO and us.
const TOL: f32 = 1e-4;

fn tsm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// The workspace root of this checkout.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference venv's python (`cargo xtask test` builds it).
fn python() -> PathBuf {
    let p = root().join("target/pyref-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask test` (it builds the reference venv)",
        p.display()
    );
    p
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Converts Paddle's `case`, exports it, runs both engines on its first clip and on all three
/// and compares logits; checks what the graph and its metadata say.
fn check(case: &str) {
    let refs = test_support::reference_dir("paddle_model");
    let meta = test_support::read_json(&refs.join(format!("{case}.json")));
    let want = test_support::read_safetensors(&refs.join(meta["outputs"].as_str().unwrap()));
    let size = meta["size"].as_u64().unwrap() as usize;
    let num_seg = meta["num_seg"].as_u64().unwrap() as usize;
    let dir = test_support::fresh_test_dir!(format!("export_{case}"));
    let weights = dir.join("model.safetensors");
    let pdparams = refs.join(meta["pdparams"][0].as_str().unwrap());
    let opts = ConvertOptions {
        num_seg,
        ..Default::default()
    };
    convert_file(&pdparams, &weights, &opts).unwrap();
    let k = want["logits"].shape[1];
    let names: Vec<String> = (0..k).map(|i| format!("class {i}")).collect();
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, names.join("\n")).unwrap();
    let onnx = dir.join("model.onnx");
    let crop = size.to_string();
    let out = tsm(&[
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
        "--crop-size",
        &crop,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let clips = &want["clips"];
    let clips = Tensor::from_vec(clips.data.clone(), clips.shape.clone(), &Device::Cpu).unwrap();
    let batches = BTreeMap::from([
        ("b1".to_string(), clips.narrow(0, 0, 1).unwrap()),
        ("b3".to_string(), clips.clone()),
    ]);
    let inputs = dir.join("inputs.safetensors");
    let named: Vec<(String, Tensor)> = batches.clone().into_iter().collect();
    tsm_model::write_safetensors(&inputs, &named, &BTreeMap::new()).unwrap();
    let prefix = dir.join("engines");
    let script = root().join("tests/export/run_engines.py");
    let run = Command::new(python())
        .arg(&script)
        .args([&onnx, &inputs, &prefix])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{case}: {} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let engines = test_support::read_safetensors(&prefix.with_extension("safetensors"));
    let report = test_support::read_json(&prefix.with_extension("json"));

    let model = Tsm::load(&weights, &Device::Cpu).unwrap();
    let paddle = &want["logits"];
    let mut msg = format!("{case}:");
    for (name, x) in &batches {
        let ours = flat(&model.forward(x).unwrap());
        let n = x.dims()[0];
        let paddle = &paddle.data[..n * k];
        for engine in ["ort", "openvino"] {
            let got = &engines[&format!("{engine}.{name}")];
            assert_eq!(got.shape, [n, k], "{case} {engine} {name}");
            let e_ours = test_support::rel_l2(&got.data, &ours);
            let e_paddle = test_support::rel_l2(&got.data, paddle);
            msg += &format!(" {engine} {name}: vs ours {e_ours:.1e}, vs Paddle {e_paddle:.1e};");
            let tol_ours = if engine == "ort" { TOL_OURS } else { TOL };
            assert!(e_ours <= tol_ours && e_paddle <= TOL, "{msg}");
        }
    }
    eprintln!("{msg}");

    assert_eq!(report["openvino_precision"], "f32", "{report}");
    assert_eq!(report["opset"], serde_json::json!([17]), "{report}");
    let input = serde_json::json!({"clips": ["batch", num_seg, 3, size, size]});
    assert_eq!(report["inputs"], input, "{report}");
    assert_eq!(
        report["outputs"],
        serde_json::json!({"logits": ["batch", k]})
    );
    for op in report["operators"].as_array().unwrap() {
        let op = op.as_str().unwrap();
        assert!(ONNX_OPERATORS.contains(&op), "{case}: operator {op}");
    }
    let props = &report["metadata"];
    let cfg: Value = serde_json::from_str(props["tsm_config"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["depth"], meta["depth"]);
    assert_eq!(cfg["num_seg"], meta["num_seg"]);
    assert_eq!(props["input_size"], format!("[{size}, {size}]"));
    let mean: Vec<f32> = serde_json::from_str(props["mean"].as_str().unwrap()).unwrap();
    assert_eq!(mean, [0.485, 0.456, 0.406]);
    let sampling: Value = serde_json::from_str(props["sampling"].as_str().unwrap()).unwrap();
    assert_eq!(
        sampling["segments"]["num_seg"], meta["num_seg"],
        "{sampling}"
    );
    let stored: Vec<String> = serde_json::from_str(props["labels"].as_str().unwrap()).unwrap();
    assert_eq!(stored, names);
}

#[test]
fn r18_t8_odd_size_matches_ours_and_paddle() {
    check("r18_t8_s33");
}

#[test]
fn r18_t16_matches_ours_and_paddle() {
    check("r18_t16_s32");
}

#[test]
fn r50_t8_matches_ours_and_paddle() {
    check("r50_t8_s32");
}

#[test]
fn r50_t16_odd_size_matches_ours_and_paddle() {
    check("r50_t16_s35");
}

/// A small random checkpoint (R18, 2 frames, 3 classes), written once per test.
fn small_checkpoint(dir: &Path) -> PathBuf {
    use candle_nn::{VarBuilder, VarMap};
    let cfg = tsm_model::TsmConfig::pptsm_r18(3).with_num_seg(2);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    let path = dir.join("small.safetensors");
    Tsm::new(&cfg, vb).unwrap().save(&path).unwrap();
    path
}

/// Exit status 1, one line on stderr containing every needle, and `out` untouched with no
/// temporary file left beside it.
fn check_export_error(args: &[&str], out: &Path, needles: &[&str]) {
    let before = std::fs::read(out).ok();
    let res = tsm(args);
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` missing from: {err}");
    }
    assert_eq!(
        std::fs::read(out).ok(),
        before,
        "{args:?} changed {}",
        out.display()
    );
    if let Some(dir) = out.parent().filter(|d| d.is_dir()) {
        for e in std::fs::read_dir(dir).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().ends_with(".part"),
                "{args:?} left {name:?} behind"
            );
        }
    }
}

#[test]
fn export_errors_name_the_file_and_leave_nothing_half_written() {
    let dir = test_support::fresh_test_dir!("export_errors");
    let weights = small_checkpoint(&dir);
    let w = weights.to_str().unwrap();
    let out = dir.join("model.onnx");
    let o = out.to_str().unwrap();

    // a safetensors file without the model config
    let bare = dir.join("bare.safetensors");
    let t = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    tsm_model::write_safetensors(&bare, &[("x".into(), t)], &BTreeMap::new()).unwrap();
    let b = bare.to_str().unwrap();
    check_export_error(
        &["export", "--weights", b, "--out", o],
        &out,
        &[b, "tsm_config"],
    );

    // an unknown opset, with an earlier export in place that must survive
    std::fs::write(&out, b"an earlier export").unwrap();
    check_export_error(
        &["export", "--weights", w, "--out", o, "--opset", "99"],
        &out,
        &[w, o, "opset 99", "13 to 21"],
    );

    // a folder that does not exist, and a path under a regular file
    let missing = dir.join("no/such/dir/model.onnx");
    let m = missing.to_str().unwrap();
    check_export_error(&["export", "--weights", w, "--out", m], &missing, &[m]);
    let under_file = dir.join("model.onnx/inner.onnx");
    let u = under_file.to_str().unwrap();
    check_export_error(&["export", "--weights", w, "--out", u], &under_file, &[u]);
    // the output is an existing folder: the rename fails and the temporary file goes
    let folder = dir.join("a_folder");
    std::fs::create_dir(&folder).unwrap();
    check_export_error(
        &["export", "--weights", w, "--out", folder.to_str().unwrap()],
        &folder.join("x"),
        &[folder.to_str().unwrap()],
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // and a good export replaces the earlier file
    let ok = tsm(&["export", "--weights", w, "--out", o, "--opset", "13"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_ne!(std::fs::read(&out).unwrap(), b"an earlier export");
}
