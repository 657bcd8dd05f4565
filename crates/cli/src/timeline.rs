//! `tsm-cli timeline`: what happens when in a long video or a live stream. A window slides over
//! the video, each window is sampled as `predict` samples a whole clip, and the windows are
//! classified in batches as they close: JSON lines per window, merged segments, a picture.
//!
//! A decode thread reads the input forward once (video-io's `FrameStream`, keeping only the
//! frames open windows sample: `SlidingWindows`) and hands closed windows to the model through
//! a bounded channel, so decoding and the model overlap and memory does not grow with the
//! input's length.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use video_io::{
    DecodeOptions, FrameStream, Next, Sampling, SlidingWindows, StreamEnd, StreamOptions,
    StreamSource, Window,
};

use crate::common::{classifier, top_k, InferenceArgs, SpatialViews, TemporalViews, ViewArgs};
use crate::labels::Labels;
use crate::plot::{timeline_png, TimelineCell};
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  # a file of any length: JSON lines per window on stdout, the picture, the segments
  tsm-cli timeline --weights pptsm_k400.safetensors --labels assets/labels/kinetics400.txt \\
      --window 2s --stride 1s --plot timeline.png match.mp4 > windows.jsonl
  tsm-cli timeline --weights pptsm_k400.safetensors --segments --min-score 0.5 \\
      --json windows.jsonl match.mp4
  # standard input
  ffmpeg -i camera.mkv -c copy -f mpegts - | tsm-cli timeline --weights pptsm_k400.safetensors -
  # a URL FFmpeg opens: UDP, RTSP, HTTP
  tsm-cli timeline --weights pptsm_k400.safetensors --read-timeout 5 udp://127.0.0.1:5000
  tsm-cli timeline --weights pptsm_k400.safetensors rtsp://camera.local/stream

Windows: --window and --stride in seconds (`2s`, `2.5`) or frames (`64f`); seconds become
frames at the stream's nominal frame rate. Window k covers frames k*stride .. k*stride+window
and is sampled as `predict` samples a video of that many frames (the model's num_seg segments,
the middle frame of each; or the [data] sampling of -c FILE), then scaled and cropped as
predict does. A tail shorter than a window is not classified.

Output: per window one JSON line
{\"window\": 0, \"start\": 0.0, \"end\": 2.0, \"frames\": [0, 50], \"topk\": [{\"class\": 3,
\"label\": \"name\" or null, \"score\": 0.93}, ...]}, times in seconds from the first frame by
the stream's timestamps, `frames` the covered range (end exclusive); a window the pipeline cannot
take gives {\"window\": .., \"error\": ..}. Lines are written as windows close, so a live stream
shows results as it plays. --json FILE writes them to FILE instead of stdout. --segments merges
consecutive windows with the same top class into {\"segment\": 0, \"class\": .., \"label\": ..,
\"start\": .., \"end\": .., \"windows\": n, \"score\": mean top score} lines on stdout (then
window lines go only to --json FILE); a segment spans from halfway between its first window's
centre and the previous window's to halfway between its last and the next (the input's ends at
the ends), so segments tile the time; --min-score drops segments whose mean score is lower.
--plot PNG draws a band per class that is ever the top class, shaded by its score, against
mm:ss.

Streams: a stream that sends nothing for --read-timeout seconds, breaks (a read error), ends
inside a packet or before the duration its container declares, or is stopped with Ctrl-C (or
SIGTERM) ends with what was classified and a summary on stderr saying why; a second Ctrl-C
exits at once. Exit
status 0 when the input ended and every window was classified; 2 when it ended early (stall,
break, truncation, Ctrl-C) or some windows failed, with the reason on stderr; 1 on an error that
stopped the command (an unreadable input, bad weights). A UDP stream has no end marker, so it
always ends by the read timeout (exit 2).";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint (safetensors with the model config in its metadata).
    #[arg(long)]
    weights: PathBuf,
    /// Class names: one per line, or `index name` lines (UCF101's classInd.txt).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Window length: seconds (`2s`, `2.5`) or frames (`64f`).
    #[arg(long, default_value = "2s", value_parser = parse_span)]
    window: Span,
    /// Start of one window to the next: seconds or frames, as --window.
    #[arg(long, default_value = "1s", value_parser = parse_span)]
    stride: Span,
    /// Classes written per window.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Windows per forward pass, at most (a live stream's windows go as they close).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    inference: InferenceArgs,
    /// Write the window lines to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the timeline as a PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print segments (consecutive windows with one top class) on stdout.
    #[arg(long)]
    segments: bool,
    /// With --segments: drop segments whose mean top score is below this.
    #[arg(long, default_value_t = 0.0, requires = "segments")]
    min_score: f32,
    /// Seconds a read may wait for data before the stream counts as stalled.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    read_timeout: Duration,
    #[command(flatten)]
    spatial: SpatialViews,
    /// A video file, `-` for standard input, or a URL FFmpeg opens (udp://, rtsp://, http://).
    input: OsString,
}

