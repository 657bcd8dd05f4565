//! `tsm-cli` on a corpus of broken and odd inputs, generated here with the ffmpeg CLI, mixed with
//! good videos: `predict`, `eval` and `train` each name every bad input, count them in their
//! summary, give results for every good one and exit with status 2 (0 when all is well, 1 on an
//! error). Also: diverging and unwritable training runs, and memory that stays flat over 1000
//! videos.
//!
//! What "handled" means for each input:
//! - unreadable (zero bytes, random bytes named .avi, header only, audio only, a frame folder
//!   with a missing image, a folder of frames given to `predict`): skipped with a message naming
//!   it, counted;
//! - truncated at 10/50/90%: the frames that decode are used (a result), or, when none can be
//!   found, skipped and named like the unreadable ones;
//! - odd but valid (one frame, 1x1 frames, 4K frames, rotation metadata, variable frame rate):
//!   decoded and classified (except 1x1 frames in training: see the train test). Rotation
//!   metadata is not applied: frames are used as stored, as decord and PyAV give them (tested:
//!   a rotated copy gives the very tensor of its source).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{s, text, tsm};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use test_support::{ffmpeg, TestDir};
use tsm_model::{Tsm, TsmConfig};

const CLASSES: usize = 3;
/// Tiny views keep every run cheap.
const SIZES: [&str; 4] = ["--short-size", "32", "--crop-size", "32"];

/// How an input is expected to come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A result.
    Ok,
    /// Skipped, named, counted.
    Fails,
    /// Either (truncated files: whatever frames decode).
    Either,
}

struct Corpus {
    dir: PathBuf,
    weights: PathBuf,
    /// Video files with what each must give.
    videos: Vec<(PathBuf, Expect)>,
    /// Frame folders (good ones and one missing an image), for `--format frames`.
    frames: Vec<(PathBuf, Expect)>,
    /// The source of rotated.mp4, without rotation metadata.
    unrotated: PathBuf,
}

fn lavfi(src: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["-f", "lavfi", "-i", src];
    args.extend(extra);
    args.push(out.to_str().unwrap());
    ffmpeg(&args);
}

fn write_prefix(src: &Path, dst: &Path, fraction: f64) {
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(dst, &bytes[..(bytes.len() as f64 * fraction) as usize]).unwrap();
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = test_support::fresh_test_dir!("cli-robust").kept();
        let v = dir.join("videos");
        std::fs::create_dir_all(&v).unwrap();
        let weights = dir.join("r18.safetensors");
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = TsmConfig::pptsm_r18(CLASSES).with_num_seg(4);
        Tsm::new(&cfg, vb).unwrap().save(&weights).unwrap();

        let p = |name: &str| v.join(name);
        let mpeg4 = ["-t", "2", "-c:v", "mpeg4"];
        lavfi("testsrc=size=96x72:rate=10", &p("good_a.avi"), &mpeg4);
        lavfi("testsrc2=size=80x64:rate=12", &p("good_b.mp4"), &mpeg4);
        lavfi("mandelbrot=size=64x64:rate=10", &p("good_c.mkv"), &mpeg4);
        let source = dir.join("source.avi");
        lavfi(
            "testsrc=size=160x120:rate=25",
            &source,
            &["-t", "2", "-c:v", "mpeg4", "-g", "12"],
        );
        for (name, f) in [("cut10", 0.1), ("cut50", 0.5), ("cut90", 0.9)] {
            write_prefix(&source, &p(&format!("{name}.avi")), f);
        }
        std::fs::write(p("zero.mp4"), b"").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let noise: Vec<u8> = (0..8192).map(|_| rng.random()).collect();
        std::fs::write(p("random.avi"), noise).unwrap();
        let bytes = std::fs::read(&source).unwrap();
        std::fs::write(p("header_only.avi"), &bytes[..4096]).unwrap();
        lavfi(
            "sine=frequency=440:duration=1",
            &p("audio_only.mp4"),
            &["-c:a", "aac"],
        );
        lavfi(
            "testsrc=size=64x48:rate=25",
            &p("single_frame.mp4"),
            &["-frames:v", "1", "-c:v", "mpeg4"],
        );
        lavfi(
            "testsrc=size=64x48:rate=10",
            &p("one_by_one.mkv"),
            &["-t", "1", "-vf", "scale=1:1", "-c:v", "ffv1"],
        );
        lavfi(
            "testsrc=size=3840x2160:rate=4",
            &p("uhd_4k.mp4"),
            &[
                "-t",
                "1",
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-crf",
                "45",
            ],
        );
        let unrotated = dir.join("unrotated.mp4");
        lavfi(
            "testsrc=size=96x64:rate=10",
            &unrotated,
            &["-t", "1", "-c:v", "mpeg4"],
        );
        let rotated = p("rotated.mp4");
        ffmpeg(&[
            "-i",
            unrotated.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            "rotate=90",
            rotated.to_str().unwrap(),
        ]);
        // Frame gaps of 0.1, 0.2, ... s: variable frame rate, timestamps kept by Matroska.
        lavfi(
            "testsrc=size=64x48:rate=10",
            &p("vfr.mkv"),
            &[
                "-frames:v",
                "12",
                "-vf",
                "setpts='N*(N+1)/2/10/TB'",
                "-fps_mode",
                "vfr",
                "-c:v",
                "mpeg4",
            ],
        );
        use Expect::*;
        let videos = [
            ("good_a.avi", Ok),
            ("good_b.mp4", Ok),
            ("good_c.mkv", Ok),
            ("cut10.avi", Either),
            ("cut50.avi", Either),
            ("cut90.avi", Either),
            ("zero.mp4", Fails),
            ("random.avi", Fails),
            ("header_only.avi", Fails),
            ("audio_only.mp4", Fails),
            ("single_frame.mp4", Ok),
            ("one_by_one.mkv", Ok),
            ("uhd_4k.mp4", Ok),
            ("rotated.mp4", Ok),
            ("vfr.mkv", Ok),
        ]
        .into_iter()
        .map(|(n, e)| (p(n), e))
        .collect();

        let mut frames = Vec::new();
        // frames_gap lacks a whole segment (images 3 and 4 of 8, segment 2 of 4), so every
        // sampling, train or valid, asks for a missing image.
        for (name, missing) in [
            ("frames_a", None),
            ("frames_b", None),
            ("frames_gap", Some([3, 4])),
        ] {
            let folder = dir.join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 1..=8u8 {
                if !missing.is_some_and(|m| m.contains(&i)) {
                    image::RgbImage::from_pixel(40, 30, image::Rgb([i * 30, 90, 200 - i * 20]))
                        .save(folder.join(format!("img_{i:05}.jpg")))
                        .unwrap();
                }
            }
            frames.push((folder, if missing.is_some() { Fails } else { Ok }));
        }
        Corpus {
            dir,
            weights,
            videos,
            frames,
            unrotated,
        }
    })
}

