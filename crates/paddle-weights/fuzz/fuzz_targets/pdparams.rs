//! libFuzzer target for the `.pdparams` reader: any bytes give arrays or an error, never a
//! panic, a hang or a heap beyond `paddle_weights::max_heap_bytes`, the bound tests/hostile.rs
//! checks in the normal suite. Run with `cargo xtask fuzz` (seeds: `seeds/`,
//! real `paddle.save` files written by make_seeds.py).
#![no_main]

use test_support::{peak_alloc_during, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (_, peak) = peak_alloc_during(|| paddle_weights::parse_pdparams(data).map(|a| a.len()));
    let bound = paddle_weights::max_heap_bytes(data.len());
    assert!(
        peak <= bound,
        "{peak} heap bytes for {} input bytes",
        data.len()
    );
});
