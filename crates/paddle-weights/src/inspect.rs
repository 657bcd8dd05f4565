//! `--inspect`: what a `.pdparams` file holds, without converting it.

use std::path::Path;

use crate::{read_pdparams, WeightsError};

/// One `--inspect` line: key, numpy dtype name, shape.
pub type InspectEntry = (String, &'static str, Vec<usize>);

/// `(key, dtype, shape)` of every array in a `.pdparams` file, for `--inspect`.
pub fn inspect(path: &Path) -> Result<Vec<InspectEntry>, WeightsError> {
    Ok(read_pdparams(path)?
        .into_iter()
        .map(|(k, a)| (k, a.dtype.name(), a.shape))
        .collect())
}
