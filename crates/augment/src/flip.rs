//! `RandomFlip`: mirror the whole clip left-right with probability `p`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::frames::Frames;

fn half() -> f64 {
    0.5
}

/// PaddleVideo's `RandomFlip`: flips every frame when a uniform draw in [0, 1) is below `p`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFlip {
    /// Probability of flipping (default 0.5).
    #[serde(default = "half")]
    pub p: f64,
}

impl Default for RandomFlip {
    fn default() -> Self {
        Self { p: half() }
    }
}

impl RandomFlip {
    /// Draws whether to flip.
    pub fn sample(&self, rng: &mut impl Rng) -> Result<bool> {
        self.check()?;
        Ok(rng.random::<f64>() < self.p)
    }

    pub(crate) fn check(&self) -> Result<()> {
        if (0.0..=1.0).contains(&self.p) {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                transform: "RandomFlip",
                reason: format!("p = {} is not a probability", self.p),
            })
        }
    }

    /// Flips the clip if `flip` (lazily: no pixel moves until the clip is read).
    pub fn apply<'a>(&self, frames: Frames<'a>, flip: bool) -> Frames<'a> {
        if flip {
            frames.flip()
        } else {
            frames
        }
    }
}