/// A `path label` (or `path 8 label` for frames) list of `entries`, labels cycling.
fn list(name: &str, entries: &[(PathBuf, Expect)], frames: bool) -> PathBuf {
    let text: String = entries
        .iter()
        .enumerate()
        .map(|(i, (p, _))| {
            let n = if frames { " 8" } else { "" };
            format!("{}{n} {}\n", p.display(), i % CLASSES)
        })
        .collect();
    let path = corpus().dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Checks one command's per-input outcome against `expect`: `failed` is the set of inputs it
/// reported as failed (each must also be named on stderr).
fn check_outcomes(
    what: &str,
    entries: &[(PathBuf, Expect)],
    failed: &BTreeSet<PathBuf>,
    stderr: &str,
) {
    for (p, e) in entries {
        let fails = failed.contains(p);
        match e {
            Expect::Ok => assert!(!fails, "{what}: {} failed:\n{stderr}", p.display()),
            Expect::Fails => assert!(fails, "{what}: {} did not fail:\n{stderr}", p.display()),
            Expect::Either => {}
        }
        if fails {
            assert!(
                stderr.contains(s(p)),
                "{what}: {} not named:\n{stderr}",
                p.display()
            );
        }
    }
}

#[test]
fn predict_names_and_counts_every_bad_input_and_classifies_the_rest() {
    let c = corpus();
    let mut inputs: Vec<(PathBuf, Expect)> = c.videos.clone();
    // A folder of frames holds no video: predict says so rather than skipping it silently.
    inputs.push((c.frames[0].0.clone(), Expect::Fails));
    let mut args = vec![
        "predict",
        "--weights",
        s(&c.weights),
        "--json",
        "--topk",
        "3",
    ];
    args.extend(SIZES);
    args.extend(inputs.iter().map(|(p, _)| s(p)));
    let out = tsm(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), inputs.len(), "one line per input:\n{stdout}");
    let mut failed = BTreeSet::new();
    for row in &rows {
        let path = PathBuf::from(row["path"].as_str().unwrap());
        if row.get("error").is_some() {
            assert!(stderr.contains(&format!("skipped {}", path.display())));
            failed.insert(path);
        } else {
            let sum: f64 = row["topk"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["score"].as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-4, "{row}");
        }
    }
    check_outcomes("predict", &inputs, &failed, &stderr);
    let summary = format!(
        "predicted {} of {} videos",
        inputs.len() - failed.len(),
        inputs.len()
    );
    assert!(stderr.contains(&summary), "`{summary}` missing:\n{stderr}");
    assert!(
        stderr.contains(&format!("; {} failed", failed.len())),
        "{stderr}"
    );
    println!("predict: {} of {} failed", failed.len(), inputs.len());
}

