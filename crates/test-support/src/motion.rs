//! A small data set of generated clips whose classes differ only in frame order: a shape moving
//! right or left, down or up, growing or shrinking, rotating clockwise or counter-clockwise.
//!
//! The classes come in pairs and the second class of a pair is made by drawing a clip of the
//! first (same parameter distribution) and reversing its frames. Every frame, and every set of
//! frames, is therefore equally likely in both classes of a pair: a model blind to frame order (a
//! TSN, which averages per-frame features) is at chance within each pair, while the pairs differ
//! in what they show and are easy to tell apart: each kind of motion has its own shape (square,
//! cross, disc, arrow), so one frame names the pair. Position, size, speed, orientation, colours
//! and the background gradient are random per clip, drawn from a seeded generator.
//!
//! The clips are MPEG-4 Part 2 with every frame a keyframe, written by the ffmpeg CLI: intra-only
//! coding encodes each frame on its own, so a reversed clip decodes to exactly the reversed
//! frames. Each split is one ffmpeg process (the segment muxer cuts the stream into clips), which
//! keeps generating hundreds of clips to well under a second of encoding.

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The kinds of motion, one pair of classes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    /// Travel along x: `move_right`, then `move_left`.
    Horizontal,
    /// Travel along y: `move_down`, then `move_up`.
    Vertical,
    /// Change of size: `grow`, then `shrink`.
    Scale,
    /// Turning in place: `rotate_cw`, then `rotate_ccw`.
    Rotation,
}

impl Motion {
    /// Every kind, in label order.
    pub const ALL: [Motion; 4] = [
        Motion::Horizontal,
        Motion::Vertical,
        Motion::Scale,
        Motion::Rotation,
    ];

    /// The class names of the pair: the drawn motion, then its reversal.
    pub fn class_names(self) -> [&'static str; 2] {
        match self {
            Motion::Horizontal => ["move_right", "move_left"],
            Motion::Vertical => ["move_down", "move_up"],
            Motion::Scale => ["grow", "shrink"],
            Motion::Rotation => ["rotate_cw", "rotate_ccw"],
        }
    }

    /// The lower-case name [`str::parse`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            Motion::Horizontal => "horizontal",
            Motion::Vertical => "vertical",
            Motion::Scale => "scale",
            Motion::Rotation => "rotation",
        }
    }
}

impl std::str::FromStr for Motion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Motion::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Motion::ALL.iter().map(|m| m.name()).collect();
                format!("unknown motion `{s}` (one of {})", names.join(", "))
            })
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct MotionSpec {
    /// Frame width and height in pixels (even, for the encoder's 4:2:0 chroma).
    pub size: u32,
    /// Frames per clip. Equal to the model's segment count, every frame is sampled in training
    /// and validation alike, so the sampled frames of a reversed clip are the reversed sample.
    pub frames: usize,
    /// Training clips per class.
    pub train_per_class: usize,
    /// Validation clips per class.
    pub val_per_class: usize,
    /// The motion pairs (classes `2k` and `2k + 1` are pair `k`).
    pub motions: Vec<Motion>,
    /// Seeds every random choice.
    pub seed: u64,
}

impl Default for MotionSpec {
    fn default() -> Self {
        Self {
            size: 32,
            frames: 4,
            train_per_class: 150,
            val_per_class: 32,
            // The demo's and the `learns_time` test's data set: two pairs learn within minutes
            // on two cores, all four take several times as long.
            motions: vec![Motion::Horizontal, Motion::Scale],
            seed: 0,
        }
    }
}

impl MotionSpec {
    /// The class names in label order.
    pub fn class_names(&self) -> Vec<&'static str> {
        self.motions.iter().flat_map(|m| m.class_names()).collect()
    }
}

