//! `tsm-cli train` learns time: on generated clips whose classes differ only in frame order
//! (test-support's `motion`: a square moving right or left, a disc growing or shrinking, the
//! second class of each pair being the first's frames reversed), the demo recipe's ResNet-18
//! TSM reaches high validation accuracy. The same run with the temporal shift off is a TSN: it
//! averages per-frame features, so its scores for a clip and for the clip reversed are equal and
//! within a pair it can only guess.
//!
//! The trained TSM then reads a long video made of runs of those classes with `tsm-cli
//! timeline`: from a file, a pipe and UDP, cut short and stalled, and over 30 minutes for memory.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{s, text};
use serde_json::Value;
use test_support::motion::{generate, long_video, Motion, MotionSet, MotionSpec, Run, FPS};

/// Validation clips per class: 32 x 4 classes = 128.
const VAL_PER_CLASS: usize = 32;

/// Of the clips whose predicted class is in the right pair, the fraction that also has the
/// right direction, with how many such clips there were.
fn direction_accuracy(confusion: &[Vec<usize>]) -> (f64, usize) {
    let (mut right_pair, mut right) = (0, 0);
    for (truth, row) in confusion.iter().enumerate() {
        let pair = truth / 2 * 2;
        right_pair += row[pair] + row[pair + 1];
        right += row[truth];
    }
    (right as f64 / right_pair.max(1) as f64, right_pair)
}

/// The last epoch's weights (not `best`, which validation chose).
fn final_weights(run: &Path) -> PathBuf {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("epoch_") && !name.contains(".state.")
        })
        .max()
        .unwrap()
}

fn top1(confusion: &[Vec<usize>]) -> f64 {
    let total: usize = confusion.iter().flatten().sum();
    let right: usize = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    right as f64 / total as f64
}

/// The TSM every test here uses: trained once on the motion set (the demo recipe).
struct Trained {
    dir: PathBuf,
    spec: MotionSpec,
    set: MotionSet,
    weights: PathBuf,
    /// Seconds its training took.
    seconds: f64,
}

fn trained_tsm() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = test_support::fresh_test_dir!("learns-time").kept();
        let spec = MotionSpec {
            motions: vec![Motion::Horizontal, Motion::Scale],
            val_per_class: VAL_PER_CLASS,
            seed: 11,
            ..MotionSpec::default()
        };
        let set = generate(&spec, &dir.join("data")).unwrap();
        let started = Instant::now();
        let run = dir.join("tsm");
        common::train_on_motion(&set, &run, &[]);
        Trained {
            weights: final_weights(&run),
            dir,
            spec,
            set,
            seconds: started.elapsed().as_secs_f64(),
        }
    })
}

#[test]
fn tsm_learns_frame_order_and_tsn_cannot() {
    let tsm = trained_tsm();
    let (dir, set) = (&tsm.dir, &tsm.set);
    let mut results = Vec::new();
    for name in ["tsm", "tsn"] {
        let started = Instant::now();
        let weights = if name == "tsm" {
            tsm.weights.clone()
        } else {
            let run = dir.join(name);
            common::train_on_motion(set, &run, &["model.shift=false".into()]);
            final_weights(&run)
        };
        let confusion = common::val_confusion(set, &weights, &dir.join(format!("{name}-eval")));
        let (direction, n) = direction_accuracy(&confusion);
        let seconds =
            started.elapsed().as_secs_f64() + if name == "tsm" { tsm.seconds } else { 0.0 };
        println!(
            "{name}: val top-1 {:.3}, right direction in {direction:.3} of the {n} clips put in the \
             right pair ({seconds:.0} s)",
            top1(&confusion),
        );
        results.push((top1(&confusion), direction, n));
    }
    let (tsm, _, _) = results[0];
    let (_, tsn_direction, n) = results[1];
    assert!(tsm >= 0.9, "the TSM reached only {tsm:.3} validation top-1");
    // A TSN's direction is a coin flip per clip: 0.5 with a standard deviation of
    // sqrt(0.25 / n); the bound is 3 of those above (a chance of about 1e-3 to exceed it by luck).
    let bound = 0.5 + 3.0 * (0.25 / n as f64).sqrt();
    assert!(
        tsn_direction <= bound,
        "a TSN cannot see frame order, yet it got the direction right in {tsn_direction:.3} of \
         {n} clips (> {bound:.3})"
    );
}