/// Runs `eval` over `entries` and checks outcomes, summary, predictions file and exit status.
fn eval_list(name: &str, entries: &[(PathBuf, Expect)], frames: bool) {
    let c = corpus();
    let list = list(&format!("{name}.txt"), entries, frames);
    let out_dir = c.dir.join(name);
    let mut args = vec!["eval", "--weights", s(&c.weights), "--list", s(&list)];
    args.extend(["--out", s(&out_dir), "--predictions", "jsonl"]);
    if frames {
        args.extend(["--format", "frames"]);
    }
    args.extend(SIZES);
    let out = tsm(&args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let failed: BTreeSet<PathBuf> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("tsm-cli: skipped "))
        .filter_map(|l| {
            entries
                .iter()
                .enumerate()
                .find(|(i, (p, _))| l.starts_with(&format!("{}:{} {}:", s(&list), i + 1, s(p))))
                .map(|(_, (p, _))| p.clone())
        })
        .collect();
    check_outcomes(name, entries, &failed, &stderr);
    let ok = entries.len() - failed.len();
    assert!(
        stdout.contains(&format!("evaluated {ok} of {} videos", entries.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("failed: {} videos", failed.len())),
        "{stdout}"
    );
    let preds = std::fs::read_to_string(out_dir.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.lines().count(), ok);
    let listed = std::fs::read_to_string(out_dir.join("failed.txt")).unwrap();
    assert_eq!(listed.lines().count(), failed.len(), "{listed}");
}

#[test]
fn eval_names_and_counts_every_bad_input_and_scores_the_rest() {
    let c = corpus();
    eval_list("eval-videos", &c.videos, false);
    eval_list("eval-frames", &c.frames, true);
}

/// A tiny R18 recipe over `train` (validated on `valid`) into `out`: 32 px clips of 4 frames.
fn train_config(name: &str, train: &Path, valid: &Path, format: &str, epochs: usize) -> PathBuf {
    let c = corpus();
    let text = format!(
        r#"
[model]
depth = 18
num_seg = 4
num_classes = {CLASSES}

[data]
format = "{format}"
train_list = "{train}"
valid_list = "{valid}"
batch_size = 2
drop_last = false
num_workers = 2
max_failed_fraction = 0.9
sampling = {{ segments = {{ num_seg = 4, seg_len = 1 }} }}

[data.train_pipeline]
transforms = [
  {{ MultiScaleCrop = {{ target_size = 36 }} }},
  {{ RandomCrop = {{ target_size = 32 }} }},
]

[data.valid_pipeline]
transforms = [
  {{ Scale = {{ short_size = 32, fixed_ratio = false }} }},
  {{ CenterCrop = {{ target_size = 32 }} }},
]

[train]
epochs = {epochs}
seed = 5

[lr]
warmup_start_lr = 0.01
warmup_epochs = 0
cosine_base_lr = 0.01

[output]
dir = "{out}"
"#,
        train = train.display(),
        valid = valid.display(),
        out = c.dir.join(name).display(),
    );
    let path = c.dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `train` over `entries` (train and valid lists both): every bad sample named in a warning,
/// counted in the epoch summaries and the final line, status 2, the final checkpoint written.
fn train_list(name: &str, entries: &[(PathBuf, Expect)], frames: bool) {
    let list = list(&format!("{name}.txt"), entries, frames);
    let format = if frames { "frames" } else { "videos" };
    let cfg = train_config(name, &list, &list, format, 1);
    let _run = TestDir::fresh(corpus().dir.join(name));
    let out = tsm(&["train", "-c", s(&cfg)]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let failed: BTreeSet<PathBuf> = entries
        .iter()
        .filter(|(p, _)| {
            stderr
                .lines()
                .any(|l| l.starts_with("warning: skipped sample: ") && l.contains(s(p)))
        })
        .map(|(p, _)| p.clone())
        .collect();
    check_outcomes(name, entries, &failed, &stderr);
    // Training (drop_last off) and validation each load every sample once; their summaries
    // count the warnings, and the final line their sum.
    let warnings = stderr
        .lines()
        .filter(|l| l.starts_with("warning: skipped sample: "))
        .count();
    assert!(warnings >= failed.len(), "{stderr}");
    let counted: usize = ["epoch", "val"]
        .iter()
        .map(|kind| {
            // `END epoch:1   epoch loss_avg: ...` (training) and `END epoch:1   val   ...`
            let line = stdout
                .lines()
                .find(|l| l.starts_with("END epoch:1") && l.split_whitespace().nth(2) == Some(kind))
                .unwrap_or_else(|| panic!("no {kind} summary:\n{stdout}"));
            line.rsplit("failed: ")
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, warnings, "{stdout}\n{stderr}");
    let done = stdout.lines().find(|l| l.starts_with("done: ")).unwrap();
    assert!(
        done.contains(&format!("; {warnings} sample loads skipped")),
        "{done}"
    );
    assert!(corpus()
        .dir
        .join(name)
        .join("epoch_00001.safetensors")
        .exists());
}

#[test]
fn train_names_and_counts_every_bad_sample_and_trains_on_the_rest() {
    let c = corpus();
    // 1x1 frames decode, but MultiScaleCrop cannot cut its smaller boxes from one pixel
    // (PaddleVideo's fails there too): training skips such a video, naming it.
    let videos: Vec<_> = c
        .videos
        .iter()
        .map(|(p, e)| {
            let e = if p.ends_with("one_by_one.mkv") {
                Expect::Fails
            } else {
                *e
            };
            (p.clone(), e)
        })
        .collect();
    train_list("train-videos", &videos, false);
    train_list("train-frames", &c.frames, true);
}

/// Rotation metadata is not applied: the rotated file gives its source's exact tensor.
#[test]
fn rotation_metadata_is_not_applied() {
    let c = corpus();
    let tensor = |video: &Path, name: &str| {
        let out = c.dir.join(name);
        let mut args = vec!["preprocess", s(video), "--num-seg", "4", "--out", s(&out)];
        args.extend(["--short-size", "48", "--crop-size", "48"]);
        let run = tsm(&args);
        assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
        test_support::read_safetensors(&out)["clips"].clone()
    };
    let rotated = &c
        .videos
        .iter()
        .find(|(p, _)| p.ends_with("rotated.mp4"))
        .unwrap()
        .0;
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_streams", s(rotated)])
        .output()
        .unwrap();
    let info = text(&probe.stdout);
    assert!(
        info.contains("rotation=90") || info.contains("rotation=-90"),
        "the test file carries no rotation:\n{info}"
    );
    let a = tensor(rotated, "rotated.safetensors");
    let b = tensor(&c.unrotated, "unrotated.safetensors");
    assert_eq!(a.shape, b.shape);
    assert!(a.data == b.data, "rotation changed the frames");
}

/// The good videos of the corpus, twice over, as a list (6 samples: 3 iterations of 2).
fn good_list(name: &str) -> PathBuf {
    let good: Vec<(PathBuf, Expect)> = corpus()
        .videos
        .iter()
        .filter(|(p, _)| p.file_name().unwrap().to_string_lossy().starts_with("good"))
        .cloned()
        .collect();
    let twice: Vec<_> = good.iter().chain(&good).cloned().collect();
    list(name, &twice, false)
}

/// Every tensor of a safetensors file is finite.
fn all_finite(path: &Path) -> bool {
    test_support::read_safetensors(path)
        .values()
        .all(|t| t.data.iter().all(|v| v.is_finite()))
}

#[test]
fn a_diverging_run_stops_naming_epoch_and_iteration_and_keeps_its_checkpoint() {
    let c = corpus();
    let list = good_list("diverge.txt");
    let cfg = train_config("diverge", &list, &list, "videos", 2);
    let run = TestDir::fresh(c.dir.join("diverge"));
    // Epoch 1 at lr 0.01; epoch 2 (one schedule step per epoch) at ~1e30: its first update
    // sends the weights to infinity, and the loss of its second iteration is not finite.
    let out = tsm(&[
        "train",
        "-c",
        s(&cfg),
        "-o",
        "lr.iter_step=false",
        "-o",
        "lr.warmup_epochs=1",
        "-o",
        "lr.cosine_base_lr=1e30",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("training diverged: loss is")
            && stderr.contains("at epoch 2, iteration 1")
            && stderr.contains(s(&run)),
        "{stderr}"
    );
    let kept = run.join("epoch_00001.safetensors");
    assert!(all_finite(&kept) && all_finite(&run.join("epoch_00001.state.safetensors")));
    assert!(!run.join("epoch_00002.safetensors").exists());
    let info = tsm(&["info", s(&kept)]);
    assert_eq!(info.status.code(), Some(0), "{}", text(&info.stderr));

    // One iteration per epoch, epoch 2 at 1e300 (infinite once in f32): no loss is computed
    // after the bad update, so the checkpoint write is what refuses the non-finite weights.
    let cfg = train_config("diverge-last", &list, &list, "videos", 2);
    let run = TestDir::fresh(c.dir.join("diverge-last"));
    let out = tsm(&[
        "train",
        "-c",
        s(&cfg),
        "-o",
        "train.max_iters=1",
        "-o",
        "lr.iter_step=false",
        "-o",
        "lr.warmup_epochs=1",
        "-o",
        "lr.cosine_base_lr=1e300",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("epoch_00002.safetensors")
            && stderr.contains("NaN or infinite values after epoch 2: training diverged"),
        "{stderr}"
    );
    assert!(all_finite(&run.join("epoch_00001.safetensors")));
    assert!(!run.join("epoch_00002.safetensors").exists());
}

#[test]
fn an_unwritable_output_is_reported_before_training_starts() {
    let c = corpus();
    let list = good_list("unwritable.txt");
    let cfg = train_config("unwritable", &list, &list, "videos", 1);
    // Tests may run as root, whom a read-only mode does not stop: a path below a regular file,
    // and one in /proc, are unwritable for everyone.
    let file = c.dir.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    for dir in [file.join("run"), PathBuf::from("/proc/tsm-cli-test-run")] {
        let out = tsm(&["train", "-c", s(&cfg), "--output", s(&dir)]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(s(&dir)), "{stderr}");
        assert!(
            !stdout.contains("train step"),
            "training started:\n{stdout}"
        );
    }
}

#[test]
fn a_full_disk_is_reported_at_the_failing_write_and_earlier_checkpoints_survive() {
    let c = corpus();
    let list = good_list("full.txt");
    let cfg = train_config("full", &list, &list, "videos", 2);
    let run = TestDir::fresh(c.dir.join("full"));
    // Epoch 2's model file is written through its temporary name, which leads to /dev/full:
    // every write there fails with ENOSPC, as on a full disk.
    let tmp = run.join("epoch_00002.safetensors.tmp");
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    let out = tsm(&["train", "-c", s(&cfg)]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(s(&tmp)) && stderr.contains("No space left on device"),
        "{stderr}"
    );
    assert!(
        stdout.contains("END epoch:2"),
        "failed before epoch 2 ended:\n{stdout}"
    );
    let first = std::fs::read(run.join("epoch_00001.safetensors")).unwrap();
    assert!(!run.join("epoch_00002.state.safetensors").exists());

    // Space again: the run resumes from the intact epoch 1 and finishes.
    std::fs::remove_file(&tmp).unwrap();
    let out = tsm(&["train", "-c", s(&cfg), "--resume"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("epoch_00001.safetensors (epoch 1,"),
        "{stdout}"
    );
    assert!(run.join("epoch_00002.safetensors").exists());
    assert!(first == std::fs::read(run.join("epoch_00001.safetensors")).unwrap());
}

#[test]
fn predict_memory_stays_flat_over_1000_videos() {
    let c = corpus();
    let src = c.dir.join("small.avi");
    lavfi(
        "testsrc=size=48x32:rate=10",
        &src,
        &["-frames:v", "8", "-c:v", "mpeg4"],
    );
    let mut peaks = Vec::new();
    for n in [100, 1000] {
        let folder = c.dir.join(format!("load{n}"));
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..n {
            std::fs::hard_link(&src, folder.join(format!("v{i:04}.avi"))).unwrap();
        }
        let mut args = vec![
            "predict",
            "--weights",
            s(&c.weights),
            "--json",
            "--topk",
            "1",
        ];
        args.extend(SIZES);
        args.push(s(&folder));
        let (stdout, rss) = common::peak_rss_kib(&args);
        let done = stdout.lines().filter(|l| l.contains("\"topk\"")).count();
        assert_eq!(done, n, "results for {done} of {n} videos");
        println!(
            "predict over {n} videos: peak RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        peaks.push(rss);
    }
    // Memory, not time: 10 times the videos may not cost half as much memory again (a leak
    // of 1 MiB per video would cost 900 MiB more).
    assert!(
        peaks[1] * 2 <= peaks[0] * 3,
        "peak RSS {} KiB over 1000 videos, {} KiB over 100",
        peaks[1],
        peaks[0]
    );
}
