//! Process-wide allocator setting for programs that run the model on the CPU.

/// Makes glibc's malloc keep freed memory for reuse instead of handing it back to the kernel:
/// for training, and for models that are not fused. (The fused model's CPU plan keeps its own
/// buffers, so inference with [`crate::Tsm::fuse_for_inference`] does not need it.)
///
/// Activations are megabytes each, above glibc's mmap threshold: by default each one is mapped
/// fresh, faulted in page by page (the kernel zeroing every page) and unmapped when dropped, about
/// a fifth of the CPU time of a training step. Served from a heap that is never trimmed, the
/// next pass reuses the same pages; peak RSS stays close, as each pass frees what the next
/// allocates. Call it at the start of `main`, before other threads allocate. A no-op outside
/// glibc.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc's tuning parameters; any value is valid to pass.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