/// Windows of 16 frames (2 s at the generator's 8 frames/s) every 4 (0.5 s), as numbers and
/// as flags. The long video is made of the training set's 4-frame clips, and a window is
/// sampled densely as 4 such clips (`SAMPLING`): aligned windows are 4 whole clips, whose
/// logits are averaged, so one clip the model gets wrong does not split a segment.
const WINDOW: usize = 16;
const STRIDE: usize = 4;
const WINDOW_FLAG: &str = "16f";
const STRIDE_FLAG: &str = "4f";
const SAMPLING: &str = "[data]
sampling = { dense = { num_seg = 4, window = 4, num_clips = 4 } }
valid_pipeline = { transforms = [] }
";

/// A stall ends a stream after this many seconds.
const READ_TIMEOUT: &str = "3";

/// The long video the timeline tests read: runs of 6 clips of 4 frames (3 s) of move_right,
/// move_left, shrink and grow. Two of its three boundaries keep the shape and flip the
/// direction, which only frame order shows.
struct LongVideo {
    avi: PathBuf,
    /// The same stream in MPEG-TS, as pipes and UDP carry it.
    ts: PathBuf,
    /// (label, first frame, end frame) of each run.
    runs: Vec<(usize, usize, usize)>,
    /// What `timeline` gives for the file.
    windows: Vec<Value>,
}

fn long() -> &'static LongVideo {
    static LONG: OnceLock<LongVideo> = OnceLock::new();
    LONG.get_or_init(|| {
        let tsm = trained_tsm();
        let dir = tsm.dir.join("timeline");
        let spec = MotionSpec {
            seed: 5,
            ..tsm.spec.clone()
        };
        let labels = [0, 1, 3, 2];
        let runs: Vec<Run> = labels
            .iter()
            .map(|&label| Run { label, clips: 6 })
            .collect();
        let avi = dir.join("long.avi");
        let spans = long_video(&spec, &runs, &avi).unwrap();
        let ts = dir.join("long.ts");
        test_support::ffmpeg(&["-i", s(&avi), "-c", "copy", "-f", "mpegts", s(&ts)]);
        let config = dir.join("timeline.toml");
        std::fs::write(&config, SAMPLING).unwrap();
        CONFIG.set(config).unwrap();
        let out = timeline(&[s(&avi)]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let windows = window_lines(&text(&out.stdout));
        let frames = spans.last().unwrap().1;
        assert_eq!(windows.len(), (frames - WINDOW) / STRIDE + 1);
        LongVideo {
            avi,
            ts,
            runs: labels
                .iter()
                .zip(spans)
                .map(|(&l, (a, b))| (l, a, b))
                .collect(),
            windows,
        }
    })
}

/// The windows' sampling and pipeline (`SAMPLING`), written by [`long`] before its first run.
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

fn timeline_args<'a>(tsm: &'a Trained, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "timeline",
        "--weights",
        s(&tsm.weights),
        "--labels",
        s(&tsm.set.labels),
        "-c",
        s(CONFIG.get().expect("long() writes the config first")),
        "--window",
        WINDOW_FLAG,
        "--stride",
        STRIDE_FLAG,
        "--read-timeout",
        READ_TIMEOUT,
        "--topk",
        "2",
    ];
    args.extend(extra);
    args
}

/// `tsm-cli timeline` with the trained model and the test's windows, then `extra`.
fn timeline(extra: &[&str]) -> Output {
    common::tsm_with_threads(&timeline_args(trained_tsm(), extra))
}

fn window_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("window").is_some())
        .collect()
}

/// `got` are the first windows of `want`: the same frames, times and top class, scores equal
/// up to batching's rounding.
fn assert_prefix(got: &[Value], want: &[Value], what: &str) {
    assert!(
        got.len() <= want.len(),
        "{what}: {} windows, the file has {}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(want) {
        for key in ["window", "frames", "start", "end"] {
            assert_eq!(g[key], w[key], "{what}: {key} of {g} vs {w}");
        }
        let (gt, wt) = (&g["topk"][0], &w["topk"][0]);
        assert_eq!(gt["class"], wt["class"], "{what}: {g} vs {w}");
        let (a, b) = (gt["score"].as_f64().unwrap(), wt["score"].as_f64().unwrap());
        assert!(
            (a - b).abs() < 1e-4,
            "{what}: score {a} vs {b} in window {}",
            g["window"]
        );
    }
}

/// A running `tsm-cli`, its stdout read line by line as it comes.
struct Live {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    seen: Vec<String>,
}

