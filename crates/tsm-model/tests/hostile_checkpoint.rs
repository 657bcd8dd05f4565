//! Checkpoints are untrusted input: a hostile `tsm_config` (10^12 frames, a billion classes) is
//! refused before anything is sized from it or the tensor data is read, a file that is not
//! safetensors at all (a video, a pickle, text) is named as such, and so is a tensor table
//! that does not fit the file. The allocator of this test binary counts live bytes, so "before
//! anything is read" is measured, not assumed; the counts are process-wide, so the tests take
//! turns (`SERIAL`). A seeded mutation fuzz of the cargo-fuzz seeds (`fuzz/seeds/`, written
//! by [`fuzz_seeds`]) keeps the loader's heap bound in the normal suite.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use test_support::{peak_alloc_during, run_mutations, seed_files, CountingAlloc};
use tsm_model::{BadSafetensorsHeader, ConfigError, Tsm, TsmConfig, TsmError, CONFIG_METADATA_KEY};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The allocation counter is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// Asserts that `text` is one line, but for the backtrace candle appends to its errors when
/// `RUST_BACKTRACE` asks for one.
fn assert_one_line(text: &str, what: &str) {
    let message = text.split_once("\n   0: ").map_or(text, |(m, _)| m);
    assert_eq!(message.lines().count(), 1, "{what}: {text}");
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
    let _serial = serial();
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
    let _serial = serial();
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

/// The config of the small seeds: a ResNet-18 of 2 segments and 2 classes.
fn small_config() -> TsmConfig {
    TsmConfig::pptsm_r18(2).with_num_seg(2)
}

/// `tsm_config` (and `extra`) as checkpoint metadata.
fn metadata(cfg: Option<&TsmConfig>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut meta: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(cfg) = cfg {
        meta.insert(
            CONFIG_METADATA_KEY.into(),
            serde_json::to_string(cfg).unwrap(),
        );
    }
    meta
}

/// `name` shaped `shape` in `dtype`, holding 0, 1, 2, ... (the same bytes on every run).
fn counting(name: &str, shape: &[usize], dtype: DType) -> (String, Tensor) {
    let n = shape.iter().product::<usize>();
    let t = Tensor::arange(0u32, n as u32, &Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    (name.to_string(), t)
}

/// The bytes `write_safetensors` gives for `tensors` and `meta`.
fn written(dir: &Path, tensors: &[(String, Tensor)], meta: &BTreeMap<String, String>) -> Vec<u8> {
    let path = dir.join("seed.safetensors");
    tsm_model::write_safetensors(&path, tensors, meta).unwrap();
    std::fs::read(&path).unwrap()
}

/// The cargo-fuzz seeds, each made by tsm-model's checkpoint writer from a ResNet-18's real
/// tensor names and shapes (a whole checkpoint is 45 MB, so none is whole): its stem and its
/// head with the config in f32, the stem in every dtype the writer writes beside a
/// `global_step` as train-loop saves it, a training-state file (no config), and the header of
/// a whole checkpoint without its data.
fn fuzz_seeds(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let cfg = small_config();
    let shapes = tsm_model::parameter_shapes(&cfg).unwrap();
    let stem: Vec<_> = shapes.iter().take(5).collect();
    let tensors = |list: &[&(String, Vec<usize>)], dtypes: &[DType]| -> Vec<(String, Tensor)> {
        list.iter()
            .zip(dtypes.iter().cycle())
            .map(|((name, shape), &dtype)| counting(name, shape, dtype))
            .collect()
    };
    let f32s = [DType::F32];
    let head: Vec<_> = shapes
        .iter()
        .filter(|(n, _)| n.starts_with("head."))
        .collect();
    let every_dtype = [DType::F64, DType::U8, DType::I64, DType::U32, DType::F32];
    let velocities: Vec<_> = head
        .iter()
        .map(|(n, s)| counting(&format!("velocity.{n}"), s, DType::F32))
        .collect();
    let whole: Vec<_> = shapes
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let whole_path = dir.join("whole.safetensors");
    tsm_model::write_safetensors(&whole_path, &whole, &metadata(Some(&cfg), &[])).unwrap();
    vec![
        (
            "head.safetensors".into(),
            written(dir, &tensors(&head, &f32s), &metadata(Some(&cfg), &[])),
        ),
        (
            "r18-header.safetensors".into(),
            tsm_model::read_header(&whole_path).unwrap(),
        ),
        (
            "state.safetensors".into(),
            written(
                dir,
                &velocities,
                &metadata(
                    None,
                    &[("global_step", "12"), ("train_state", r#"{"epoch":1}"#)],
                ),
            ),
        ),
        (
            "stem.f32.safetensors".into(),
            written(dir, &tensors(&stem, &f32s), &metadata(Some(&cfg), &[])),
        ),
        (
            "stem.mixed.safetensors".into(),
            written(
                dir,
                &tensors(&stem, &every_dtype),
                &metadata(Some(&cfg), &[("global_step", "12")]),
            ),
        ),
    ]
}

/// Environment variable that makes [`the_fuzz_seeds_are_what_the_writer_writes`] rewrite
/// `fuzz/seeds/` (after a change of the writer or of the model's tensors):
/// `TSM_WRITE_FUZZ_SEEDS=1 cargo test -p tsm-model --test hostile_checkpoint fuzz_seeds`.
const WRITE_SEEDS_ENV: &str = "TSM_WRITE_FUZZ_SEEDS";

fn seed_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn the_fuzz_seeds_are_what_the_writer_writes() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let made = fuzz_seeds(dir.path());
    if std::env::var_os(WRITE_SEEDS_ENV).is_some() {
        std::fs::create_dir_all(seed_dir()).unwrap();
        for (name, bytes) in &made {
            std::fs::write(seed_dir().join(name), bytes).unwrap();
        }
    }
    let committed = seed_files(&seed_dir(), ".safetensors");
    let names = |seeds: &[(String, Vec<u8>)]| seeds.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&made),
        "rewrite with {WRITE_SEEDS_ENV}=1"
    );
    for ((name, old), (_, new)) in committed.iter().zip(&made) {
        assert!(
            old == new,
            "{name} differs from what the writer writes now: rewrite with {WRITE_SEEDS_ENV}=1"
        );
    }
}

/// Loads `data` from memory, asserting the heap bound and that a refusal is one line naming
/// the file; whether it loaded.
fn load_bounded(data: &[u8], what: &str) -> Result<Tsm, String> {
    let path = Path::new("fuzzed.safetensors");
    let (result, peak) =
        peak_alloc_during(|| Tsm::from_checkpoint_bytes(path, data, DType::F32, &Device::Cpu));
    let bound = tsm_model::max_load_heap_bytes(data);
    assert!(
        peak <= bound,
        "{what}: {peak} heap bytes for {} input bytes (bound {bound})",
        data.len()
    );
    result.map_err(|e| {
        let text = chain(&e);
        assert!(text.starts_with("fuzzed.safetensors: "), "{what}: {text}");
        assert_one_line(&text, what);
        text
    })
}

#[test]
fn mutated_checkpoints_fail_cleanly_within_the_memory_bound() {
    let _serial = serial();
    let seeds = seed_files(&seed_dir(), ".safetensors");
    assert!(
        seeds.len() >= 5,
        "seeds missing in {}",
        seed_dir().display()
    );
    // each seed gets as far as it can: to the first tensor the model lacks, to its data
    for (name, bytes) in &seeds {
        let e = load_bounded(bytes, name).err().unwrap();
        let expected = match name.as_str() {
            "r18-header.safetensors" => "the header declares",
            "state.safetensors" => "no `tsm_config`",
            _ => "cannot find tensor",
        };
        assert!(e.contains(expected), "{name}: {e}");
    }
    let started = Instant::now();
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-checkpoint-crash");
    let (cases, loaded) = run_mutations(&seeds, 4000, 15, &keep, |data, what| {
        load_bounded(data, what).is_ok()
    });
    // no seed holds a whole model, so no mutant can
    assert_eq!(loaded, 0);
    println!(
        "{cases} mutated checkpoints in {:.2}s",
        started.elapsed().as_secs_f64()
    );
}

/// The header of the small head-only seed with `edit` applied to its JSON, and its data.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let seed = std::fs::read(seed_dir().join("head.safetensors")).unwrap();
    let len = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&seed[8..8 + len]).unwrap();
    edit(&mut json);
    let head = serde_json::to_vec(&json).unwrap();
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head);
    bytes.extend(&seed[8 + len..]);
    bytes
}

