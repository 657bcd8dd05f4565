//! Helpers shared by the workspace's tests (a dev-dependency only).
//!
//! Reference outputs come from the scripts in `tests/reference/`, run by `cargo xtask test`
//! into `target/reference/<script>/`. A test that needs them and finds none fails with a message
//! saying how to make them: nothing is skipped.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod compare;
mod docs;
pub mod motion;
mod mutation;
#[cfg(feature = "candle")]
mod random;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use compare::{max_abs_diff, mean_abs_diff, rel_l2, rel_max_diff, Values};
pub use docs::{assert_documented_commands_parse, documented_commands, DocCommand};
pub use mutation::{run_mutations, seed_files};
#[cfg(feature = "candle")]
pub use random::{rand_uniform, randn};

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The output folder of reference script `tests/reference/<script>.py`; panics with
/// instructions when it has not been generated.
pub fn reference_dir(script: &str) -> PathBuf {
    let base = std::env::var_os("TSM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/reference"));
    let dir = base.join(script);
    assert!(
        dir.join(".stamp").exists(),
        "reference outputs {} are missing: run `cargo xtask test` (it builds the Python \
         reference venv and runs tests/reference/{script}.py)",
        dir.display()
    );
    dir
}

/// The shared folder (spec and media): `TSM_SHARED_DIR` or `../shared` beside the checkout.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("TSM_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("../shared"))
}

/// A video from the shared media folder; panics if absent.
pub fn media(name: &str) -> PathBuf {
    let p = shared_dir().join("media").join(name);
    assert!(p.exists(), "shared media {} is missing", p.display());
    p
}

/// A tensor read from a reference safetensors file, as f32 values and shape.
#[derive(Debug, Clone)]
pub struct RefTensor {
    /// Values in row-major order, converted to f32.
    pub data: Vec<f32>,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// Reads every tensor of a safetensors file (f32, f64, i64, i32 and u8 become f32).
pub fn read_safetensors(path: &Path) -> std::collections::BTreeMap<String, RefTensor> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let raw = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => chunks::<4>(raw).map(f32::from_le_bytes).collect(),
                Dtype::F64 => chunks::<8>(raw)
                    .map(|b| f64::from_le_bytes(b) as f32)
                    .collect(),
                Dtype::I64 => chunks::<8>(raw)
                    .map(|b| i64::from_le_bytes(b) as f32)
                    .collect(),
                Dtype::I32 => chunks::<4>(raw)
                    .map(|b| i32::from_le_bytes(b) as f32)
                    .collect(),
                Dtype::U8 => raw.iter().map(|&b| f32::from(b)).collect(),
                other => panic!(
                    "{}: tensor {name} has unsupported dtype {other:?}",
                    path.display()
                ),
            };
            let shape = view.shape().to_vec();
            (name, RefTensor { data, shape })
        })
        .collect()
}

fn chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().unwrap())
}

/// Reads a JSON reference file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Runs the ffmpeg CLI with `args` (after `-y -loglevel error`); panics with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error"])
        .args(args)
        .output()
        .expect("the ffmpeg CLI is required (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `n` short 64x48 test videos (16 frames, distinct hues) into `dir` and a `path label`
/// list of them with labels `i % classes`; returns the list's path. Videos already there are
/// kept.
pub fn tiny_videos(dir: &Path, name: &str, n: usize, classes: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut list = String::new();
    for i in 0..n {
        let path = dir.join(format!("{name}_{i:02}.avi"));
        if !path.exists() {
            ffmpeg(&[
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=64x48:rate=10",
                "-vf",
                &format!("hue=h={}", i * 37),
                "-frames:v",
                "16",
                "-c:v",
                "mpeg4",
                path.to_str().unwrap(),
            ]);
        }
        list.push_str(&format!("{} {}\n", path.display(), i % classes));
    }
    let list_path = dir.join(format!("{name}.txt"));
    std::fs::write(&list_path, list).unwrap();
    list_path
}

/// A global allocator that counts the bytes allocated and not yet freed, for tests that bound
/// memory: install it with `#[global_allocator] static A: CountingAlloc = CountingAlloc;` in a
/// test binary (or fuzz target) of its own, and measure with [`peak_alloc_during`]. The counts
/// are process-wide, so the measured code should be the only thing running.
#[derive(Debug)]
pub struct CountingAlloc;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn note_alloc(size: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call forwards to the system allocator with the caller's arguments; the counters
// are plain atomics.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded as is.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
            note_alloc(new);
        }
        p
    }
}

/// Runs `f` and returns its result with the peak of live heap bytes above the level at the
/// start (meaningful only with [`CountingAlloc`] installed).
pub fn peak_alloc_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

/// A test's output folder under the target dir (`fresh_test_dir!`), created empty. Removed when
/// the test passes, so a suite's outputs (training runs, exported models: gigabytes in all) do
/// not pile up on the disk while it runs; kept, with its name, when the test panics.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// Empties (or creates) `path`.
    pub fn fresh(path: PathBuf) -> Self {
        if path.exists() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// The folder, kept after the tests: for a fixture in a static, which is never dropped and
    /// serves every test of its binary (emptied again by the next run).
    pub fn kept(self) -> PathBuf {
        std::mem::take(&mut std::mem::ManuallyDrop::new(self).0)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // Best effort: a folder left behind costs disk, not correctness.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// [`TestDir::fresh`] of `name` under the calling test crate's `CARGO_TARGET_TMPDIR`.
#[macro_export]
macro_rules! fresh_test_dir {
    ($name:expr) => {
        $crate::TestDir::fresh(::std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join($name))
    };
}