impl Live {
    fn start(args: &[&str], stdin: Stdio) -> Live {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tsm-cli"))
            .args(args)
            .env("RAYON_NUM_THREADS", "2")
            .env_remove("RUST_BACKTRACE")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut err, &mut s).unwrap();
            s
        });
        Live {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits until `n` window lines have come (as the windows close, not at the end).
    fn wait_for_windows(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(e) => panic!("{} window lines, then {e:?}", self.seen.len()),
            }
        }
    }

    /// Waits for the exit (failing if it takes longer than `limit`: a hang); returns the exit
    /// code, every window line and stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<Value>, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                panic!("tsm-cli timeline still running after {limit:?}: it hangs");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.seen.extend(self.lines.iter());
        let stdout = self.seen.join("\n");
        (
            status.code(),
            window_lines(&stdout),
            self.stderr.join().unwrap(),
        )
    }
}

/// A free UDP port on the loopback interface.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a UDP socket is bound to `port` (FFmpeg binds the port on any address); the
/// receiver must listen before the sender sends, or the stream's start would be lost.
fn wait_until_bound(port: u16) {
    let wanted = format!(":{port:04X}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&wanted))
        })
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on udp port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ffmpeg -re` (at `speed` times real time) sending `video` as MPEG-TS to 127.0.0.1:`port`.
fn udp_sender(video: &Path, port: u16, speed: &str) -> Child {
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-readrate",
            speed,
            "-i",
        ])
        .arg(video)
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(format!("udp://127.0.0.1:{port}?pkt_size=1316"))
        .stdin(Stdio::null())
        .spawn()
        .expect("the ffmpeg CLI is required (cargo xtask setup installs it)")
}

/// The receiver's URL: a large FIFO so that nothing is dropped while the model is busy.
fn udp_url(port: u16) -> String {
    format!("udp://127.0.0.1:{port}?fifo_size=100000&overrun_nonfatal=1")
}

#[test]
fn timeline_segments_follow_the_class_boundaries() {
    let tsm = trained_tsm();
    let long = long();
    let dir = tsm.dir.join("timeline");
    let (png, jsonl) = (dir.join("timeline.png"), dir.join("windows.jsonl"));
    // The window across the move_right | move_left boundary holds two clips of each: their
    // motions cancel, and the model's answer for it is uncertain (0.63 here, the segments'
    // means 0.88 and more); that is what --min-score is for.
    let out = timeline(&[
        "--segments",
        "--min-score",
        "0.75",
        "--json",
        s(&jsonl),
        "--plot",
        s(&png),
        s(&long.avi),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    println!("{stderr}");
    // --json gets the windows; stdout the segments.
    let written = window_lines(&std::fs::read_to_string(&jsonl).unwrap());
    assert_prefix(&written, &long.windows, "--json");
    assert_eq!(written.len(), long.windows.len());
    let segments: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let found: Vec<String> = segments
        .iter()
        .map(|s| format!("{} {}-{}", s["label"], s["start"], s["end"]))
        .collect();
    assert_eq!(segments.len(), long.runs.len(), "segments: {found:?}");
    let stride = STRIDE as f64 / f64::from(FPS);
    for (seg, &(label, first, end)) in segments.iter().zip(&long.runs) {
        assert_eq!(seg["class"], label, "segments: {found:?}");
        for (key, frame) in [("start", first), ("end", end)] {
            let (got, want) = (seg[key].as_f64().unwrap(), frame as f64 / f64::from(FPS));
            assert!(
                (got - want).abs() <= stride,
                "segment {key} {got} s, the run's is {want} s (stride {stride} s): {found:?}"
            );
        }
    }
    let picture = image::open(&png).unwrap();
    assert!(
        picture.width() >= 1000 && picture.height() >= 200,
        "{png:?}"
    );
}

#[test]
fn timeline_reads_a_pipe_and_udp_as_it_reads_the_file() {
    let long = long();
    // Through a pipe: ffmpeg remuxing the file to MPEG-TS on its stdout.
    let mut remux = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&long.avi)
        .args(["-c", "copy", "-f", "mpegts", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Stdio::from(remux.stdout.take().unwrap());
    let (code, windows, stderr) =
        Live::start(&timeline_args(trained_tsm(), &["-"]), pipe).finish(Duration::from_secs(120));
    assert!(remux.wait().unwrap().success());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("end of stream"), "{stderr}");
    assert_eq!(windows.len(), long.windows.len(), "{stderr}");
    assert_prefix(&windows, &long.windows, "pipe");

    // Over UDP at 4x real time (ffmpeg's -re, faster); UDP has no end, so the stream ends by
    // the read timeout. Loopback with a large receive FIFO loses nothing at this rate.
    let port = free_udp_port();
    let url = udp_url(port);
    let live = Live::start(&timeline_args(trained_tsm(), &[&url]), Stdio::null());
    wait_until_bound(port);
    let mut sender = udp_sender(&long.avi, port, "4");
    let (code, windows, stderr) = live.finish(Duration::from_secs(120));
    assert!(sender.wait().unwrap().success());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stalled: no data for 3.0 s"), "{stderr}");
    assert_eq!(windows.len(), long.windows.len(), "{stderr}");
    assert_prefix(&windows, &long.windows, "udp");
}

#[test]
fn broken_streams_end_with_what_was_classified() {
    let long = long();
    let dir = trained_tsm().dir.join("timeline");

    // A file cut in half: its header promised 16 s.
    let bytes = std::fs::read(&long.avi).unwrap();
    let cut = dir.join("cut.avi");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = timeline(&[s(&cut)]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("truncated: "), "{stderr}");
    let windows = window_lines(&text(&out.stdout));
    assert!(windows.len() >= long.windows.len() / 3, "{stderr}");
    assert_prefix(&windows, &long.windows, "cut file");

    // A pipe that stops sending but stays open: the read timeout ends it.
    let ts = std::fs::read(&long.ts).unwrap();
    let mut live = Live::start(&timeline_args(trained_tsm(), &["-"]), Stdio::piped());
    let mut stdin = live.child.stdin.take().unwrap();
    stdin.write_all(&ts[..ts.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let (code, windows, stderr) = live.finish(Duration::from_secs(60));
    drop(stdin);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stalled"), "{stderr}");
    assert!(!windows.is_empty(), "{stderr}");
    assert_prefix(&windows, &long.windows, "stalled pipe");

    // A UDP sender killed mid-way, while windows are being printed as they close.
    let port = free_udp_port();
    let url = udp_url(port);
    let mut live = Live::start(&timeline_args(trained_tsm(), &[&url]), Stdio::null());
    wait_until_bound(port);
    let mut sender = udp_sender(&long.avi, port, "1");
    live.wait_for_windows(3);
    sender.kill().unwrap();
    sender.wait().unwrap();
    let (code, windows, stderr) = live.finish(Duration::from_secs(60));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("stalled"), "{stderr}");
    assert!(
        windows.len() >= 3 && windows.len() < long.windows.len(),
        "{stderr}"
    );
    assert_prefix(&windows, &long.windows, "killed sender");

    // Ctrl-C: a summary, not a hang.
    let port = free_udp_port();
    let url = udp_url(port);
    let mut live = Live::start(&timeline_args(trained_tsm(), &[&url]), Stdio::null());
    wait_until_bound(port);
    let mut sender = udp_sender(&long.avi, port, "1");
    live.wait_for_windows(2);
    let pid = libc::pid_t::try_from(live.child.id()).unwrap();
    // SAFETY: signals our own child, which is still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let (code, windows, stderr) = live.finish(Duration::from_secs(10));
    sender.kill().unwrap();
    sender.wait().unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("windows classified"),
        "{stderr}"
    );
    assert_prefix(&windows, &long.windows, "Ctrl-C");
}

#[test]
fn timeline_memory_stays_flat_over_30_minutes() {
    let tsm = trained_tsm();
    let dir = tsm.dir.join("timeline-memory");
    std::fs::create_dir_all(&dir).unwrap();
    let mut peaks = Vec::new();
    for minutes in [5, 30] {
        let video = dir.join(format!("{minutes}min.avi"));
        let seconds = (minutes * 60).to_string();
        // 160x120 at 4 frames/s: a leak of every decoded frame would hold 400 MiB at 30 min.
        test_support::ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=4",
            "-t",
            &seconds,
            "-c:v",
            "mpeg4",
            "-g",
            "40",
            s(&video),
        ]);
        let args = [
            "timeline",
            "--weights",
            s(&tsm.weights),
            "--window",
            "4f",
            "--stride",
            "30s",
            "--short-size",
            "32",
            "--crop-size",
            "32",
            "--topk",
            "1",
            s(&video),
        ];
        let (stdout, rss) = common::peak_rss_kib(&args);
        assert_eq!(window_lines(&stdout).len(), minutes * 2, "{minutes} min");
        println!(
            "timeline over {minutes} min: peak RSS {:.1} MiB",
            rss as f64 / 1024.0
        );
        peaks.push(rss);
    }
    assert!(
        peaks[1] * 5 <= peaks[0] * 6,
        "peak RSS {} KiB over 30 minutes, {} KiB over 5",
        peaks[1],
        peaks[0]
    );
}
