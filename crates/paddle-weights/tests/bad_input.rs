//! The pickle reader and converter on hand-made files: every pickle shape `paddle.save` writes,
//! and bad input (truncated, oversized, hostile, wrong shapes, missing keys) giving typed errors.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::Device;
use paddle_weights::pickle::{parse, Dtype, PickleError, Value};
use paddle_weights::{convert, parse_pdparams, ConvertOptions, ParseError, WeightsError};
use tsm_model::{parameter_shapes, Tsm, TsmConfig};

use common::{small_valid, P};

/// Our name -> Paddle's (the rename table run backwards), for making synthetic files.
fn paddle_name(ours: &str, with_prefix: bool) -> String {
    let mut n = ours
        .replace(".conv.", "._conv.")
        .replace(".bn.", "._batch_norm.")
        .replace(".running_mean", "._mean")
        .replace(".running_var", "._variance");
    if !with_prefix {
        n = n.trim_start_matches("backbone.").to_string();
    }
    n
}

/// A synthetic PaddleVideo state dict for `cfg`: values i * 1e-3 (per tensor), Linear [in, out].
fn synthetic(cfg: &TsmConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    parameter_shapes(cfg)
        .unwrap()
        .into_iter()
        .map(|(n, mut shape)| {
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len).map(|i| (i % 1000) as f32 * 1e-3).collect();
            if n == "head.fc.weight" {
                shape.reverse();
            }
            (paddle_name(&n, true), shape, v)
        })
        .collect()
}

fn arrays(bytes: &[u8]) -> Vec<(String, paddle_weights::pickle::NdArray)> {
    parse_pdparams(bytes).unwrap()
}

#[test]
fn synthetic_r18_converts_and_loads_in_both_protocols() {
    let cfg = TsmConfig::pptsm_r18(3);
    for proto in [2, 4] {
        let bytes = P::state_dict(proto, &synthetic(&cfg));
        let (tensors, report) = convert(&arrays(&bytes), &ConvertOptions::default()).unwrap();
        assert_eq!(report.config.as_ref().unwrap(), &cfg);
        assert_eq!(report.converted.len(), tensors.len());
        assert!(report.unused.is_empty());
        // the fc weight is transposed: ours [3, 512] from Paddle's [512, 3]
        let fc = &tensors
            .iter()
            .find(|(n, _)| n == "head.fc.weight")
            .unwrap()
            .1;
        assert_eq!(fc.dims(), &[3, 512]);
        let v = fc.to_vec2::<f32>().unwrap();
        assert_eq!(v[1][0], 1e-3); // Paddle element [0][1] is flat index 1
        assert_eq!(v[0][1], 3e-3); // Paddle element [1][0] is flat index 3
                                   // and the result is a loadable checkpoint
        let dir = tempfile::tempdir().unwrap();
        let meta = [(
            "tsm_config".to_string(),
            serde_json::to_string(&cfg).unwrap(),
        )]
        .into_iter()
        .collect();
        let path = dir.path().join("m.safetensors");
        tsm_model::write_safetensors(&path, &tensors, &meta).unwrap();
        Tsm::load(&path, &Device::Cpu).unwrap();
    }
}