#[test]
fn a_tensor_table_that_does_not_fit_the_file_is_refused_before_its_data_is_read() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let load = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let (result, peak) = peak_alloc_during(|| Tsm::load(&path, &Device::Cpu));
        let e = result.err().unwrap();
        let text = chain(&e);
        assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
        assert_one_line(&text, name);
        // the header is read, never the data (the head seed's is 4 KiB, so count from a bigger one)
        assert!(peak < SMALL, "{name}: {peak} bytes");
        (e, text)
    };
    const FC: &str = "head.fc.weight";
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: [(&str, Edit, &str); 6] = [
        (
            "dtype",
            Box::new(|j| j[FC]["dtype"] = "F4".into()),
            "dtype `F4` is not one of",
        ),
        (
            "overflow",
            Box::new(|j| j[FC]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40])),
            "has more elements than memory can hold",
        ),
        (
            "size",
            Box::new(|j| j[FC]["shape"] = serde_json::json!([2, 511])),
            "shape [2, 511] of F32 is 4088 bytes but its data_offsets [0, 4096] span 4096",
        ),
        (
            "gap",
            Box::new(|j| j[FC]["data_offsets"] = serde_json::json!([8, 4104])),
            "begins at byte 8 of the data, not at 0",
        ),
        (
            "entry",
            Box::new(|j| j[FC]["offsets"] = serde_json::json!([0, 4096])),
            "not a tensor entry: unknown field `offsets`",
        ),
        (
            "bias",
            Box::new(|j| j["head.fc.bias"] = serde_json::json!("F32")),
            "not a tensor entry: invalid type",
        ),
    ];
    for (name, edit, message) in cases {
        let (e, text) = load(name, &edited(edit));
        assert!(
            matches!(e, TsmError::BadTensorEntry { .. }),
            "{name}: {text}"
        );
        assert!(
            text.contains(message),
            "{name}: `{message}` missing from {text}"
        );
    }

    // a real checkpoint cut short, or with bytes after it, and a header claiming a terabyte
    let whole = dir.path().join("whole.safetensors");
    write_with_config(
        &whole,
        &r18_tensors(),
        &serde_json::to_string(&small_config()).unwrap(),
    );
    let bytes = std::fs::read(&whole).unwrap();
    let (e, text) = load("cut.safetensors", &bytes[..bytes.len() / 2]);
    assert!(matches!(e, TsmError::DataLength { .. }), "{text}");
    assert!(text.contains("a truncated or damaged file"), "{text}");
    let header = tsm_model::read_header(&whole).unwrap();
    let (e, _) = load("header-only.safetensors", &header);
    assert!(matches!(e, TsmError::DataLength { held: 0, .. }), "{e:?}");
    let mut padded = header.clone();
    padded.extend(std::iter::repeat_n(0u8, 100));
    let (e, _) = load("padded.safetensors", &padded);
    assert!(matches!(e, TsmError::DataLength { held: 100, .. }), "{e:?}");
    let tera = edited(|j| {
        j[FC]["shape"] = serde_json::json!([1u64 << 38]);
        j[FC]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
        j["head.fc.bias"]["data_offsets"] = serde_json::json!([1u64 << 40, (1u64 << 40) + 8]);
    });
    let (e, text) = load("tera.safetensors", &tera);
    assert!(
        matches!(e, TsmError::DataLength { declared, .. } if declared == (1 << 40) + 8),
        "{text}"
    );
    // `info` reads the config the same way, so it refuses these too
    let e = tsm_model::read_checkpoint_config(&dir.path().join("tera.safetensors")).unwrap_err();
    assert!(matches!(e, TsmError::DataLength { .. }), "{e:?}");
}

