//! End-to-end tests of the `tsm-cli` binary: a small random-weight PP-TSM ResNet-18 (4 classes,
//! 4 segments, 56x56 crops to keep them fast) on the shared media and clips made with ffmpeg.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::sync::OnceLock;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{s, text, tsm};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use test_support::motion::{self, Motion, MotionSpec};
use test_support::{ffmpeg, media};
use tsm_model::{Tsm, TsmConfig, CONFIG_METADATA_KEY};

const CLASSES: usize = 4;
/// Small frames keep every run fast; the defaults (256/224) are PaddleVideo's.
const SIZES: [&str; 4] = ["--short-size", "64", "--crop-size", "56"];

struct Fixture {
    dir: PathBuf,
    weights: PathBuf,
    labels: PathBuf,
    /// Readable videos with the labels the list gives them.
    videos: Vec<(PathBuf, usize)>,
    broken: PathBuf,
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// An index list of `entries` (path, label) written under `name`.
    fn list(&self, name: &str, entries: &[(PathBuf, usize)]) -> PathBuf {
        let text: String = entries
            .iter()
            .map(|(p, l)| format!("{} {l}\n", p.display()))
            .collect();
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Under the target dir (not a temp dir that a static would never remove), fresh per run.
        let dir = test_support::fresh_test_dir!("cli-e2e").kept();
        let weights = dir.join("r18.safetensors");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        // Seeded, so each run and each machine test the same weights.
        let cfg = TsmConfig::pptsm_r18(CLASSES).with_num_seg(4);
        let model = Tsm::new(&cfg, vb).unwrap();
        model
            .init_weights(|i| ChaCha8Rng::seed_from_u64(i as u64))
            .unwrap();
        model.save(&weights).unwrap();

        let labels = dir.join("labels.txt");
        std::fs::write(&labels, "walking\nrunning, fast\njumping\nsitting\n").unwrap();

        let generated = dir.join("generated");
        std::fs::create_dir(&generated).unwrap();
        let mut videos = vec![
            (media("bikes.mp4"), 0),
            (media("carphone_pristine.mp4"), 1),
            (media("carphone_distorted.mp4"), 1),
        ];
        for (i, (source, name)) in [
            ("testsrc=size=96x72:rate=10", "a.avi"),
            ("testsrc2=size=80x64:rate=12", "b.mp4"),
            ("mandelbrot=size=96x96:rate=10", "sub/c.mkv"),
        ]
        .into_iter()
        .enumerate()
        {
            let out = generated.join(name);
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                source,
                "-t",
                "2",
                "-c:v",
                "mpeg4",
                out.to_str().unwrap(),
            ]);
            videos.push((out, (i + 2) % CLASSES));
        }
        let broken_dir = dir.join("broken");
        std::fs::create_dir(&broken_dir).unwrap();
        let broken = broken_dir.join("broken.mp4");
        std::fs::write(&broken, b"this is not a video, just bytes".repeat(40)).unwrap();
        Fixture {
            dir,
            weights,
            labels,
            videos,
            broken,
        }
    })
}

/// Runs a command expected to stop with an error: exit status 1 and one line on stderr that
/// contains every one of `needles`.
fn check_error(args: &[&str], needles: &[&str]) {
    check_error_output(&tsm(args), args, needles)
}

fn check_error_output(out: &Output, args: &[&str], needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("tsm-cli: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` missing from: {err}");
    }
}

/// `predict --json --topk CLASSES [extra]` over `paths`: each line's object.
fn predict_json(f: &Fixture, paths: &[&str], extra: &[&str]) -> (Output, Vec<Value>) {
    let mut args = vec![
        "predict",
        "--weights",
        s(&f.weights),
        "--json",
        "--topk",
        "4",
    ];
    args.extend(["--labels", s(&f.labels)]);
    args.extend(SIZES);
    args.extend(extra);
    args.extend(paths);
    let out = tsm(&args);
    let rows = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, rows)
}

