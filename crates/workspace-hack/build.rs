//! Empty: cargo resolves `[build-dependencies]` only for a package with a build script, and the
//! host-side features listed there are the point of this crate.

fn main() {}
