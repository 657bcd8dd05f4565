//! PaddlePaddle `.pdparams` files read safely, and PaddleVideo PP-TSM weights converted to
//! [`tsm_model`] safetensors checkpoints.
//!
//! `paddle.save` writes a plain pickle of `{name: numpy array}`. [`pickle`] reads that subset
//! without executing anything; [`read_pdparams`] turns it into named arrays (skipping
//! `StructuredToParameterName@@`, joining `UnpackBigParamInfor@@` pieces); [`convert`] renames
//! Paddle's names to ours with the [`RENAME_RULES`] table, transposes Linear weights, checks every
//! shape against [`tsm_model::parameter_shapes`] and reports what was converted, unused and
//! missing. `cargo xtask convert-weights` is the command-line front.

#![warn(missing_docs)]

mod convert;
mod error;
mod inspect;
mod pdparams;
pub mod pickle;
mod rename;

pub use convert::{convert, convert_file, ConvertOptions, Report};
pub use error::WeightsError;
pub use inspect::{inspect, InspectEntry};
pub use pdparams::{
    max_heap_bytes, parse_pdparams, read_pdparams, ParseError, BIG_PARAM_KEY, STRUCTURED_NAMES_KEY,
};
pub use rename::{rename, RENAME_RULES};