#[test]
fn predict_json_gives_a_full_softmax_per_video() {
    let f = fixture();
    let generated = f.path("generated");
    let (out, rows) = predict_json(f, &[s(&generated), s(&media("bikes.mp4"))], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The folder is walked recursively and sorted: a.avi, b.mp4, sub/c.mkv; then bikes.
    let paths: Vec<&str> = rows.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(paths[0].ends_with("a.avi") && paths[2].ends_with("sub/c.mkv"));
    for row in &rows {
        let topk = row["topk"].as_array().unwrap();
        assert_eq!(topk.len(), CLASSES);
        let scores: Vec<f64> = topk.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        let sum: f64 = scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{row}: sums to {sum}");
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{row}: not sorted");
        let mut classes: Vec<u64> = topk.iter().map(|t| t["class"].as_u64().unwrap()).collect();
        classes.sort_unstable();
        assert_eq!(classes, vec![0, 1, 2, 3]);
        let c = topk[0]["class"].as_u64().unwrap() as usize;
        let names = ["walking", "running, fast", "jumping", "sitting"];
        assert_eq!(topk[0]["label"], names[c]);
    }
}

/// `--precision bf16` on the CPU: with AVX-512 BF16, each video's logits (its log-scores less
/// their mean) within 1e-2 relative L2 of f32's, the bound the CPU speed issue sets and
/// tsm-model's own test holds; without, a one-line error naming the missing instructions.
/// Logits, not scores: near an even split the rounding of one logit moves both top scores by
/// 1e-2 (CI saw 0.524 become 0.514, logits 4.5e-3 apart).
#[test]
fn predict_in_bf16_on_the_cpu() {
    let f = fixture();
    let paths: Vec<&str> = f.videos.iter().map(|(p, _)| s(p)).collect();
    let (out, bf16) = predict_json(f, &paths, &["--precision", "bf16"]);
    let stderr = text(&out.stderr);
    if let Some(needs) = tsm_model::missing_cpu_bf16_features() {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(needs) && stderr.contains("leave the flag out"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let (_, want) = predict_json(f, &paths, &[]);
    assert_eq!(bf16.len(), paths.len());
    // A row's logits up to a shift: log softmax is the logits less their log-sum-exp, and
    // taking the mean out takes the shift with it.
    let logits = |row: &Value| {
        let mut v = [0f64; CLASSES];
        for t in row["topk"].as_array().unwrap() {
            v[t["class"].as_u64().unwrap() as usize] = t["score"].as_f64().unwrap().ln();
        }
        let mean = v.iter().sum::<f64>() / CLASSES as f64;
        v.map(|l| l - mean)
    };
    for (w, g) in want.iter().zip(&bf16) {
        assert_eq!(w["path"], g["path"]);
        let rel = test_support::rel_l2(&logits(g)[..], &logits(w)[..]);
        eprintln!(
            "{}: bf16 logits {rel:.2e} relative L2 from f32's",
            w["path"]
        );
        assert!(rel <= 1e-2, "logits {rel:.2e} relative L2 apart: {w}\n{g}");
    }
}

#[test]
fn predict_skips_an_unreadable_video_and_says_so() {
    let f = fixture();
    let good = &f.videos[3].0;
    let mut args = vec!["predict", "--weights", s(&f.weights), "--topk", "2"];
    args.extend(SIZES);
    args.extend([s(good), s(&f.broken)]);
    let out = tsm(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stdout.starts_with(s(good)), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(stdout.contains("class "), "{stdout}");
    assert!(
        stderr.contains(&format!("skipped {}", s(&f.broken))),
        "{stderr}"
    );
    assert!(stderr.contains("predicted 1 of 2 videos"), "{stderr}");
    assert!(stderr.contains("1 failed"), "{stderr}");
}

/// `top-1: 0.5000 (3/6)` -> 3.
fn top1_count(stdout: &str) -> usize {
    let line = stdout.lines().find(|l| l.starts_with("top-1:")).unwrap();
    let inner = line.split('(').nth(1).unwrap();
    inner.split('/').next().unwrap().parse().unwrap()
}

#[test]
fn eval_top1_equals_a_hand_count_of_predict() {
    let f = fixture();
    let list = f.list("all.txt", &f.videos);
    let out_dir = f.path("eval-all");
    let mut args = vec!["eval", "--weights", s(&f.weights), "--list", s(&list)];
    args.extend(["--labels", s(&f.labels), "--out", s(&out_dir)]);
    args.extend(SIZES);
    let out = tsm(&args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let paths: Vec<&str> = f.videos.iter().map(|(p, _)| s(p)).collect();
    let (_, rows) = predict_json(f, &paths, &[]);
    let hand = rows
        .iter()
        .zip(&f.videos)
        .filter(|(r, (_, label))| r["topk"][0]["class"].as_u64() == Some(*label as u64))
        .count();
    assert_eq!(top1_count(&stdout), hand, "{stdout}");
    assert!(
        stdout.contains("top-5: 1.0000"),
        "4 classes: always in the top 5\n{stdout}"
    );
    assert!(stdout.contains("mean class accuracy:"), "{stdout}");

    let csv = std::fs::read_to_string(out_dir.join("predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), f.videos.len() + 1);
    assert!(csv.contains("\"running, fast\""), "{csv}");
    let cm = std::fs::read_to_string(out_dir.join("confusion.csv")).unwrap();
    assert_eq!(cm.lines().count(), CLASSES + 1);
    let total: u64 = cm
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.rsplitn(CLASSES + 1, ',')
                .take(CLASSES)
                .collect::<Vec<_>>()
        })
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, f.videos.len() as u64);
    let png = image::open(out_dir.join("confusion.png")).unwrap();
    assert!(png.width() > 100 && png.height() > 100);
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["evaluated"], f.videos.len());
    assert!(!out_dir.join("failed.txt").exists());
}

#[test]
fn eval_reports_counts_and_excludes_a_corrupt_video() {
    let f = fixture();
    let mut entries = f.videos[..3].to_vec();
    entries.insert(1, (f.broken.clone(), 2));
    let list = f.list("with-broken.txt", &entries);
    let out_dir = f.path("eval-broken");
    let mut args = vec!["eval", "--weights", s(&f.weights), "--list", s(&list)];
    args.extend(["--out", s(&out_dir), "--predictions", "jsonl"]);
    args.extend(SIZES);
    let out = tsm(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2 {}", s(&list), s(&f.broken))),
        "{stderr}"
    );
    assert!(stdout.contains("evaluated 3 of 4 videos"), "{stdout}");
    assert!(stdout.contains("failed: 1 videos"), "{stdout}");
    assert!(stdout.contains("/3)"), "{stdout}");
    let preds = std::fs::read_to_string(out_dir.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), 3);
    let failed = std::fs::read_to_string(out_dir.join("failed.txt")).unwrap();
    assert!(failed.contains("broken.mp4"), "{failed}");
}

#[test]
fn eval_dense_views_average_clips_and_crops() {
    let f = fixture();
    let list = f.list("dense.txt", &f.videos[..2]);
    let out_dir = f.path("eval-dense");
    let mut args = vec!["eval", "--weights", s(&f.weights), "--list", s(&list)];
    args.extend([
        "--views", "dense", "--clips", "2", "--crops", "3", "--window", "16",
    ]);
    args.extend(["--out", s(&out_dir), "--predictions", "jsonl"]);
    args.extend(SIZES);
    let out = tsm(&args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(stdout.contains("(6 clips each)"), "{stdout}");
    for line in std::fs::read_to_string(out_dir.join("predictions.jsonl"))
        .unwrap()
        .lines()
    {
        let row: Value = serde_json::from_str(line).unwrap();
        let sum: f64 = row["topk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["score"].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5, "{row}");
    }
}

#[test]
fn errors_are_one_line_and_say_what_and_where() {
    let f = fixture();
    let w = s(&f.weights);
    let video = s(&f.videos[0].0);

    let three = f.path("three-labels.txt");
    std::fs::write(&three, "1 a\n2 b\n3 c\n").unwrap();
    check_error(
        &["predict", "--weights", w, "--labels", s(&three), video],
        &["has 3 classes but the model", "has 4"],
    );

    let list = f.list(
        "missing.txt",
        &[(f.videos[0].0.clone(), 0), (f.path("nope.avi"), 1)],
    );
    check_error(
        &["eval", "--weights", w, "--list", s(&list)],
        &[&format!("{}:2:", s(&list)), "nope.avi does not exist"],
    );

    let out_of_range = f.list("range.txt", &[(f.videos[0].0.clone(), 9)]);
    check_error(
        &["eval", "--weights", w, "--list", s(&out_of_range)],
        &[":1: label 9 is out of range"],
    );

    // R18 tensors whose metadata claims ResNet-34.
    let model = Tsm::load(&f.weights, &Device::Cpu).unwrap();
    let mut cfg = model.config().clone();
    cfg.depth = 34;
    let lying = f.path("lying.safetensors");
    let meta = [(
        CONFIG_METADATA_KEY.to_string(),
        serde_json::to_string(&cfg).unwrap(),
    )]
    .into_iter()
    .collect();
    tsm_model::write_safetensors(&lying, &named(&model), &meta).unwrap();
    check_error(
        &["info", s(&lying)],
        &["lying.safetensors", "do not match PP-TSM ResNet-34"],
    );

    let foreign = f.path("foreign.safetensors");
    tsm_model::write_safetensors(&foreign, &named(&model), &Default::default()).unwrap();
    check_error(
        &["predict", "--weights", s(&foreign), video],
        &["no `tsm_config`", "convert-weights"],
    );

    check_error(
        &["predict", "--weights", w, s(&f.path("absent.mp4"))],
        &["absent.mp4"],
    );
    #[cfg(not(feature = "cuda"))]
    check_error(
        &["predict", "--device", "cuda:0", "--weights", w, video],
        &["built without CUDA"],
    );
}

/// Training on GPUs (`--device cuda`: one process per GPU, NCCL between them) from a build
/// without CUDA, and NCCL asked for on the CPU: one-line errors saying what is missing.
#[test]
fn train_says_what_gpus_and_nccl_need() {
    let recipe = common::demo_recipe();
    #[cfg(not(feature = "cuda"))]
    check_error(
        &["train", "-c", s(&recipe), "--device", "cuda"],
        &["built without CUDA", "--features cuda"],
    );
    let args = ["train", "-c", s(&recipe), "--dist", "nccl"];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
        .args(args)
        .envs([("RANK", "1"), ("WORLD_SIZE", "2")])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    check_error_output(&out, &args, &["NCCL needs a CUDA device"]);
}

/// A one-motion set of 32 px, 4-frame clips (`per_class` to train and `val` to validate on,
/// from `seed`) under `dir`, the run directory beside it, and the overrides that train a
/// 4-segment model on it for `epochs` at `batch`.
fn one_motion_job(
    dir: &std::path::Path,
    (per_class, val, seed): (usize, usize, u64),
    batch: usize,
    epochs: usize,
) -> (motion::MotionSet, PathBuf, Vec<String>) {
    let spec = MotionSpec {
        size: 32,
        frames: 4,
        train_per_class: per_class,
        val_per_class: val,
        motions: vec![Motion::Horizontal],
        seed,
    };
    let set = motion::generate(&spec, &dir.join("data")).unwrap();
    let overrides = vec![
        "model.num_seg=4".to_string(),
        "data.sampling.segments.num_seg=4".to_string(),
        format!("data.batch_size={batch}"),
        format!("train.epochs={epochs}"),
    ];
    (set, dir.join("run"), overrides)
}

/// `train --precision bf16`: mixed-precision training runs the whole job and records the
/// precision in the run's resolved config; where the CPU lacks the instructions, a one-line
/// error before any work.
#[test]
fn train_in_bf16_runs_and_records_its_precision() {
    let dir = test_support::fresh_test_dir!("cli-train-bf16");
    let (set, run, overrides) = one_motion_job(&dir, (2, 1, 3), 2, 1);
    let out = common::train_command(&set, &run, &overrides)
        .args(["--precision", "bf16"])
        .output()
        .unwrap();
    if let Some(needs) = tsm_model::missing_cpu_bf16_features() {
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains(needs) && err.contains("train in f32"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        return;
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(resolved.contains("precision = \"bf16\""), "{resolved}");
    assert!(run.join("best.safetensors").exists());
}

#[test]
fn preprocess_writes_the_tensor_the_loader_makes() {
    let f = fixture();
    let video = media("bikes.mp4");
    let out = f.path("bikes.safetensors");
    let sheet = f.path("bikes.png");
    let mut args = vec!["preprocess", s(&video), "--num-seg", "4", "--out", s(&out)];
    args.extend(["--contact-sheet", s(&sheet)]);
    args.extend(SIZES);
    let run = tsm(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));

    let tensors = test_support::read_safetensors(&out);
    let clips = &tensors["clips"];
    assert_eq!(clips.shape, vec![1, 4, 3, 56, 56]);
    let pipeline = augment::PipelineConfig {
        transforms: vec![
            augment::Transform::Scale(augment::Scale {
                fixed_ratio: false,
                ..augment::Scale::new(64)
            }),
            augment::Transform::CenterCrop(augment::CenterCrop::new(56)),
        ],
        ..augment::PipelineConfig::tutorial_valid()
    };
    let loader = augment::ClipLoader::new(
        video_io::Sampling::Segments {
            num_seg: 4,
            seg_len: 1,
        },
        augment::Pipeline::new(pipeline).unwrap(),
        video_io::DecodeOptions::default(),
    );
    let want = loader
        .load_seeded(
            &video_io::SampleLocation::Video(video.clone()),
            video_io::SampleMode::Valid,
            0,
        )
        .unwrap();
    assert_eq!(clips.data, want.clips[0].data);
    let bytes = std::fs::read(&out).unwrap();
    let meta = tsm_model::read_metadata(&out, &bytes).unwrap();
    let indices: Vec<usize> = serde_json::from_str(&meta["indices"]).unwrap();
    assert_eq!(indices, want.indices);
    assert_eq!(meta["frames_len"], want.frames_len.to_string());
    let png = image::open(&sheet).unwrap();
    assert_eq!((png.width(), png.height()), (4 * 58 + 2, 58 + 2));

    // The same video as a frame folder (PaddleVideo's frames format): the loader's tensor for it.
    let frames = f.path("bikes_frames");
    std::fs::create_dir_all(&frames).unwrap();
    let pattern = frames.join("img_%05d.jpg");
    test_support::ffmpeg(&["-i", s(&video), "-q:v", "2", s(&pattern)]);
    let count = std::fs::read_dir(&frames).unwrap().count();
    let out = f.path("bikes_frames.safetensors");
    let mut args = vec!["preprocess", s(&frames), "--num-seg", "4", "--out", s(&out)];
    args.extend(SIZES);
    let run = tsm(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let location = video_io::SampleLocation::Frames {
        dir: frames.clone(),
        num_frames: count,
    };
    let want = loader
        .load_seeded(&location, video_io::SampleMode::Valid, 0)
        .unwrap();
    assert_eq!(
        test_support::read_safetensors(&out)["clips"].data,
        want.clips[0].data
    );
    // A frame the sampler needs is missing: named, nothing written.
    std::fs::remove_file(frames.join(format!("img_{:05}.jpg", want.indices[1] + 1))).unwrap();
    std::fs::remove_file(&out).unwrap();
    check_error(&args, &[&format!("img_{:05}.jpg", want.indices[1] + 1)]);
    assert!(!out.exists());
    check_error(
        &[
            "preprocess",
            s(&video),
            "--num-frames",
            "9",
            "--out",
            s(&out),
        ],
        &["--num-frames is for frame folders"],
    );

    // Training mode: the seed decides the random choices.
    let train = |seed: &str, name: &str| {
        let path = f.path(name);
        let mut args = vec!["preprocess", s(&f.videos[3].0), "--num-seg", "4"];
        args.extend(["--mode", "train", "--seed", seed, "--out", s(&path)]);
        args.extend(SIZES);
        let run = tsm(&args);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        test_support::read_safetensors(&path)["clips"].data.clone()
    };
    let a = train("3", "t3a.safetensors");
    assert_eq!(a, train("3", "t3b.safetensors"));
    assert_ne!(a, train("4", "t4.safetensors"));
}

#[test]
fn info_describes_the_checkpoint() {
    let f = fixture();
    let out = tsm(&["info", s(&f.weights)]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let cfg = TsmConfig::pptsm_r18(CLASSES).with_num_seg(4);
    let params: usize = tsm_model::parameter_shapes(&cfg)
        .unwrap()
        .iter()
        .filter(|(n, _)| !n.contains(".running_"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    for needle in [
        "ResNet-18-vd (BasicBlock)".to_string(),
        "num_seg:       4".into(),
        "classes:       4".into(),
        format!("parameters:    {params} "),
        "FLOPs/clip:".into(),
        "tsm_config:".into(),
    ] {
        assert!(stdout.contains(&needle), "`{needle}` missing:\n{stdout}");
    }
}

#[test]
fn every_command_has_an_example_in_its_help() {
    for cmd in [
        "predict",
        "eval",
        "preprocess",
        "info",
        "train",
        "plot",
        "export",
    ] {
        let out = tsm(&[cmd, "--help"]);
        let help = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0));
        assert!(help.contains("Example"), "{cmd}:\n{help}");
        assert!(help.contains(&format!("tsm-cli {cmd} ")), "{cmd}:\n{help}");
    }
    let top = text(&tsm(&["--help"]).stdout);
    assert!(top.contains("Exit status"), "{top}");
}

#[test]
fn train_draws_its_curves_and_plot_redraws_them() {
    let dir = test_support::fresh_test_dir!("cli-plot");
    let (set, run, overrides) = one_motion_job(&dir, (4, 2, 1), 4, 2);
    let out = common::train_on_motion(&set, &run, &overrides);
    let curves = run.join("curves.png");
    let stdout = text(&out.stdout);
    // Not on a terminal: PaddleVideo's lines, no bar (the terminal's is tested below)
    for line in [
        "epoch:[  1/2] train step:0     loss: ",
        "END epoch:2   val   loss_avg: ",
    ] {
        assert!(stdout.contains(line), "`{line}` missing from {stdout}");
    }
    assert!(!text(&out.stderr).contains("ETA"), "{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("training curves: {}", curves.display())),
        "{stdout}"
    );
    let png = image::open(&curves).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), (1100, 760));
    // The training series' colour is there: lines were drawn, not just axes.
    let blue = png.pixels().filter(|p| p.0 == [31, 119, 180]).count();
    assert!(blue > 500, "only {blue} pixels of the training curves");

    let again = dir.join("again.png");
    let out = tsm(&["plot", s(&run), "--out", s(&again)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(image::open(&again).unwrap().to_rgb8(), png);

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let bad = dir.join("bad");
    std::fs::create_dir(&bad).unwrap();
    let mut lines: Vec<&str> = metrics.lines().collect();
    lines[2] = r#"{"kind":"step","epoch":1"#;
    std::fs::write(bad.join("metrics.jsonl"), lines.join("\n")).unwrap();
    check_error(
        &["plot", s(&bad)],
        &[&format!(
            "{}:3: not a metrics record",
            bad.join("metrics.jsonl").display()
        )],
    );
    lines[2] = r#"{"kind":"lap","epoch":1,"loss":1.0,"top1":0.5,"top5":1.0}"#;
    std::fs::write(bad.join("metrics.jsonl"), lines.join("\n")).unwrap();
    check_error(
        &["plot", s(&bad)],
        &["metrics.jsonl:3: unknown record kind `lap`"],
    );
    check_error(
        &["plot", s(&dir.join("absent"))],
        &[&format!(
            "reading {}",
            dir.join("absent/metrics.jsonl").display()
        )],
    );
}

/// A model's tensors by checkpoint name, as `write_safetensors` takes them.
fn named(model: &Tsm) -> Vec<(String, candle_core::Tensor)> {
    model
        .params()
        .into_iter()
        .map(|p| (p.name, p.tensor))
        .collect()
}

/// Runs `cmd` with stdin, stdout and stderr on a pseudo-terminal of 160 columns, as a person
/// runs it: all it wrote there (progress bars' redraws included) and its exit status.
fn on_a_terminal(mut cmd: Command) -> (String, ExitStatus) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into the locals; name and termios are optional.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened, and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .env("TERM", "xterm");
    let mut child = cmd.spawn().unwrap();
    // The parent's copies of the terminal's side go, so reading ends when the child's do.
    drop(cmd);
    let mut written = Vec::new();
    // Ends in EIO once the child has exited; what it wrote is in `written` by then.
    let _ = std::fs::File::from(master).read_to_end(&mut written);
    (text(&written), child.wait().unwrap())
}

#[test]
fn on_a_terminal_train_and_predict_show_live_bars() {
    let dir = test_support::fresh_test_dir!("cli-terminal");
    let (set, run, overrides) = one_motion_job(&dir, (4, 2, 2), 4, 2);
    let (screen, status) = on_a_terminal(common::train_command(&set, &run, &overrides));
    assert!(status.success(), "{screen}");
    // the bar's fields, for each epoch
    for field in [
        "epoch 1/2 ",
        "epoch 2/2 ",
        "2/2  loss ",
        "  lr ",
        "  top1 ",
        "  ips ",
        "ETA epoch ",
        ", run ",
    ] {
        assert!(screen.contains(field), "`{field}` missing from {screen}");
    }
    // events above it, and what tsm-cli prints at the end
    let checkpoint = run.join("epoch_00002.safetensors");
    for event in [
        "precise BN: statistics averaged over",
        "epoch 2: validation: loss ",
        "epoch 1: trained in ",
        &format!("checkpoint: {}", checkpoint.display()),
        "training curves: ",
        "done: 2 epochs",
    ] {
        assert!(screen.contains(event), "`{event}` missing from {screen}");
    }
    // instead of the plain lines, which metrics.jsonl still has in full
    for plain in ["train step:", "END epoch:"] {
        assert!(
            !screen.contains(plain),
            "`{plain}` on the terminal: {screen}"
        );
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.matches(r#""kind":"step""#).count(), 4, "{metrics}");

    // predict over several videos: a bar, and the results as in a pipe
    let videos: Vec<PathBuf> = std::fs::read_to_string(&set.val_list)
        .unwrap()
        .lines()
        .map(|l| set.root.join(l.split_whitespace().next().unwrap()))
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsm-cli"));
    cmd.args(["predict", "--weights", s(&checkpoint), "--batch", "1"])
        .args(&videos)
        .env_remove("RUST_BACKTRACE");
    let (screen, status) = on_a_terminal(cmd);
    assert!(status.success(), "{screen}");
    assert!(
        screen.contains(&format!("/{} clips", videos.len())),
        "{screen}"
    );
    for v in &videos {
        assert!(screen.contains(&v.display().to_string()), "{screen}");
    }
    assert!(
        screen.contains(&format!("predicted {0} of {0} videos", videos.len())),
        "{screen}"
    );
}