/// `{:#}` (anyhow, as tsm-cli prints errors) shows each cause once: a variant with a source
/// keeps it out of its own message.
#[test]
fn each_cause_is_printed_once() {
    let _serial = serial();
    let absent = Path::new("no/such/model.safetensors");
    let e = Tsm::load(absent, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TsmError::Io { .. }), "{e:?}");
    let printed = format!("{:#}", anyhow::Error::new(e));
    assert_eq!(
        printed,
        "no/such/model.safetensors: No such file or directory (os error 2)"
    );

    let mut cfg = small_config();
    cfg.depth = 7;
    let varmap = VarMap::new();
    let e = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap_err();
    assert!(
        matches!(e, TsmError::Config(ConfigError::Depth(7))),
        "{e:?}"
    );
    let printed = format!("{:#}", anyhow::Error::new(e));
    assert_eq!(
        printed,
        "model config: depth 7 is not one of 18, 34, 50, 101, 152"
    );

    // tensors that do not make the model: candle's message, once, after the file
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    std::fs::copy(seed_dir().join("head.safetensors"), &path).unwrap();
    let e = Tsm::load(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(e, TsmError::Model { .. }), "{e:?}");
    let printed = format!("{:#}", anyhow::Error::new(e));
    assert_eq!(
        printed.matches("cannot find tensor").count(),
        1,
        "{printed}"
    );
    assert!(
        printed.starts_with(&format!("{}: ", path.display())),
        "{printed}"
    );
}
