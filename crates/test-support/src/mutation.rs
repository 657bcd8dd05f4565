//! A seeded mutation fuzz for the suite, the short counterpart of the cargo-fuzz runs: real
//! files mutated the way libFuzzer mutates them, the same cases on every run.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One libFuzzer-style mutation: bit flips, interesting values over 1/4/8-byte fields (length
/// claims), truncation, insertion, deletion, duplication of a range, splicing `other`.
fn mutate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: [u64; 8] = [
        0,
        1,
        0x7f,
        0xff,
        0x7fff_ffff,
        0xffff_ffff,
        u64::MAX,
        1 << 40,
    ];
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let at = rng.random_range(0..data.len());
    match rng.random_range(0..8) {
        0 => data[at] ^= 1 << rng.random_range(0..8),
        1 => data[at] = rng.random(),
        2 => {
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())].to_le_bytes();
            let end = (at + width).min(data.len());
            data[at..end].copy_from_slice(&v[..end - at]);
        }
        3 => data.truncate(at),
        4 => {
            let n = rng.random_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        5 => {
            let end = rng.random_range(at..=data.len().min(at + 64));
            data.drain(at..end);
        }
        6 => {
            let end = rng.random_range(at..=data.len().min(at + 256));
            let chunk = data[at..end].to_vec();
            let to = rng.random_range(0..=data.len());
            data.splice(to..to, chunk);
        }
        _ => {
            let from = rng.random_range(0..other.len());
            let end = rng.random_range(from..=other.len());
            data.splice(at.., other[from..end].iter().copied());
        }
    }
}

/// Runs `check` on `per_seed` mutants of each of `seeds` (named files: 1 to 4 mutations each,
/// splicing the next seed), from generator seed `rng_seed`; returns how many cases ran and for
/// how many `check` said the input still loaded. A case that panics is written to `keep`
/// before the panic is passed on, so it can be replayed.
pub fn run_mutations(
    seeds: &[(String, Vec<u8>)],
    per_seed: usize,
    rng_seed: u64,
    keep: &Path,
    mut check: impl FnMut(&[u8], &str) -> bool,
) -> (usize, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let (mut cases, mut loaded) = (0, 0);
    for (i, (name, bytes)) in seeds.iter().enumerate() {
        let other = &seeds[(i + 1) % seeds.len()].1;
        for case in 0..per_seed {
            let mut data = bytes.clone();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut rng, &mut data, other);
            }
            let what = format!("{name} case {case}");
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data, &what))) {
                Ok(ok) => loaded += usize::from(ok),
                Err(panic) => {
                    std::fs::write(keep, &data).unwrap();
                    eprintln!("{what} panicked; input kept in {}", keep.display());
                    std::panic::resume_unwind(panic);
                }
            }
            cases += 1;
        }
    }
    (cases, loaded)
}

/// The files of `dir` whose names end in `suffix`, with their bytes, sorted by name.
pub fn seed_files(dir: &Path, suffix: &str) -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    seeds.sort();
    seeds
}
