//! Checkpoints are untrusted input: a hostile `tsm_config` (10^12 frames, a billion classes) is
//! refused before anything is sized from it or the tensor data is read, and a file that is not
//! safetensors at all (a video, a pickle, text) is named as such. The allocator of this test
//! binary counts live bytes, so "before anything is read" is measured, not assumed; the
//! measurements run in one test, since the counts are process-wide.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use test_support::{peak_alloc_during, CountingAlloc};
use tsm_model::{BadSafetensorsHeader, ConfigError, Tsm, TsmConfig, TsmError, CONFIG_METADATA_KEY};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Headers and refusals are a few KiB; a checkpoint's tensor data is tens of MiB.
const SMALL: usize = 1 << 20;

/// The error and its sources joined by ": ", as `tsm-cli` prints it (anyhow's `{:#}`).
fn chain(e: &TsmError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The tensors of a ResNet-18 with 2 classes (about 45 MB in f32), by checkpoint name.
fn r18_tensors() -> Vec<(String, Tensor)> {
    let varmap = VarMap::new();
    let cfg = TsmConfig::pptsm_r18(2).with_num_seg(2);
    let model = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    model
        .params()
        .into_iter()
        .map(|p| (p.name, p.tensor))
        .collect()
}

/// Writes `tensors` with `config_json` (written as is, not serialised from a `TsmConfig`, so
/// any value can be put there) as the checkpoint's `tsm_config`.
fn write_with_config(path: &Path, tensors: &[(String, Tensor)], config_json: &str) {
    let meta: BTreeMap<String, String> = [(CONFIG_METADATA_KEY.to_string(), config_json.into())]
        .into_iter()
        .collect();
    tsm_model::write_safetensors(path, tensors, &meta).unwrap();
}

#[test]
fn a_hostile_config_is_refused_naming_the_field_before_the_tensors_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = r18_tensors();
    let valid = dir.path().join("valid.safetensors");
    write_with_config(
        &valid,
        &tensors,
        r#"{"depth":18,"num_seg":2,"num_classes":2}"#,
    );
    // the same tensors load under a valid config, so what follows is refused for its config
    // alone; and loading them allocates far more than SMALL, so the counter does count
    let (loaded, peak) = peak_alloc_during(|| Tsm::load(&valid, &Device::Cpu));
    loaded.unwrap();
    assert!(peak > 40 * SMALL, "{peak} bytes allocated loading 45 MB");

    let cases = [
        (
            r#"{"depth":18,"num_seg":1000000000000,"num_classes":2}"#,
            ConfigError::NumSeg(1_000_000_000_000),
            "num_seg 1000000000000 is outside 1..=256",
        ),
        (
            r#"{"depth":18,"num_seg":2,"num_classes":1000000000}"#,
            ConfigError::NumClasses(1_000_000_000),
            "num_classes 1000000000 is outside 0..=100000",
        ),
        (
            r#"{"depth":7,"num_seg":2,"num_classes":2}"#,
            ConfigError::Depth(7),
            "depth 7 is not one of",
        ),
        (
            r#"{"depth":18,"num_seg":2,"num_classes":2,"dropout":1.0}"#,
            ConfigError::Dropout(1.0),
            "dropout 1 must lie in [0, 1)",
        ),
        (
            r#"{"depth":18,"num_seg":2,"num_classes":2,"shift_ratio":0.75}"#,
            ConfigError::ShiftRatio(0.75),
            "shift_ratio 0.75 must lie in [0, 0.5]",
        ),
    ];
    let hostile = dir.path().join("hostile.safetensors");
    for (json, expected, message) in cases {
        write_with_config(&hostile, &tensors, json);
        let (result, peak) = peak_alloc_during(|| Tsm::load(&hostile, &Device::Cpu));
        let e = result.unwrap_err();
        let text = chain(&e);
        match &e {
            TsmError::CheckpointConfig { path, source } => {
                assert_eq!(path, &hostile);
                assert_eq!(source, &expected, "{text}");
            }
            other => panic!("{json}: not a config error: {other:?}"),
        }
        assert!(text.contains("hostile.safetensors"), "{text}");
        assert!(text.contains(message), "`{message}` missing from: {text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        // the header alone was read: not the file, let alone a clip of 10^12 frames
        assert!(peak < SMALL, "{json}: {peak} bytes allocated");
    }

    // a video given as weights is refused from its first bytes, not read whole
    let video = test_support::media("bigbuckbunny.mp4");
    let (result, peak) = peak_alloc_during(|| Tsm::load(&video, &Device::Cpu));
    let e = result.unwrap_err();
    assert!(matches!(e, TsmError::NotSafetensors { .. }), "{e:?}");
    assert!(peak < SMALL / 2, "{peak} bytes allocated for a video");
}

/// `bytes` written to `name` and loaded: the refusal and its message.
fn refusal(dir: &Path, name: &str, bytes: &[u8]) -> (TsmError, String) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let e = Tsm::load(&path, &Device::Cpu).unwrap_err();
    let text = chain(&e);
    match &e {
        TsmError::NotSafetensors { path: p, .. } => assert_eq!(p, &path, "{text}"),
        other => panic!("{name}: not refused as non-safetensors: {other:?}"),
    }
    assert!(
        text.starts_with(&format!(
            "{}: not a tsm-rs checkpoint (safetensors): ",
            path.display()
        )),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    (e, text)
}

fn reason(e: &TsmError) -> &BadSafetensorsHeader {
    match e {
        TsmError::NotSafetensors { reason, .. } => reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn files_that_are_not_safetensors_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let mp4 = std::fs::read(test_support::media("bikes.mp4")).unwrap();
    let (e, text) = refusal(dir, "clip.mp4", &mp4);
    assert!(
        matches!(reason(&e), BadSafetensorsHeader::LongerThanFile { .. }),
        "{text}"
    );
    assert!(text.contains("exceeds"), "{text}");

    // a .pdparams pickle (protocol 2) and a zip-based one (Paddle >= 2.x saves either)
    let pickle = b"\x80\x02}q\x00(X\x0b\x00\x00\x00conv1.weightq\x01cnumpy".repeat(20);
    let (e, _) = refusal(dir, "model.pdparams", &pickle);
    assert!(matches!(
        reason(&e),
        BadSafetensorsHeader::LongerThanFile { .. }
    ));
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl".repeat(20);
    refusal(dir, "zipped.pdparams", &zip);

    let (e, _) = refusal(dir, "notes.txt", b"these are not weights\n");
    assert!(matches!(
        reason(&e),
        BadSafetensorsHeader::LongerThanFile { .. }
    ));

    let (e, text) = refusal(dir, "empty.safetensors", b"");
    assert!(
        matches!(reason(&e), BadSafetensorsHeader::TooShort { file_len: 0 }),
        "{text}"
    );
    let (e, _) = refusal(dir, "short.safetensors", b"\x02\x00\x00");
    assert!(matches!(
        reason(&e),
        BadSafetensorsHeader::TooShort { file_len: 3 }
    ));

    // a length that fits the file, but what follows is not a JSON object
    let mut not_json = 6u64.to_le_bytes().to_vec();
    not_json.extend_from_slice(b"[1, 2]");
    let (e, text) = refusal(dir, "array.safetensors", &not_json);
    assert!(
        matches!(reason(&e), BadSafetensorsHeader::NotJsonObject),
        "{text}"
    );
    let mut zero = 0u64.to_le_bytes().to_vec();
    zero.extend_from_slice(b"{}");
    let (e, _) = refusal(dir, "zero.safetensors", &zero);
    assert!(matches!(reason(&e), BadSafetensorsHeader::NotJsonObject));
    let mut broken = 8u64.to_le_bytes().to_vec();
    broken.extend_from_slice(b"{\"a\": [}");
    let (e, text) = refusal(dir, "broken.safetensors", &broken);
    assert!(
        matches!(reason(&e), BadSafetensorsHeader::Json(_)),
        "{text}"
    );
    assert!(text.contains("its header is not JSON: "), "{text}");

    // read_metadata gives the same refusal on bytes already in memory
    let e = tsm_model::read_metadata(Path::new("clip.mp4"), &mp4).unwrap_err();
    assert!(matches!(e, TsmError::NotSafetensors { .. }), "{e:?}");
}