/// A window length or stride as given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    Seconds(f64),
    Frames(usize),
}

fn parse_span(s: &str) -> std::result::Result<Span, String> {
    let bad = || format!("`{s}`: give seconds (`2s`, `2.5`) or frames (`64f`), more than 0");
    if let Some(n) = s.strip_suffix('f') {
        return n
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(Span::Frames)
            .ok_or_else(bad);
    }
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Span::Seconds)
        .ok_or_else(bad)
}

fn parse_seconds(s: &str) -> std::result::Result<Duration, String> {
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("`{s}`: give seconds, more than 0"))
}

impl Span {
    /// In frames at `fps`.
    fn frames(self, fps: Option<f64>, flag: &str, source: &StreamSource) -> Result<usize> {
        match self {
            Span::Frames(n) => Ok(n),
            Span::Seconds(s) => {
                let fps = fps.ok_or_else(|| {
                    anyhow!(
                        "{source}: the stream does not say its frame rate; give --{flag} in \
                         frames (`64f`)"
                    )
                })?;
                Ok(((s * fps).round() as usize).max(1))
            }
        }
    }
}

/// What the decode thread found when it opened the input.
struct Opened {
    fps: Option<f64>,
    window: usize,
    stride: usize,
}

/// How the decode thread ended.
struct Decoded {
    end: StreamEnd,
    frames: usize,
    /// Seconds of stream decoded.
    seconds: f64,
    decode_errors: usize,
}