/// Where a generated data set's files are.
#[derive(Debug, Clone)]
pub struct MotionSet {
    /// The output folder; the lists' paths are relative to it.
    pub root: PathBuf,
    /// Class names, one a line, in label order.
    pub labels: PathBuf,
    /// PaddleVideo-style `path label` list of the training clips.
    pub train_list: PathBuf,
    /// The same for the validation clips.
    pub val_list: PathBuf,
    /// Number of classes.
    pub classes: usize,
}

/// Writes the data set into `out`: `labels.txt`, `train.txt`, `val.txt` and the clips under
/// `train/` and `val/` (named `NNNNN_<class>.avi`). Needs the ffmpeg CLI on the `PATH`.
pub fn generate(spec: &MotionSpec, out: &Path) -> io::Result<MotionSet> {
    if spec.size < 16 || !spec.size.is_multiple_of(2) {
        return Err(io::Error::other(format!(
            "clip size must be even and at least 16, got {}",
            spec.size
        )));
    }
    if spec.frames < 2 || spec.motions.is_empty() {
        return Err(io::Error::other(
            "need at least 2 frames per clip and one motion",
        ));
    }
    std::fs::create_dir_all(out)?;
    let names = spec.class_names();
    let labels = out.join("labels.txt");
    std::fs::write(
        &labels,
        names.iter().map(|n| format!("{n}\n")).collect::<String>(),
    )?;
    let mut lists = Vec::new();
    for (split, per_class, salt) in [
        ("train", spec.train_per_class, 1),
        ("val", spec.val_per_class, 2),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_mul(1000).wrapping_add(salt));
        // Interleave the classes so that a prefix of the list is balanced.
        let clips: Vec<usize> = (0..per_class * names.len())
            .map(|i| i % names.len())
            .collect();
        let mut raw =
            Vec::with_capacity(clips.len() * spec.frames * (spec.size as usize).pow(2) * 3);
        for &label in &clips {
            let motion = spec.motions[label / 2];
            let clip = random_clip(motion, spec.size, spec.frames, &mut rng);
            let mut order: Vec<usize> = (0..spec.frames).collect();
            if label % 2 == 1 {
                order.reverse();
            }
            for i in order {
                raw.extend(draw_frame(&clip, i, spec.size));
            }
        }
        let dir = out.join(split);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        encode_clips(&raw, spec, clips.len(), &dir)?;
        let mut list = String::new();
        for (i, &label) in clips.iter().enumerate() {
            let name = format!("{i:05}_{}.avi", names[label]);
            std::fs::rename(dir.join(format!("{i:05}.avi")), dir.join(&name))?;
            writeln!(list, "{split}/{name} {label}").map_err(io::Error::other)?;
        }
        let list_path = out.join(format!("{split}.txt"));
        std::fs::write(&list_path, list)?;
        lists.push(list_path);
    }
    let val_list = lists.pop().unwrap_or_default();
    let train_list = lists.pop().unwrap_or_default();
    Ok(MotionSet {
        root: out.to_path_buf(),
        labels,
        train_list,
        val_list,
        classes: names.len(),
    })
}

/// Encodes `count` clips of raw RGB frames with one ffmpeg process: all-keyframe MPEG-4 cut into
/// `dir/NNNNN.avi` by the segment muxer at every clip boundary.
fn encode_clips(raw: &[u8], spec: &MotionSpec, count: usize, dir: &Path) -> io::Result<()> {
    let cuts: Vec<String> = (1..count).map(|i| (i * spec.frames).to_string()).collect();
    let cuts = cuts.join(",");
    let mut args = vec![
        "-f",
        "segment",
        "-segment_format",
        "avi",
        "-reset_timestamps",
        "1",
    ];
    if count > 1 {
        args.extend(["-segment_frames", &cuts]);
    }
    encode(raw, spec.size, &args, &dir.join("%05d.avi"))
}

