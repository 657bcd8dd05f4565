//! Nothing to call: this crate exists for its dependency list (see its `Cargo.toml`), which makes
//! every build that includes it resolve candle-core's dependencies with the same features.