/// Opens the input and cuts it into windows, sending each as it closes. Runs on its own
/// thread: the stream is opened there (FFmpeg's RGB converter may not move between threads).
fn decode(
    source: StreamSource,
    options: StreamOptions,
    stop: Arc<AtomicBool>,
    (sampling, window, stride): (Sampling, Span, Span),
    opened: SyncSender<Result<Opened>>,
    windows_out: SyncSender<Window>,
) -> Option<Decoded> {
    let setup = || -> Result<(FrameStream, SlidingWindows, Opened)> {
        let stream = FrameStream::open(&source, options, stop)?;
        let fps = stream.frame_rate();
        let window = window.frames(fps, "window", &source)?;
        let stride = stride.frames(fps, "stride", &source)?;
        let windows = SlidingWindows::new(&sampling, window, stride)
            .with_context(|| format!("{source}: windows of {window} frames"))?;
        Ok((
            stream,
            windows,
            Opened {
                fps,
                window,
                stride,
            },
        ))
    };
    let (mut stream, mut windows) = match setup() {
        Ok((stream, windows, info)) => {
            opened.send(Ok(info)).ok()?;
            (stream, windows)
        }
        Err(e) => {
            let _ = opened.send(Err(e));
            return None;
        }
    };
    let frame_duration = stream.frame_rate().map_or(0.0, |r| 1.0 / r);
    let (mut frames, mut seconds) = (0, 0.0);
    let end = loop {
        match stream.next_frame(|i| windows.wants(i)) {
            Next::Frame(frame) => {
                frames += 1;
                seconds = frame.time + frame_duration;
                match windows.push(frame, frame_duration) {
                    Ok(Some(w)) => {
                        if windows_out.send(w).is_err() {
                            // The model side stopped (a write error there); it reports why.
                            break StreamEnd::Interrupted;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break StreamEnd::Broken(e.to_string()),
                }
            }
            Next::End(end) => break end,
        }
    };
    Some(Decoded {
        end,
        frames,
        seconds,
        decode_errors: stream.decode_errors(),
    })
}

/// One classified window, as the picture needs it.
struct Scored {
    start: f64,
    end: f64,
    /// (class, score), best first.
    top: Vec<(usize, f32)>,
}

/// Merges consecutive windows with the same top class, writing each segment as it closes.
struct Segmenter {
    min_score: f32,
    current: Option<Segment>,
    written: usize,
    dropped: usize,
}

struct Segment {
    class: usize,
    start: f64,
    /// Centre of its last window so far.
    last_centre: f64,
    last_end: f64,
    windows: usize,
    score_sum: f64,
}

impl Segmenter {
    /// Adds a window (its span and top class); writes the segment it closes, if any.
    fn push(
        &mut self,
        (start, end): (f64, f64),
        (class, score): (usize, f32),
        labels: &Labels,
        out: &mut impl Write,
    ) -> Result<()> {
        let centre = (start + end) / 2.0;
        if let Some(seg) = &mut self.current {
            if seg.class == class {
                seg.last_centre = centre;
                seg.last_end = end;
                seg.windows += 1;
                seg.score_sum += f64::from(score);
                return Ok(());
            }
        }
        // Segments meet halfway between the windows' centres.
        let start = match self.current.take() {
            Some(prev) => {
                let boundary = (prev.last_centre + centre) / 2.0;
                self.write(prev, boundary, labels, out)?;
                boundary
            }
            None => start,
        };
        self.current = Some(Segment {
            class,
            start,
            last_centre: centre,
            last_end: end,
            windows: 1,
            score_sum: f64::from(score),
        });
        Ok(())
    }

    fn finish(&mut self, labels: &Labels, out: &mut impl Write) -> Result<()> {
        if let Some(seg) = self.current.take() {
            let end = seg.last_end;
            self.write(seg, end, labels, out)?;
        }
        Ok(())
    }

    fn write(
        &mut self,
        seg: Segment,
        end: f64,
        labels: &Labels,
        out: &mut impl Write,
    ) -> Result<()> {
        let score = seg.score_sum / seg.windows as f64;
        if score < f64::from(self.min_score) {
            self.dropped += 1;
            return Ok(());
        }
        let line = json!({
            "segment": self.written,
            "class": seg.class,
            "label": labels.get(seg.class),
            "start": ms(seg.start),
            "end": ms(end),
            "windows": seg.windows,
            "score": score,
        });
        self.written += 1;
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

/// Seconds rounded to the millisecond, for JSON that reads well.
fn ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

pub fn run(args: Args, global: &Global) -> Result<Outcome> {
    if args.topk == 0 {
        bail!("--topk must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.min_score) {
        bail!("--min-score is a softmax score, between 0 and 1");
    }
    let views = ViewArgs {
        temporal: TemporalViews::uniform(),
        spatial: args.spatial.clone(),
    };
    let classifier = classifier(&args.weights, global, &args.inference, &views, args.batch)?;
    let num_classes = classifier.model().config().num_classes;
    let labels = Labels::load(args.labels.as_ref(), num_classes, &args.weights)?;
    let mut json_file = match &args.json {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };

    // Ctrl-C (or SIGTERM) raises the flag, which ends the stream at its next read; a second one
    // exits at once, in case something does hang.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
            .context("installing the Ctrl-C handler")?;
    }

    let source = StreamSource::parse(&args.input);
    let options = StreamOptions {
        read_timeout: args.read_timeout,
        decode: DecodeOptions::default(),
    };
    let (opened_tx, opened_rx) = sync_channel(1);
    // Enough closed windows to fill the next batch while this one runs.
    let (windows_tx, windows_rx) = sync_channel(args.batch.max(1));
    let plan = (
        classifier.loader().sampling().clone(),
        args.window,
        args.stride,
    );
    let decoder = {
        let (source, stop) = (source.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || decode(source, options, stop, plan, opened_tx, windows_tx))
            .context("starting the decode thread")?
    };
    let opened = match opened_rx.recv() {
        Ok(result) => result?,
        Err(_) => bail!("{source}: the decode thread stopped while opening"),
    };
    let started = Instant::now();
    let span = |frames: usize| match opened.fps {
        Some(fps) => format!("{frames} frames = {:.2} s", frames as f64 / fps),
        None => format!("{frames} frames"),
    };
    eprintln!(
        "timeline of {source}: windows of {} every {}{}",
        span(opened.window),
        span(opened.stride),
        opened
            .fps
            .map_or(String::new(), |fps| format!(" ({fps:.3} frames/s)"))
    );

    let stdout = std::io::stdout();
    let mut segmenter = args.segments.then_some(Segmenter {
        min_score: args.min_score,
        current: None,
        written: 0,
        dropped: 0,
    });
    let mut scored = Vec::new();
    let (mut classified, mut failed, mut unclassified) = (0usize, 0usize, 0usize);
    let mut covered = (f64::INFINITY, 0.0f64);
    while let Some(batch) = next_batch(&windows_rx, args.batch) {
        if stop.load(Ordering::Relaxed) {
            // Stopping: what is decoded but not yet classified is counted, not run.
            unclassified += batch.len() + windows_rx.iter().count();
            break;
        }
        let images: Vec<_> = batch.iter().map(|w| w.images.clone()).collect();
        let results = classifier.classify_frames(&images)?;
        let mut out = stdout.lock();
        for (w, result) in batch.iter().zip(results) {
            let line = match result {
                Ok(probs) => {
                    classified += 1;
                    covered = (covered.0.min(w.start), covered.1.max(w.end));
                    let best = top_k(&probs, args.topk);
                    if let Some(seg) = &mut segmenter {
                        seg.push(
                            (w.start, w.end),
                            (best[0], probs[best[0]]),
                            &labels,
                            &mut out,
                        )?;
                    }
                    if args.plot.is_some() {
                        scored.push(Scored {
                            start: w.start,
                            end: w.end,
                            top: best.iter().map(|&c| (c, probs[c])).collect(),
                        });
                    }
                    let topk: Vec<Value> = best
                        .iter()
                        .map(|&c| json!({"class": c, "label": labels.get(c), "score": probs[c]}))
                        .collect();
                    json!({"window": w.index, "start": ms(w.start), "end": ms(w.end),
                           "frames": [w.frames.start, w.frames.end], "topk": topk})
                }
                Err(reason) => {
                    failed += 1;
                    eprintln!(
                        "tsm-cli: window {} ({:.2}-{:.2} s): {reason}",
                        w.index, w.start, w.end
                    );
                    json!({"window": w.index, "start": ms(w.start), "end": ms(w.end),
                           "frames": [w.frames.start, w.frames.end], "error": reason})
                }
            };
            match &mut json_file {
                Some(file) => writeln!(file, "{line}")?,
                None if !args.segments => writeln!(out, "{line}")?,
                None => {}
            }
        }
        out.flush()?;
        if let Some(file) = &mut json_file {
            file.flush()?;
        }
    }
    let decoded = decoder
        .join()
        .map_err(|_| anyhow!("{source}: the decode thread panicked"))?;
    // No summary means opening failed, which was reported above.
    let Some(decoded) = decoded else {
        bail!("{source}: the decode thread ended without a summary");
    };
    if let Some(seg) = &mut segmenter {
        seg.finish(&labels, &mut stdout.lock())?;
    }
    if let Some(file) = &mut json_file {
        file.flush()?;
    }
    if let Some(path) = &args.plot {
        draw(path, &source, &scored, &labels, decoded.seconds)?;
    }

    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let covered = if classified == 0 {
        "nothing".to_string()
    } else {
        format!("{:.2}-{:.2} s", covered.0, covered.1)
    };
    eprintln!(
        "{classified} windows classified ({covered} of the {:.2} s decoded, {} frames) in {secs:.1} \
         s: {:.2} windows/s, {:.2}x real time; {}{}{}{}{}",
        decoded.seconds,
        decoded.frames,
        classified as f64 / secs,
        decoded.seconds / secs,
        decoded.end,
        if decoded.decode_errors > 0 {
            format!("; {} packets failed to decode", decoded.decode_errors)
        } else {
            String::new()
        },
        if failed > 0 {
            format!("; {failed} windows failed")
        } else {
            String::new()
        },
        if unclassified > 0 {
            format!("; {unclassified} decoded windows left unclassified")
        } else {
            String::new()
        },
        segmenter.as_ref().map_or(String::new(), |s| format!(
            "; {} segments{}",
            s.written,
            if s.dropped > 0 {
                format!(" ({} below --min-score dropped)", s.dropped)
            } else {
                String::new()
            }
        )),
    );
    if classified == 0 && decoded.end.is_complete() && failed == 0 {
        eprintln!(
            "tsm-cli: {source}: shorter than one window ({} frames decoded, a window is {}); \
             give a shorter --window",
            decoded.frames,
            span(opened.window)
        );
        return Ok(Outcome::SomeInputsFailed);
    }
    if !decoded.end.is_complete() {
        eprintln!("tsm-cli: {source}: {}", decoded.end);
    }
    Ok(
        if decoded.end.is_complete() && failed == 0 && unclassified == 0 {
            Outcome::Success
        } else {
            Outcome::SomeInputsFailed
        },
    )
}

/// The next windows to classify: waits for one, then takes what else is ready, up to `max`.
/// `None` once the decode thread is done and everything was taken.
fn next_batch(rx: &Receiver<Window>, max: usize) -> Option<Vec<Window>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < max.max(1) {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The picture: a band per class that is ever some window's top class, in order of first
/// appearance, each window's cell shaded by that class's score when in its top-k.
fn draw(
    path: &std::path::Path,
    source: &StreamSource,
    scored: &[Scored],
    labels: &Labels,
    seconds: f64,
) -> Result<()> {
    let mut bands: Vec<usize> = Vec::new();
    for s in scored {
        if !bands.contains(&s.top[0].0) {
            bands.push(s.top[0].0);
        }
    }
    let mut cells = Vec::new();
    for (i, s) in scored.iter().enumerate() {
        // Each window stands for the time around its centre, halfway to its neighbours'.
        let centre = |j: usize| (scored[j].start + scored[j].end) / 2.0;
        let from = if i == 0 {
            s.start
        } else {
            (centre(i - 1) + centre(i)) / 2.0
        };
        let to = if i + 1 == scored.len() {
            s.end
        } else {
            (centre(i) + centre(i + 1)) / 2.0
        };
        for (band, class) in bands.iter().enumerate() {
            if let Some(&(_, score)) = s.top.iter().find(|t| t.0 == *class) {
                cells.push(TimelineCell {
                    start: from,
                    end: to,
                    band,
                    score,
                    top: s.top[0].0 == *class,
                });
            }
        }
    }
    let names: Vec<String> = bands.iter().map(|&c| labels.display(c)).collect();
    timeline_png(
        path,
        &format!("{source}: top classes over time (shade = score, bar = top class)"),
        &names,
        &cells,
        seconds,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spans_parse() {
        assert_eq!(parse_span("2s"), Ok(Span::Seconds(2.0)));
        assert_eq!(parse_span("2.5"), Ok(Span::Seconds(2.5)));
        assert_eq!(parse_span("64f"), Ok(Span::Frames(64)));
        for bad in ["0", "0f", "-1s", "f", "2m", "nan", "1.5f"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
        let src = StreamSource::Stdin;
        assert_eq!(
            Span::Seconds(2.0)
                .frames(Some(25.0), "window", &src)
                .unwrap(),
            50
        );
        assert_eq!(
            Span::Seconds(0.01)
                .frames(Some(25.0), "window", &src)
                .unwrap(),
            1
        );
        let e = Span::Seconds(2.0)
            .frames(None, "stride", &src)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--stride in frames"), "{e}");
    }

    #[test]
    fn segments_meet_halfway_and_low_scores_drop() {
        let mut seg = Segmenter {
            min_score: 0.5,
            current: None,
            written: 0,
            dropped: 0,
        };
        let mut out = Vec::new();
        let labels = Labels::default();
        // Windows of 2 s every 1 s: classes 0, 0, 0, 1 (uncertain), 2, 2.
        for (k, (class, score)) in [(0, 0.9), (0, 0.8), (0, 0.7), (1, 0.3), (2, 0.9), (2, 0.9)]
            .into_iter()
            .enumerate()
        {
            let start = k as f64;
            seg.push((start, start + 2.0), (class, score), &labels, &mut out)
                .unwrap();
        }
        seg.finish(&labels, &mut out).unwrap();
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(seg.dropped, 1);
        // Centres 1, 2, 3 | 4 | 5, 6: boundaries at 3.5 and 4.5.
        assert_eq!(lines[0]["start"], 0.0);
        assert_eq!(lines[0]["end"], 3.5);
        assert_eq!(lines[0]["windows"], 3);
        assert!((lines[0]["score"].as_f64().unwrap() - 0.8).abs() < 1e-6);
        assert_eq!(lines[1]["class"], 2);
        assert_eq!(lines[1]["start"], 4.5);
        assert_eq!(lines[1]["end"], 7.0);
        assert_eq!(lines[1]["segment"], 1);
    }
}
