//! `tsm-cli preprocess`: the exact tensor the model sees for one video (or frame folder), for debugging and for
//! cross-checking with PaddleVideo, and a contact sheet of its frames.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use augment::{Clip, LoadedClip};
use candle_core::{Device, Tensor};
use serde_json::json;
use video_io::{SampleLocation, SampleMode};

use crate::common::ViewArgs;
use crate::plot::save_png;
use crate::{Global, Outcome};

pub const AFTER_HELP: &str = "\
Examples:
  tsm-cli preprocess clip.mp4 --out clip.safetensors --contact-sheet clip.png
  tsm-cli preprocess clip.mp4 --mode train --seed 7 --out train7.safetensors
  tsm-cli preprocess clip.mp4 --views dense --crops 3 --out dense.safetensors
  tsm-cli preprocess rawframes/v_ApplyEyeMakeup_g01_c01 --out frames.safetensors

The file holds `clips`, f32 [N, T, 3, H, W] (N = clips x crops, ImageNet-normalised, what
`Tsm::forward` takes), and metadata: `indices` (sampled frame numbers, JSON), `frames_len`,
`mode`, `seed`, `source`, `sampling` and `pipeline` (JSON). The contact sheet has one row per
clip view and one column per frame, de-normalised.";

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Validation: fixed frame positions and crops.
    Valid,
    /// Training: random segment offsets, MultiScaleCrop, RandomCrop and flip, drawn from --seed.
    Train,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The video, or a folder of frames as PaddleVideo's frame lists use (`img_00001.jpg`,
    /// `img_00002.jpg`, ...).
    video: PathBuf,
    /// Frames of a frame folder, as its list line would say (default: its `img_NNNNN.jpg`
    /// files, counted).
    #[arg(long)]
    num_frames: Option<usize>,
    /// Where to write the safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Also write the sampled, transformed frames as a PNG grid.
    #[arg(long)]
    contact_sheet: Option<PathBuf>,
    /// Validation or training transforms.
    #[arg(long, value_enum, default_value_t = Mode::Valid)]
    mode: Mode,
    /// Seed of the random choices in training mode.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frames per clip (the model's num_seg).
    #[arg(long, default_value_t = 8)]
    num_seg: usize,
    #[command(flatten)]
    views: ViewArgs,
}

pub fn run(args: Args, _: &Global) -> Result<Outcome> {
    let mode = match args.mode {
        Mode::Valid => SampleMode::Valid,
        Mode::Train => SampleMode::Train,
    };
    let loader = args.views.loader(args.num_seg, mode)?;
    let location = if args.video.is_dir() {
        let num_frames = match args.num_frames {
            Some(n) => n,
            None => count_frames(&args.video)?,
        };
        SampleLocation::Frames {
            dir: args.video.clone(),
            num_frames,
        }
    } else if args.num_frames.is_some() {
        bail!(
            "{}: --num-frames is for frame folders; a video's frames are counted by its decoder",
            args.video.display()
        )
    } else {
        SampleLocation::Video(args.video.clone())
    };
    let LoadedClip {
        clips,
        indices,
        frames_len,
    } = loader.load_seeded(&location, mode, args.seed)?;
    let [t, c, h, w] = clips.first().context("no clip was produced")?.shape();
    let data: Vec<f32> = clips
        .iter()
        .flat_map(|clip| clip.data.iter().copied())
        .collect();
    let tensor = Tensor::from_vec(data, (clips.len(), t, c, h, w), &Device::Cpu)?;
    let meta: BTreeMap<String, String> = [
        ("indices", json!(indices).to_string()),
        ("frames_len", frames_len.to_string()),
        ("mode", format!("{:?}", args.mode).to_lowercase()),
        ("seed", args.seed.to_string()),
        ("source", args.video.display().to_string()),
        ("sampling", serde_json::to_string(loader.sampling())?),
        (
            "pipeline",
            serde_json::to_string(loader.pipeline().config())?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    tsm_model::write_safetensors(&args.out, &[("clips".to_string(), tensor)], &meta)?;
    println!(
        "wrote {}: clips [{}, {t}, {c}, {h}, {w}] from frames {indices:?} of {frames_len}",
        args.out.display(),
        clips.len()
    );
    if let Some(sheet) = &args.contact_sheet {
        let cfg = loader.pipeline().config();
        contact_sheet(sheet, &clips, cfg.mean, cfg.std)?;
        println!("wrote {}", sheet.display());
    }
    Ok(Outcome::Success)
}

/// The `img_NNNNN.jpg` files in `dir` (a gap in their numbers is reported when a sampled frame
/// falls in it, naming the missing file).
fn count_frames(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let number = name
            .strip_prefix("img_")
            .and_then(|r| r.strip_suffix(".jpg"));
        if number.is_some_and(|d| d.len() == 5 && d.bytes().all(|b| b.is_ascii_digit())) {
            n += 1;
        }
    }
    if n == 0 {
        bail!(
            "{}: no frames named img_00001.jpg, img_00002.jpg, ... in this folder",
            dir.display()
        )
    }
    Ok(n)
}

/// One row per clip, one column per frame, 2-pixel white gaps; `x * std + mean` undoes the
/// normalisation.
fn contact_sheet(path: &Path, clips: &[Clip], mean: [f32; 3], std: [f32; 3]) -> Result<()> {
    const GAP: usize = 2;
    let first = clips.first().context("no clip")?;
    let (t, h, w) = (first.frames, first.height, first.width);
    let width = t * (w + GAP) + GAP;
    let height = clips.len() * (h + GAP) + GAP;
    let mut rgb = vec![255u8; width * height * 3];
    for (row, clip) in clips.iter().enumerate() {
        for f in 0..t {
            for ch in 0..3 {
                let plane = &clip.data[(f * 3 + ch) * h * w..][..h * w];
                for y in 0..h {
                    for x in 0..w {
                        let v = (plane[y * w + x] * std[ch] + mean[ch]) * 255.0;
                        let oy = row * (h + GAP) + GAP + y;
                        let ox = f * (w + GAP) + GAP + x;
                        rgb[(oy * width + ox) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
    save_png(path, width as u32, height as u32, rgb)
}
