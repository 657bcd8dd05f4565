//! libFuzzer target for the checkpoint loader (safetensors header, metadata and `tsm_config`,
//! tensor entries, tensor data, the model built from them): any bytes give a model or an
//! error, never a panic, a hang or a heap beyond `tsm_model::max_load_heap_bytes`, the bound
//! tests/hostile_checkpoint.rs checks in the normal suite. Run with
//! `cargo xtask fuzz --target checkpoint` (seeds: `seeds/`, written by tsm-model's own writer;
//! hostile_checkpoint.rs says how to rewrite them).
#![no_main]

use std::path::Path;

use candle_core::{DType, Device};
use test_support::{peak_alloc_during, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let (_, peak) = peak_alloc_during(|| {
        tsm_model::Tsm::from_checkpoint_bytes(path, data, DType::F32, &Device::Cpu).map(drop)
    });
    let bound = tsm_model::max_load_heap_bytes(data);
    assert!(
        peak <= bound,
        "{peak} heap bytes for {} input bytes (bound {bound})",
        data.len()
    );
});
