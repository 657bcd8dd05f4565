//! The `convert-weights` command as a user runs it (through `cargo xtask convert-weights`):
//! converts a real Paddle file, inspects it, and refuses a hostile one with a one-line error.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn convert_weights() -> Command {
    Command::new(env!("CARGO_BIN_EXE_convert-weights"))
}

#[test]
fn converts_inspects_and_refuses_hostile_files() {
    let dir = test_support::reference_dir("paddle_model");
    let input = dir.join("r18_t16_s100.pdparams");
    let out_dir = tempfile::tempdir().unwrap();
    let output = out_dir.path().join("r18.safetensors");

    let run = convert_weights()
        .arg(&input)
        .arg(&output)
        .args(["--num-seg", "16"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let model = tsm_model::Tsm::load(&output, &candle_core::Device::Cpu).unwrap();
    assert_eq!((model.config().depth, model.config().num_seg), (18, 16));

    // the output as `-o`, as assets/configs/pptsm_ucf101_tutorial.toml shows it
    let with_flag = out_dir.path().join("r18_o.safetensors");
    let run = convert_weights()
        .arg(&input)
        .arg("-o")
        .arg(&with_flag)
        .args(["--num-seg", "16"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(&with_flag).unwrap(),
        std::fs::read(&output).unwrap()
    );

    let inspect = convert_weights()
        .arg(&input)
        .arg("--inspect")
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let listing = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        listing.contains("backbone.conv1_1._conv.weight"),
        "{listing}"
    );

    // A pickle that calls os.system: protocol 2, GLOBAL 'os system', then REDUCE.
    let hostile = out_dir.path().join("evil.pdparams");
    std::fs::write(
        &hostile,
        b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.",
    )
    .unwrap();
    let refused = convert_weights()
        .arg(&hostile)
        .arg(out_dir.path().join("x.safetensors"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("evil.pdparams") && err.contains("os"), "{err}");
    assert!(!out_dir.path().join("x.safetensors").exists());
}