#[test]
fn backbone_without_prefix_and_extra_keys() {
    let cfg = TsmConfig::pptsm_r18(0);
    let mut entries: Vec<_> = synthetic(&cfg)
        .into_iter()
        .map(|(n, s, v)| (n.trim_start_matches("backbone.").to_string(), s, v))
        .collect();
    // an ImageNet classifier head, as PaddleClas files have
    entries.push(("fc_0.w_0".into(), vec![512, 4], vec![0.0; 2048]));
    let bytes = P::state_dict(4, &entries);
    let (tensors, report) = convert(
        &arrays(&bytes),
        &ConvertOptions {
            num_seg: 16,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.config.as_ref().unwrap().num_classes, 0);
    assert_eq!(report.config.as_ref().unwrap().num_seg, 16);
    assert_eq!(report.unused, ["fc_0.w_0"]);
    assert!(tensors.iter().all(|(n, _)| n.starts_with("backbone.")));
}

#[test]
fn missing_key_is_named() {
    let cfg = TsmConfig::pptsm_r18(3);
    let mut entries = synthetic(&cfg);
    entries.retain(|(n, _, _)| n != "backbone.res3b.conv1._batch_norm._variance");
    let err = convert(
        &arrays(&P::state_dict(4, &entries)),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    match err {
        WeightsError::MissingKeys(keys) => {
            assert_eq!(keys, ["backbone.res3b.conv1.bn.running_var"])
        }
        e => panic!("{e}"),
    }
}

#[test]
fn wrong_shape_is_named() {
    let cfg = TsmConfig::pptsm_r18(3);
    let mut entries = synthetic(&cfg);
    let e = entries
        .iter_mut()
        .find(|(n, _, _)| n == "backbone.res2a.conv0._conv.weight")
        .unwrap();
    e.1 = vec![64, 64, 3, 1];
    e.2.truncate(64 * 64 * 3);
    let err = convert(
        &arrays(&P::state_dict(4, &entries)),
        &ConvertOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, WeightsError::ShapeMismatch { key, .. } if key == "backbone.res2a.conv0._conv.weight"),
        "{err}"
    );
    assert!(err.to_string().contains("[64, 64, 3, 3]"));
}

#[test]
fn options_contradicting_the_file_fail() {
    let bytes = P::state_dict(4, &synthetic(&TsmConfig::pptsm_r18(3)));
    let a = arrays(&bytes);
    let e = convert(
        &a,
        &ConvertOptions {
            depth: Some(50),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, WeightsError::Config(m) if m.contains("depth 18")),
        "{e}"
    );
    let e = convert(
        &a,
        &ConvertOptions {
            num_classes: Some(400),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(&e, WeightsError::Config(m) if m.contains("3 outputs")),
        "{e}"
    );
}

#[test]
fn integer_weight_is_refused() {
    let mut p = P::new(4);
    p.op(b"}(")
        .s("backbone.conv1_1._conv.weight")
        .array(&[2], "i8", &[0u8; 16])
        .op(b"u.");
    let err = convert(
        &arrays(&p.b),
        &ConvertOptions {
            depth: Some(18),
            ..Default::default()
        },
    )
    .unwrap_err();
    // with one tensor the missing keys come first; an integer array alone is rejected on use
    assert!(matches!(err, WeightsError::MissingKeys(_)), "{err}");
    let parsed = arrays(&p.b);
    assert_eq!(parsed[0].1.dtype, Dtype::I64);
}

#[test]
fn memo_protocol5_frombuffer_and_bytes8() {
    // dtype memoised once and fetched again; BINBYTES8 and BYTEARRAY8 payloads; _frombuffer
    let mut p = P::new(5);
    p.op(b"}(")
        .s("a")
        .global("numpy._core.numeric", "_frombuffer")
        .op(b"(");
    p.op(&[0x8e])
        .op(&8u64.to_le_bytes())
        .op(&[0u8, 0, 128, 63, 0, 0, 0, 64]);
    p.global("numpy", "dtype")
        .s("f4")
        .op(&[0x89, 0x88, 0x87, b'R', b'q', 7]);
    p.op(b"(").int(2).op(b"t").s("C").op(b"tR");
    p.s("b")
        .global("numpy._core.numeric", "_frombuffer")
        .op(b"(");
    p.op(&[0x96]).op(&4u64.to_le_bytes()).op(&[0u8, 0, 64, 64]);
    p.op(&[b'h', 7]).op(b"(").int(1).op(b"t").s("C").op(b"tRu.");
    let a = arrays(&p.b);
    assert_eq!(a[0].0, "a");
    assert_eq!(a[0].1.shape, [2]);
    assert_eq!(a[1].1.data.as_slice(), &[0u8, 0, 64, 64]);
}

#[test]
fn big_params_are_joined() {
    let mut p = P::new(2);
    let v: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    p.op(b"}(")
        .s("w@@.0")
        .array(&[4], "f4", &v[..16])
        .s("w@@.1")
        .array(&[2], "f4", &v[16..]);
    p.s("UnpackBigParamInfor@@")
        .op(b"}(")
        .s("w")
        .op(b"}(")
        .s("OriginShape")
        .op(b"(")
        .int(2)
        .int(3)
        .op(b"t");
    p.s("slices")
        .op(b"]q\x01(")
        .s("w@@.0")
        .s("w@@.1")
        .op(b"euuu.");
    let a = arrays(&p.b);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].0, "w");
    assert_eq!(a[0].1.shape, [2, 3]);
    assert_eq!(a[0].1.data.as_slice(), v.as_slice());
    // a piece missing
    let mut p = P::new(2);
    p.op(b"}(").s("w@@.0").array(&[4], "f4", &v[..16]);
    p.s("UnpackBigParamInfor@@")
        .op(b"}(")
        .s("w")
        .op(b"}(")
        .s("OriginShape")
        .op(b"(")
        .int(2)
        .int(3)
        .op(b"t");
    p.s("slices").op(b"](").s("w@@.0").s("w@@.1").op(b"euuu.");
    match parse_pdparams(&p.b).unwrap_err() {
        ParseError::Entry(k, m) => assert!(k == "w" && m.contains("w@@.1"), "{m}"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn every_truncation_is_a_typed_error() {
    let full = small_valid();
    assert!(parse(&full).is_ok());
    for cut in 0..full.len() {
        match parse(&full[..cut]) {
            Err(PickleError::Truncated { offset, .. }) => assert!(offset <= cut),
            Err(PickleError::LengthTooLarge {
                offset, available, ..
            }) => {
                assert!(offset < cut && available < cut)
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn oversized_length_claims_are_refused_before_allocating() {
    // BINBYTES8 claiming 2^63 bytes
    let mut p = P::new(4);
    p.op(&[0x8e]).op(&(1u64 << 63).to_le_bytes()).op(b"abc");
    match parse(&p.b).unwrap_err() {
        PickleError::LengthTooLarge {
            offset,
            claimed,
            available,
            ..
        } => {
            assert_eq!((offset, claimed, available), (2, 1 << 63, 3));
        }
        e => panic!("{e}"),
    }
    // BINUNICODE claiming 4 GiB
    let mut p = P::new(2);
    p.op(b"X").op(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse(&p.b).unwrap_err(),
        PickleError::LengthTooLarge { offset: 2, .. }
    ));
    // an array whose shape claims far more than its bytes
    let mut p = P::new(4);
    p.op(b"}(")
        .s("w")
        .array(&[1 << 30, 1 << 30], "f4", &[0u8; 8])
        .op(b"u.");
    let e = parse(&p.b).unwrap_err().to_string();
    assert!(e.contains("needs") && e.contains("data has 8"), "{e}");
}

#[test]
fn hostile_globals_are_refused() {
    for (m, n) in [
        ("os", "system"),
        ("builtins", "eval"),
        ("posix", "system"),
        ("numpy", "load"),
    ] {
        let mut p = P::new(2);
        p.global(m, n).s("echo pwned").op(&[0x85, b'R', b'.']);
        match parse(&p.b).unwrap_err() {
            PickleError::ForbiddenGlobal {
                offset,
                module,
                name,
            } => {
                assert_eq!((offset, module.as_str(), name.as_str()), (2, m, n));
            }
            e => panic!("{e}"),
        }
    }
    // the same through STACK_GLOBAL
    let mut p = P::new(4);
    p.s("subprocess").s("call").op(&[0x93]);
    assert!(parse(&p.b)
        .unwrap_err()
        .to_string()
        .contains("subprocess.call"));
}

#[test]
fn malformed_structures_are_typed_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x80, 1, b'N', b'.'], "protocol 1"),
        (vec![0x80, 4, b'.'], "underflow"),
        (vec![0x80, 4, b'h', 9, b'.'], "never stored"),
        (
            vec![0x80, 4, b'}', b'q', 0, b'h', 0, b'.'],
            "shared references",
        ),
        (vec![0x80, 4, b'u', b'.'], "MARK"),
        (vec![0x80, 4, b'P', b'.'], "opcode 0x50"),
        (vec![0x80, 4, b'N', b'N', b'R', b'.'], "cannot call"),
        (vec![0x80, 4, 0x97, b'.'], "out-of-band"),
    ];
    for (bytes, want) in cases {
        let e = parse(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{bytes:?}: {e}");
    }
    // nesting beyond the cap
    let mut deep = vec![0x80, 4, b'K', 0];
    deep.extend(std::iter::repeat_n(0x85, 10_000));
    deep.push(b'.');
    assert!(parse(&deep).unwrap_err().to_string().contains("nesting"));
    // not a dict at the top
    assert!(matches!(
        parse_pdparams(&[0x80, 4, b'N', b'.']),
        Err(ParseError::Structure(_))
    ));
    // a key that is not an array
    let mut p = P::new(4);
    p.op(b"}(").s("w").int(3).op(b"u.");
    assert!(matches!(parse_pdparams(&p.b), Err(ParseError::Entry(k, _)) if k == "w"));
    // a valid pickle of other values still parses
    assert_eq!(parse(&[0x80, 4, b'K', 7, b'.']).unwrap(), Value::Int(7));
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trunc.pdparams");
    std::fs::write(&p, &small_valid()[..40]).unwrap();
    let e = paddle_weights::read_pdparams(&p).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Pickle { path, cause: PickleError::Truncated { .. } } if *path == p),
        "{e}"
    );
    let e = e.to_string();
    assert!(
        e.contains("trunc.pdparams") && e.contains("truncated at byte"),
        "{e}"
    );
    let absent = dir.path().join("absent");
    let e = paddle_weights::read_pdparams(&absent).unwrap_err();
    assert!(
        matches!(&e, WeightsError::Io { path, cause } if *path == absent && cause.kind() == std::io::ErrorKind::NotFound),
        "{e}"
    );
    assert!(e.to_string().contains("absent"), "{e}");
}
