//! One way to get a clip's frames whether the sample is a video file or a frame folder.

use image::RgbImage;
use rand::Rng;

use crate::{
    DecodeOptions, FrameFolder, Result, SampleLocation, SampleMode, Sampling, VideoReader,
};

/// An opened sample: a video or a frame folder.
#[derive(Debug)]
pub enum FrameSource {
    /// A video file.
    Video(VideoReader),
    /// A folder of images.
    Folder(FrameFolder),
}

impl FrameSource {
    /// Opens the sample at `location`.
    pub fn open(location: &SampleLocation, options: DecodeOptions) -> Result<Self> {
        Ok(match location {
            SampleLocation::Video(path) => FrameSource::Video(VideoReader::open(path, options)?),
            SampleLocation::Frames { dir, num_frames } => {
                FrameSource::Folder(FrameFolder::open(dir, *num_frames)?)
            }
        })
    }

    /// Number of frames.
    pub fn num_frames(&self) -> usize {
        match self {
            FrameSource::Video(v) => v.num_frames(),
            FrameSource::Folder(f) => f.num_frames(),
        }
    }

    /// Frames at 0-based presentation positions `indices`, in the order asked.
    pub fn frames(&mut self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        match self {
            FrameSource::Video(v) => v.frames(indices),
            FrameSource::Folder(f) => f.frames(indices),
        }
    }
}

/// The frames of one sampled clip (or of several, for multi-clip validation), with what they
/// were sampled from.
#[derive(Debug, Clone)]
pub struct ClipFrames {
    /// `clips * frames_per_clip` images, clip after clip.
    pub frames: Vec<RgbImage>,
    /// The presentation positions they were taken from.
    pub indices: Vec<usize>,
    /// Frames in the video (the `frames_len` the sampler saw).
    pub frames_len: usize,
}

/// Samples a clip from `source` and reads its frames.
///
/// The RNG is cloned before drawing so that, if reading reveals the video has fewer decodable
/// frames than its packets claimed, the clip is re-sampled over the true count with the same
/// random draws.
pub fn read_clip<R: Rng + Clone>(
    source: &mut FrameSource,
    sampling: &Sampling,
    mode: SampleMode,
    rng: &mut R,
) -> Result<ClipFrames> {
    let snapshot = rng.clone();
    let frames_len = source.num_frames();
    let indices = sampling.indices(frames_len, mode, rng)?;
    match source.frames(&indices) {
        Ok(frames) => Ok(ClipFrames {
            frames,
            indices,
            frames_len,
        }),
        Err(_) if source.num_frames() != frames_len => {
            *rng = snapshot;
            let frames_len = source.num_frames();
            let indices = sampling.indices(frames_len, mode, rng)?;
            let frames = source.frames(&indices)?;
            Ok(ClipFrames {
                frames,
                indices,
                frames_len,
            })
        }
        Err(e) => Err(e),
    }
}