/// Encodes raw RGB frames of `size x size` at [`FPS`] as all-keyframe MPEG-4 into `out`, with
/// `muxer_args` before the output name.
fn encode(raw: &[u8], size: u32, muxer_args: &[&str], out: &Path) -> io::Result<()> {
    let size = format!("{0}x{0}", size);
    let fps = FPS.to_string();
    let mut args = vec![
        "-y",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &size,
        "-r",
        &fps,
        "-i",
        "-",
        "-c:v",
        "mpeg4",
        "-g",
        "1",
        "-q:v",
        "2",
    ];
    args.extend(muxer_args);
    let mut child = Command::new("ffmpeg")
        .args(&args)
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run the ffmpeg CLI ({e}); `cargo xtask setup` installs it"),
            )
        })?;
    let written = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("ffmpeg's stdin"))?
        .write_all(raw);
    let result = child.wait_with_output()?;
    if !result.status.success() || written.is_err() {
        return Err(io::Error::other(format!(
            "ffmpeg failed writing {}: {}",
            out.display(),
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    Ok(())
}

/// Frames per second of every generated video.
pub const FPS: u32 = 8;

/// A stretch of a long video: `clips` clips of class `label`, one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Class index, in [`MotionSpec::class_names`] order.
    pub label: usize,
    /// Clips of `spec.frames` frames each.
    pub clips: usize,
}

/// Writes one long all-keyframe MPEG-4 AVI at `out`: the clips of `runs` back to back, drawn as
/// [`generate`] draws them (seeded by `spec.seed`), so a model trained on a generated set
/// knows every stretch. Returns where each run starts and ends, in frames.
pub fn long_video(spec: &MotionSpec, runs: &[Run], out: &Path) -> io::Result<Vec<(usize, usize)>> {
    let classes = spec.class_names().len();
    if let Some(bad) = runs.iter().find(|r| r.label >= classes) {
        return Err(io::Error::other(format!(
            "class {} out of range ({classes} classes)",
            bad.label
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_mul(1000).wrapping_add(3));
    let mut raw = Vec::new();
    let mut spans = Vec::with_capacity(runs.len());
    let mut frame = 0;
    for run in runs {
        let start = frame;
        for _ in 0..run.clips {
            let clip = random_clip(
                spec.motions[run.label / 2],
                spec.size,
                spec.frames,
                &mut rng,
            );
            let mut order: Vec<usize> = (0..spec.frames).collect();
            if run.label % 2 == 1 {
                order.reverse();
            }
            for i in order {
                raw.extend(draw_frame(&clip, i, spec.size));
            }
            frame += spec.frames;
        }
        spans.push((start, frame));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    encode(&raw, spec.size, &[], out)?;
    Ok(spans)
}

/// The shapes a clip can show, one per kind of motion (see [`random_clip`]). The arrow has no
/// rotational symmetry, so rotations use it.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Square,
    Cross,
    Disc,
    Arrow,
}

impl Shape {
    /// Whether a point in the shape's own frame (unit half-extent) is inside it.
    fn contains(self, x: f64, y: f64) -> bool {
        match self {
            Shape::Square => x.abs() <= 0.8 && y.abs() <= 0.8,
            Shape::Cross => x.abs().max(y.abs()) <= 0.9 && x.abs().min(y.abs()) <= 0.3,
            Shape::Disc => x * x + y * y <= 0.9,
            // A triangle pointing along +x, tip (1, 0), base x = -0.8 from y = -0.6 to 0.6.
            Shape::Arrow => (-0.8..=1.0).contains(&x) && y.abs() <= 0.6 * (1.0 - x) / 1.8,
        }
    }
}

/// One frame's placement of the shape: centre, half-extent (pixels) and angle (radians).
#[derive(Debug, Clone, Copy)]
struct Pose {
    cx: f64,
    cy: f64,
    r: f64,
    angle: f64,
}

/// How one clip looks: its shape, colours and background, and the shape's pose in each frame.
#[derive(Debug, Clone)]
struct Clip {
    shape: Shape,
    colour: [f64; 3],
    background: [f64; 3],
    /// Added to the background along `gradient`'s direction, from -1x at one edge to 1x.
    shade: [f64; 3],
    gradient: f64,
    poses: Vec<Pose>,
}

/// Draws a clip of `motion` in its forward direction.
fn random_clip(motion: Motion, size: u32, frames: usize, rng: &mut ChaCha8Rng) -> Clip {
    let s = f64::from(size);
    // Each kind of motion has its own shape, so a single frame tells the pairs apart and what a
    // model must learn beyond that is the direction, which only the frame order shows.
    let shape = match motion {
        Motion::Horizontal => Shape::Square,
        Motion::Vertical => Shape::Cross,
        Motion::Scale => Shape::Disc,
        Motion::Rotation => Shape::Arrow,
    };
    let angle = rng.random_range(0.0..2.0 * PI);
    // Where the clip starts and ends; frames are spaced evenly between.
    let (first, last) = match motion {
        Motion::Horizontal | Motion::Vertical => {
            let r = rng.random_range(0.14..0.20) * s;
            let travel = rng.random_range(0.35..0.55) * s;
            let from = rng.random_range(r..s - r - travel);
            let across = rng.random_range(r..s - r);
            let (a, b) = if motion == Motion::Horizontal {
                ((from, across), (from + travel, across))
            } else {
                ((across, from), (across, from + travel))
            };
            (
                Pose {
                    cx: a.0,
                    cy: a.1,
                    r,
                    angle,
                },
                Pose {
                    cx: b.0,
                    cy: b.1,
                    r,
                    angle,
                },
            )
        }
        Motion::Scale => {
            let r0 = rng.random_range(0.08..0.12) * s;
            let r1 = r0 * rng.random_range(1.8..2.4);
            let (cx, cy) = (rng.random_range(r1..s - r1), rng.random_range(r1..s - r1));
            (
                Pose {
                    cx,
                    cy,
                    r: r0,
                    angle,
                },
                Pose {
                    cx,
                    cy,
                    r: r1,
                    angle,
                },
            )
        }
        Motion::Rotation => {
            let r = rng.random_range(0.16..0.24) * s;
            let (cx, cy) = (rng.random_range(r..s - r), rng.random_range(r..s - r));
            // Clockwise on screen (y down) is an increasing angle; under a full turn in all.
            let turn = rng.random_range(0.45..0.9) * PI;
            (
                Pose { cx, cy, r, angle },
                Pose {
                    cx,
                    cy,
                    r,
                    angle: angle + turn,
                },
            )
        }
    };
    let poses = (0..frames)
        .map(|i| {
            let t = i as f64 / (frames - 1) as f64;
            let lerp = |a: f64, b: f64| a + (b - a) * t;
            Pose {
                cx: lerp(first.cx, last.cx),
                cy: lerp(first.cy, last.cy),
                r: lerp(first.r, last.r),
                angle: lerp(first.angle, last.angle),
            }
        })
        .collect();
    let background = random_colour(rng);
    let shade = random_colour(rng).map(|c| c * 0.3 - 0.15);
    let gradient = rng.random_range(0.0..2.0 * PI);
    let colour = loop {
        let c = random_colour(rng);
        if (luma(c) - luma(background)).abs() > 0.3 {
            break c;
        }
    };
    Clip {
        shape,
        colour,
        background,
        shade,
        gradient,
        poses,
    }
}

fn random_colour(rng: &mut ChaCha8Rng) -> [f64; 3] {
    [
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
        rng.random_range(0.0..1.0),
    ]
}

fn luma(c: [f64; 3]) -> f64 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Frame `i` of `clip` (RGB, `size x size`): the still background with the shape at its pose,
/// antialiased by 4x4 supersampling near the shape.
fn draw_frame(clip: &Clip, i: usize, size: u32) -> Vec<u8> {
    const SUB: usize = 4;
    let n = size as usize;
    let s = f64::from(size);
    let pose = clip.poses[i];
    let (dx, dy) = (clip.gradient.cos(), clip.gradient.sin());
    let (sin, cos) = pose.angle.sin_cos();
    let mut rgb = Vec::with_capacity(n * n * 3);
    for y in 0..n {
        for x in 0..n {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let g = ((px / s - 0.5) * dx + (py / s - 0.5) * dy) * 2.0;
            let mut cover = 0.0;
            if (px - pose.cx).abs() <= pose.r + 1.0 && (py - pose.cy).abs() <= pose.r + 1.0 {
                for sy in 0..SUB {
                    for sx in 0..SUB {
                        let qx = x as f64 + (sx as f64 + 0.5) / SUB as f64 - pose.cx;
                        let qy = y as f64 + (sy as f64 + 0.5) / SUB as f64 - pose.cy;
                        // Into the shape's frame: rotate by -angle, scale by 1/r.
                        let (lx, ly) = (
                            (qx * cos + qy * sin) / pose.r,
                            (qy * cos - qx * sin) / pose.r,
                        );
                        if clip.shape.contains(lx, ly) {
                            cover += 1.0 / (SUB * SUB) as f64;
                        }
                    }
                }
            }
            for c in 0..3 {
                let bg = (clip.background[c] + clip.shade[c] * g).clamp(0.0, 1.0);
                let v = bg + (clip.colour[c] - bg) * cover;
                rgb.push((v * 255.0).round() as u8);
            }
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(motion: Motion, seed: u64) -> Clip {
        random_clip(motion, 32, 8, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    /// Each drawn motion goes the way its first class name says and stays in the frame.
    #[test]
    fn forward_motions_are_the_named_ones() {
        for seed in 0..20 {
            for m in Motion::ALL {
                let p = clip(m, seed).poses;
                let (a, b) = (p[0], p[7]);
                let moved = match m {
                    Motion::Horizontal => b.cx - a.cx,
                    Motion::Vertical => b.cy - a.cy,
                    Motion::Scale => b.r - a.r,
                    Motion::Rotation => b.angle - a.angle,
                };
                assert!(moved > 0.0, "{m:?} seed {seed}: {a:?} -> {b:?}");
                let inside = |q: &Pose| {
                    q.cx >= q.r && q.cy >= q.r && q.cx + q.r <= 32.0 && q.cy + q.r <= 32.0
                };
                assert!(p.iter().all(inside), "{m:?} seed {seed}: leaves the frame");
            }
        }
    }

    #[test]
    fn motions_parse_from_their_names() {
        for m in Motion::ALL {
            assert_eq!(m.name().parse::<Motion>(), Ok(m));
        }
        let err = "diagonal".parse::<Motion>().unwrap_err();
        assert!(
            err.contains("`diagonal`") && err.contains("rotation"),
            "{err}"
        );
    }

    /// An increasing angle turns clockwise on screen: the arrow drawn at angle 0 points right
    /// (+x), at a quarter turn down (+y, rows grow downwards).
    #[test]
    fn angles_turn_clockwise_on_screen() {
        let mut c = clip(Motion::Rotation, 0);
        let pixel = |f: &[u8], x: usize, y: usize| f[(y * 32 + x) * 3..][..3].to_vec();
        let shape = c.colour.map(|v| (v * 255.0).round() as u8).to_vec();
        for (angle, tip, tail) in [(0.0, (25, 16), (4, 16)), (PI / 2.0, (16, 25), (16, 4))] {
            c.poses = vec![Pose {
                cx: 16.0,
                cy: 16.0,
                r: 14.0,
                angle,
            }];
            let f = draw_frame(&c, 0, 32);
            assert_eq!(pixel(&f, 16, 16), shape, "angle {angle}: centre");
            assert_eq!(pixel(&f, tip.0, tip.1), shape, "angle {angle}: tip");
            assert_ne!(
                pixel(&f, tail.0, tail.1),
                shape,
                "angle {angle}: behind the base"
            );
        }
    }
}
