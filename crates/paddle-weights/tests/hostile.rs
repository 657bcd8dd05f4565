//! The reader on hostile bytes, in the normal test suite: a seeded mutation fuzz of real
//! `paddle.save` files (protocols 2, 3 and 4, in `fuzz/seeds/`) and regression tests for what
//! the long cargo-fuzz runs (`cargo xtask fuzz`) and review found. Every input must give a value
//! or an error, never a panic, with heap use bounded by a small multiple of the input size (the
//! allocator of this test binary counts live bytes).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use paddle_weights::{max_heap_bytes, parse_pdparams, ParseError};
use test_support::{peak_alloc_during, run_mutations, seed_files, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The allocation counter is process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let seeds = seed_files(&dir, ".pdparams");
    assert!(seeds.len() >= 5, "seeds missing in {}", dir.display());
    seeds
}

/// Parses `data`, asserting the memory bound; returns the result.
fn parse_bounded(data: &[u8], what: &str) -> Result<usize, ParseError> {
    let (result, peak) = peak_alloc_during(|| parse_pdparams(data).map(|a| a.len()));
    let bound = max_heap_bytes(data.len());
    assert!(
        peak <= bound,
        "{what}: {peak} heap bytes for {} input bytes (bound {bound})",
        data.len()
    );
    result
}

/// Every byte of a small state dict replaced by each of a few values that are (or start) pickle
/// opcodes: marks, stops, memo gets, huge byte strings.
#[test]
fn corrupted_bytes_fail_cleanly_within_the_memory_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let full = common::small_valid();
    for i in 0..full.len() {
        for x in [0x00u8, 0xff, 0x80, b'(', b'.', b'h', 0x8e] {
            let mut b = full.clone();
            b[i] = x;
            let _ = parse_bounded(&b, &format!("byte {i} set to {x:#04x}"));
        }
    }
}

#[test]
fn mutated_real_files_fail_cleanly_within_the_memory_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seeds = seeds();
    for (name, bytes) in &seeds {
        let n = parse_bounded(bytes, name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(n >= 2, "{name}: {n} arrays");
    }
    let started = Instant::now();
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-crash");
    let (cases, parsed) = run_mutations(&seeds, 4000, 8, &keep, |data, what| {
        parse_bounded(data, what).is_ok()
    });
    println!(
        "{cases} mutated inputs ({parsed} still parsed) in {:.2}s",
        started.elapsed().as_secs_f64()
    );
}

/// Found by cargo-fuzz: a file that is almost all `EMPTY_LIST` and `EMPTY_DICT` opcodes pushes a
/// value per byte; the stack's growth, not a length claim, sets the peak (the bound was too tight
/// for it at 64 bytes per input byte).
#[test]
fn a_stack_of_empty_containers_stays_within_the_bound() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for n in [100, 1252, 5000, 40_000] {
        let mut data = b"\x80\x04}(".to_vec();
        data.extend((0..n).map(|i| if i % 3 == 0 { b'}' } else { b']' }));
        data.push(b'.');
        // STOP takes the last container: an empty dict (no arrays) or a list (not a dict)
        match parse_bounded(&data, &format!("{n} empty containers")) {
            Ok(0) | Err(ParseError::Structure(_)) => {}
            other => panic!("{n}: {other:?}"),
        }
    }
}

/// `SHORT_BINUNICODE`.
fn str_op(s: &str) -> Vec<u8> {
    let mut b = vec![0x8c, s.len() as u8];
    b.extend_from_slice(s.as_bytes());
    b
}

/// A fresh 4-byte u8 array via `numpy.core.numeric._frombuffer` (protocol 5 style).
fn array_op() -> Vec<u8> {
    let mut b = b"cnumpy.core.numeric\n_frombuffer\n(C\x04abcdcnumpy\ndtype\n".to_vec();
    b.extend(str_op("u1"));
    b.extend(b"\x85RK\x04\x85");
    b.extend(str_op("C"));
    b.extend(b"tR");
    b
}

fn entry_error(data: &[u8], what: &str) -> (String, String) {
    match parse_bounded(data, what) {
        Err(ParseError::Entry(key, msg)) => (key, msg),
        other => panic!("{what}: {other:?}"),
    }
}

/// Found in review: error messages printed the offending value with `{:?}`, and dict keys were
/// compared on insertion; a tuple whose halves are one memoised tuple, 60 levels deep, prints
/// (and compares) in 2^60 steps.
#[test]
fn shared_deep_tuples_are_neither_printed_nor_compared() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // memo 60 holds the tower; the stack is left as it was
    let mut tower = b")q\x000".to_vec();
    for i in 0..60u8 {
        tower.extend([b'h', i, b'h', i, 0x86, b'q', i + 1, b'0']);
    }
    let mut as_value = b"\x80\x04}".to_vec();
    as_value.extend(str_op("k"));
    as_value.extend(&tower);
    as_value.extend(b"h\x3cs.");
    let (key, msg) = entry_error(&as_value, "tuple value");
    assert_eq!(key, "k");
    assert!(msg.contains("found a tuple"), "{msg}");

    let mut as_keys = b"\x80\x04}".to_vec();
    as_keys.extend(&tower);
    as_keys.extend(b"(h\x3cNh\x3cNu.");
    match parse_bounded(&as_keys, "tuple keys") {
        Err(ParseError::Structure(msg)) => assert!(msg.contains("not a string"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

/// Found in review: `_codecs.encode` of one memoised string, called many times, made a new
/// buffer each time: ~8 input bytes per copy of a 4 KiB string.
#[test]
fn encoding_a_memoised_string_many_times_shares_one_buffer() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut p = b"\x80\x02c_codecs\nencode\nq\x010X\x00\x10\x00\x00".to_vec();
    p.extend(std::iter::repeat_n(b'a', 4096));
    p.extend(b"q\x020");
    p.extend(str_op("latin1"));
    p.extend(b"q\x030}");
    p.extend(str_op("k"));
    p.extend(b"](");
    for _ in 0..2000 {
        p.extend(b"h\x01h\x02h\x03\x86R");
    }
    p.extend(b"es.");
    let (_, msg) = entry_error(&p, "repeated encode");
    assert!(msg.contains("found a list"), "{msg}");
}

/// Found in review: one array stored under many keys through memo references (or joined into a
/// big parameter many times) multiplies the file's bytes in the result; `paddle.save` never
/// shares arrays between keys, so it is refused, as is a repeated key.
#[test]
fn shared_arrays_and_repeated_keys_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut shared = b"\x80\x04}(".to_vec();
    shared.extend(str_op("a"));
    shared.extend(array_op());
    shared.extend(b"q\x00");
    shared.extend(str_op("b"));
    shared.extend(b"h\x00u.");
    let (key, msg) = entry_error(&shared, "shared array");
    assert!(key == "a" || key == "b", "{key}");
    assert!(msg.contains("shared with another key"), "{msg}");

    let mut twice = b"\x80\x04}(".to_vec();
    for _ in 0..2 {
        twice.extend(str_op("a"));
        twice.extend(array_op());
    }
    twice.extend(b"u.");
    let (key, msg) = entry_error(&twice, "repeated key");
    assert_eq!(key, "a");
    assert!(msg.contains("appears twice"), "{msg}");

    // The same bytes with distinct keys are fine (the builder above is right).
    let mut ok = b"\x80\x04}(".to_vec();
    for k in ["a", "b"] {
        ok.extend(str_op(k));
        ok.extend(array_op());
    }
    ok.extend(b"u.");
    assert_eq!(parse_bounded(&ok, "two arrays").unwrap(), 2);
}
