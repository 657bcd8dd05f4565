//! Frame folders as PaddleVideo writes them: `img_00001.jpg`, `img_00002.jpg`, ... (1-based).

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::{Error, Result};

/// A folder of extracted frames whose count comes from the index list.
#[derive(Debug, Clone)]
pub struct FrameFolder {
    dir: PathBuf,
    num_frames: usize,
}

impl FrameFolder {
    /// A folder holding `num_frames` images named `img_{:05}.jpg` from 1. Fails if the folder
    /// does not exist; missing images are reported when read.
    pub fn open(dir: impl AsRef<Path>, num_frames: usize) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(FrameFolder { dir, num_frames }),
            Ok(_) => Err(Error::Image {
                path: dir,
                reason: "not a directory (frame lists expect a folder of img_XXXXX.jpg)".into(),
            }),
            Err(source) => Err(Error::Io { path: dir, source }),
        }
    }

    /// Frame count declared by the list.
    pub fn num_frames(&self) -> usize {
        self.num_frames
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the image for 0-based frame `index`.
    pub fn image_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("img_{:05}.jpg", index + 1))
    }

    /// Reads the frames at 0-based `indices`, each distinct image decoded once.
    pub fn frames(&self, indices: &[usize]) -> Result<Vec<RgbImage>> {
        let mut cache: std::collections::HashMap<usize, RgbImage> = Default::default();
        indices
            .iter()
            .map(|&i| {
                if let Some(img) = cache.get(&i) {
                    return Ok(img.clone());
                }
                let path = self.image_path(i);
                let img = image::open(&path)
                    .map_err(|e| Error::Image {
                        path: path.clone(),
                        reason: match e {
                            image::ImageError::IoError(io) => io.to_string(),
                            other => format!("cannot decode image: {other}"),
                        },
                    })?
                    .into_rgb8();
                cache.insert(i, img.clone());
                Ok(img)
            })
            .collect()
    }
}
