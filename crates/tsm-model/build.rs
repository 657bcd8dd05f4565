//! The temporal-shift kernel's two builds: its index arithmetic as host C for the tests (always,
//! linked only by the test build), and the CUDA kernel as PTX with feature `cuda`, the way
//! candle-kernels builds its own (cudaforge, PTX in `OUT_DIR`, included by `ops/shift.rs`).

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=kernels");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // `cargo_metadata(false)`: no link directive for the library itself; the test module that
    // calls it names it (`#[link]`), so nothing but the tests links it.
    cc::Build::new()
        .file("kernels/shift_index_host.c")
        .include("kernels")
        .warnings_into_errors(true)
        .cargo_metadata(false)
        .compile("tsm_shift_index_host");
    println!("cargo::rustc-link-search=native={}", out.display());
    #[cfg(feature = "cuda")]
    build_ptx(&out);
}

#[cfg(feature = "cuda")]
fn build_ptx(out: &std::path::Path) {
    let ptx = cudaforge::KernelBuilder::new()
        .source_files(["kernels/temporal_shift.cu"])
        .watch(["kernels/temporal_shift.cuh"])
        .arg("-O3")
        .arg("-std=c++17")
        .build_ptx()
        .unwrap_or_else(|e| panic!("compiling kernels/temporal_shift.cu to PTX: {e}"));
    ptx.write(out.join("ptx.rs"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.join("ptx.rs").display()));
}
