//! Unit tests of each transform's edge cases, the pipeline config and Mixup.

#![allow(clippy::unwrap_used)]

use augment::{
    CenterCrop, Choice, CropChoice, Error, Frames, Mixup, MixupChoice, MultiScaleCrop, Normalize,
    Offset, Pipeline, PipelineConfig, RandomCrop, RandomFlip, Scale, TenCrop, ThreeCrop, Transform,
    IMAGENET_MEAN, IMAGENET_STD,
};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// `n` frames of `w` x `h` whose pixels encode their position and frame index.
fn clip(n: usize, w: u32, h: u32) -> Vec<RgbImage> {
    (0..n)
        .map(|t| {
            RgbImage::from_fn(w, h, |x, y| {
                Rgb([(x * 7 + t as u32) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8])
            })
        })
        .collect()
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[test]
fn scale_sizes_follow_python() {
    let keep = Scale {
        fixed_ratio: false,
        ..Scale::new(256)
    };
    let round = Scale {
        do_round: true,
        ..keep.clone()
    };
    assert_eq!(keep.output_size(320, 240), (341, 256));
    assert_eq!(keep.output_size(176, 144), (312, 256)); // 312.89 truncated
    assert_eq!(round.output_size(176, 144), (313, 256));
    assert_eq!(keep.output_size(240, 320), (256, 341));
    // Fixed ratio: 4:3 whatever the input's aspect.
    assert_eq!(Scale::new(256).output_size(640, 272), (341, 256));
    assert_eq!(Scale::new(256).output_size(100, 400), (256, 341));
    // Early return: the short side already has the length, even with fixed_ratio.
    assert_eq!(Scale::new(256).output_size(400, 256), (400, 256));
    assert_eq!(Scale::new(256).output_size(256, 256), (256, 256));
    // Python's round() is half-to-even: 3 * 3 / 2 = 4.5 -> 4, 5 * 3 / 2 = 7.5 -> 8.
    let r3 = Scale {
        short_size: 3,
        fixed_ratio: false,
        do_round: true,
    };
    assert_eq!(r3.output_size(2, 3), (3, 4));
    assert_eq!(r3.output_size(2, 5), (3, 8));
}

#[test]
fn scale_of_matching_clip_is_a_no_op() {
    let frames = clip(2, 300, 256);
    let out = Scale::new(256)
        .apply(Frames::new(&frames).unwrap())
        .unwrap();
    assert_eq!(out.to_images(), frames);
}

/// A list of grid corners.
type Grid = Vec<(f64, f64)>;

/// The Python's `pairs` and `ret`, transcribed literally.
fn python_candidates(m: &MultiScaleCrop, w: u32, h: u32) -> (Vec<(u32, u32)>, Vec<Grid>) {
    let base = w.min(h) as f64;
    let t = m.target_size as i64;
    let sizes: Vec<i64> = m
        .scales
        .iter()
        .map(|s| (base * s) as i64)
        .map(|x| if (x - t).abs() < 3 { t } else { x })
        .collect();
    let mut pairs = vec![];
    for (i, &ch) in sizes.iter().enumerate() {
        for (j, &cw) in sizes.iter().enumerate() {
            if (i as i64 - j as i64).abs() <= m.max_distort as i64 {
                pairs.push((cw as u32, ch as u32));
            }
        }
    }
    let grids = pairs
        .iter()
        .map(|&(cw, ch)| {
            let ws = (w as f64 - cw as f64) / 4.0;
            let hs = (h as f64 - ch as f64) / 4.0;
            let d = m.allow_duplication;
            let mut r = vec![(0.0, 0.0)];
            if d || ws != 0.0 {
                r.push((4.0 * ws, 0.0));
            }
            if d || hs != 0.0 {
                r.push((0.0, 4.0 * hs));
            }
            if d || (hs != 0.0 && ws != 0.0) {
                r.push((4.0 * ws, 4.0 * hs));
            }
            if d || (hs != 0.0 || ws != 0.0) {
                r.push((2.0 * ws, 2.0 * hs));
            }
            if m.more_fix_crop {
                for (a, b) in [
                    (0., 2.),
                    (4., 2.),
                    (2., 4.),
                    (2., 0.),
                    (1., 1.),
                    (3., 1.),
                    (1., 3.),
                    (3., 3.),
                ] {
                    r.push((a * ws, b * hs));
                }
            }
            r
        })
        .collect();
    (pairs, grids)
}

#[test]
fn multiscale_candidates_match_python_formula() {
    for (w, h) in [
        (320, 240),
        (340, 256),
        (256, 256),
        (176, 144),
        (175, 143),
        (254, 380),
    ] {
        for m in [
            MultiScaleCrop::new(256),
            MultiScaleCrop::new(224),
            MultiScaleCrop {
                allow_duplication: true,
                more_fix_crop: false,
                max_distort: 2,
                scales: vec![1.0, 0.8, 0.5],
                ..MultiScaleCrop::new(224)
            },
        ] {
            let (pairs, grids) = python_candidates(&m, w, h);
            assert_eq!(m.crop_sizes(w, h), pairs, "{w}x{h} {m:?}");
            for (&(cw, ch), grid) in pairs.iter().zip(&grids) {
                assert_eq!(m.grid_offsets(w, h, cw, ch), *grid, "{w}x{h} {cw}x{ch}");
            }
        }
    }
    let m = MultiScaleCrop::new(256);
    // 240 short side: 240, 210, 180, 158; 4 + 3 + 3 pairs with max_distort 1.
    assert_eq!(m.crop_sizes(320, 240).len(), 10);
    assert_eq!(m.crop_sizes(320, 240)[0], (240, 240));
    // Sides within 3 of the target snap to it.
    assert_eq!(m.crop_sizes(300, 254)[0], (256, 256));
    assert_eq!(m.grid_offsets(320, 240, 200, 200).len(), 13);
    // A box filling the image: only (0, 0) and the 8 extra positions survive de-duplication.
    assert_eq!(m.grid_offsets(256, 256, 256, 256).len(), 9);
    let five = MultiScaleCrop {
        more_fix_crop: false,
        ..m.clone()
    };
    assert_eq!(five.grid_offsets(320, 240, 200, 200).len(), 5);
    assert_eq!(five.grid_offsets(256, 256, 256, 256), vec![(0.0, 0.0)]);
    let dup = MultiScaleCrop {
        allow_duplication: true,
        ..five
    };
    assert_eq!(dup.grid_offsets(256, 256, 256, 256).len(), 5);
}

#[test]
fn multiscale_box_rounds_like_pillow() {
    // Grid centre 2 * 115.25 = 230.5 rounds to 230, right edge 409.5 to 410: 180 wide.
    let c = CropChoice {
        width: 179,
        height: 179,
        x: 230.5,
        y: 46.5,
    };
    assert_eq!(MultiScaleCrop::pil_box(&c), (230, 46, 410, 226));
    let c = CropChoice { x: 1.5, ..c };
    assert_eq!(MultiScaleCrop::pil_box(&c).0, 2);
}

#[test]
fn multiscale_samples_from_candidates_and_outputs_target() {
    let m = MultiScaleCrop::new(256);
    let frames = clip(2, 320, 240);
    let mut r = rng(3);
    for _ in 0..50 {
        let c = m.sample(320, 240, &mut r).unwrap();
        assert!(m.crop_sizes(320, 240).contains(&(c.width, c.height)));
        assert!(m
            .grid_offsets(320, 240, c.width, c.height)
            .contains(&(c.x, c.y)));
    }
    let c = m.sample(320, 240, &mut r).unwrap();
    let out = m.apply(Frames::new(&frames).unwrap(), &c).unwrap();
    assert_eq!(out.size(), (256, 256));
    assert_eq!(out.len(), 2);

    let random = MultiScaleCrop {
        fix_crop: false,
        ..m
    };
    for _ in 0..50 {
        let c = random.sample(320, 240, &mut r).unwrap();
        assert_eq!((c.x.fract(), c.y.fract()), (0.0, 0.0));
        assert!(c.x as u32 + c.width <= 320 && c.y as u32 + c.height <= 240);
    }
    // Python's randint(0, negative) raises: a snapped box larger than the image is an error.
    assert!(matches!(
        random.sample(300, 254, &mut r),
        Err(Error::CropTooLarge { .. }) | Ok(_)
    ));
}

#[test]
fn multiscale_box_past_the_edge_is_black() {
    let frames = clip(1, 300, 254);
    let m = MultiScaleCrop::new(256);
    let c = CropChoice {
        width: 256,
        height: 256,
        x: 0.0,
        y: -2.0,
    };
    let out = m.apply(Frames::new(&frames).unwrap(), &c).unwrap();
    assert_eq!(out.size(), (256, 256));
    assert_eq!(out.pixel(0, 10, 0).unwrap(), [0, 0, 0]);
    assert_eq!(out.pixel(0, 10, 1).unwrap(), [0, 0, 0]);
    assert_eq!(out.pixel(0, 10, 2).unwrap(), frames[0].get_pixel(10, 0).0);
    assert_eq!(
        out.pixel(0, 10, 255).unwrap(),
        frames[0].get_pixel(10, 253).0
    );
}

#[test]
fn random_crop_range_and_errors() {
    let rc = RandomCrop { target_size: 224 };
    let mut r = rng(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let o = rc.sample(230, 226, &mut r).unwrap();
        assert!(o.x <= 6 && o.y <= 2);
        seen.insert((o.x, o.y));
    }
    // Both ends inclusive, as Python's randint.
    assert_eq!(seen.len(), 7 * 3);
    assert_eq!(rc.sample(224, 224, &mut r).unwrap(), Offset { x: 0, y: 0 });
    let err = rc.sample(200, 300, &mut r).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("224x224") && msg.contains("200x300"), "{msg}");
    // An offset that does not fit is an error, not a panic.
    let frames = clip(1, 230, 230);
    let f = Frames::new(&frames).unwrap();
    let err = rc.apply(f, Offset { x: 7, y: 0 }).unwrap_err();
    assert!(
        matches!(
            err,
            Error::CropTooLarge {
                transform: "RandomCrop",
                width: 230,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn center_crop_rounds_half_to_even() {
    let cc = CenterCrop::new(224);
    assert_eq!(cc.offset(225, 224).unwrap().x, 0); // round(0.5) = 0
    assert_eq!(cc.offset(227, 224).unwrap().x, 2); // round(1.5) = 2
    assert_eq!(cc.offset(229, 224).unwrap().x, 2); // round(2.5) = 2
    let floor = CenterCrop {
        do_round: false,
        ..cc.clone()
    };
    assert_eq!(floor.offset(227, 224).unwrap().x, 1);
    assert_eq!(cc.offset(341, 256).unwrap(), Offset { x: 58, y: 16 });
    assert!(matches!(
        cc.offset(223, 300),
        Err(Error::CropTooLarge { .. })
    ));
}

#[test]
fn flip_is_lazy_and_composes_with_crops() {
    let frames = clip(2, 40, 30);
    let f = Frames::new(&frames).unwrap();
    let flipped = RandomFlip::default().apply(f.clone(), true);
    assert_eq!(
        flipped.pixel(1, 0, 5).unwrap(),
        frames[1].get_pixel(39, 5).0
    );
    // Crop after flip = flip of the mirrored crop.
    let a = CenterCrop {
        target_size: 20,
        do_round: false,
    }
    .apply(
        RandomCrop { target_size: 25 }
            .apply(flipped, Offset { x: 3, y: 2 })
            .unwrap(),
    )
    .unwrap()
    .to_images();
    let mut b = frames.clone();
    for img in &mut b {
        image::imageops::flip_horizontal_in_place(img);
    }
    let b: Vec<RgbImage> = b
        .iter()
        .map(|img| image::imageops::crop_imm(img, 3 + 2, 2 + 2, 20, 20).to_image())
        .collect();
    assert_eq!(a, b);
    // p = 0 never flips, p = 1 always.
    let mut r = rng(0);
    assert!((0..100).all(|_| !RandomFlip { p: 0.0 }.sample(&mut r).unwrap()));
    assert!((0..100).all(|_| RandomFlip { p: 1.0 }.sample(&mut r).unwrap()));
    let err = RandomFlip { p: 1.5 }.sample(&mut r).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { transform: "RandomFlip", reason } if reason.contains("1.5")),
        "{err}"
    );
}

#[test]
fn ten_crop_and_three_crop_views() {
    let frames = clip(2, 341, 256);
    let f = Frames::new(&frames).unwrap();
    let ten = TenCrop { target_size: 224 }.apply(&f).unwrap();
    assert_eq!(ten.len(), 10);
    // (341 - 224) / 4 = 29, (256 - 224) / 4 = 8.
    let offs = TenCrop { target_size: 224 }.offsets(341, 256).unwrap();
    assert_eq!(offs[3], Offset { x: 116, y: 32 });
    assert_eq!(offs[4], Offset { x: 58, y: 16 });
    for pair in ten.chunks(2) {
        assert!(!pair[0].is_flipped() && pair[1].is_flipped());
        let plain = pair[0].to_images();
        let mut mirrored = pair[1].to_images();
        for img in &mut mirrored {
            image::imageops::flip_horizontal_in_place(img);
        }
        assert_eq!(plain, mirrored);
    }
    assert_eq!(
        ten[2].pixel(0, 0, 0).unwrap(),
        frames[0].get_pixel(116, 0).0
    );
    assert_eq!(ten[2].pixel(0, 224, 0), None);

    let three = ThreeCrop { target_size: 256 };
    assert_eq!(
        three.offsets(341, 256).unwrap(),
        [
            Offset { x: 0, y: 0 },
            Offset { x: 84, y: 0 },
            Offset { x: 42, y: 0 }
        ]
    );
    assert_eq!(three.offsets(256, 300).unwrap()[1], Offset { x: 0, y: 44 });
    let err = three.offsets(300, 300).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { transform: "ThreeCrop", reason } if reason.contains("300x300")),
        "{err}"
    );
    assert_eq!(three.apply(&f).unwrap().len(), 3);
}

#[test]
fn frames_are_checked() {
    assert!(matches!(Frames::new(&[]), Err(Error::EmptyClip)));
    let mut frames = clip(3, 20, 10);
    frames[2] = RgbImage::new(20, 11);
    let err = Frames::new(&frames).unwrap_err();
    assert!(
        matches!(err, Error::FrameSizeMismatch { index: 2, .. }),
        "{err}"
    );
    let err = Frames::new(&[RgbImage::new(0, 5)]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::EmptyImage {
                width: 0,
                height: 5,
                ..
            }
        ),
        "{err}"
    );
    let p = Pipeline::new(PipelineConfig::tutorial_valid()).unwrap();
    let err = p.apply(&frames, &mut rng(0)).unwrap_err();
    assert!(
        matches!(err, Error::FrameSizeMismatch { index: 2, .. }),
        "{err}"
    );
    assert!(matches!(p.apply(&[], &mut rng(0)), Err(Error::EmptyClip)));
    // Too small for the train crops: an error naming the sizes.
    let small = clip(2, 100, 80);
    let crop_only = PipelineConfig {
        transforms: vec![Transform::CenterCrop(CenterCrop::new(224))],
        ..PipelineConfig::tutorial_valid()
    };
    let t = Pipeline::new(crop_only).unwrap();
    let msg = t.apply(&small, &mut rng(0)).err().unwrap().to_string();
    assert!(msg.contains("224x224"), "{msg}");
}

#[test]
fn normalisation_is_imagenet() {
    let frames = vec![RgbImage::from_pixel(4, 3, Rgb([0, 255, 128]))];
    let c = Normalize::imagenet().clip(&Frames::new(&frames).unwrap());
    assert_eq!(c.shape(), [1, 3, 3, 4]);
    let expect = |v: f32, ch: usize| (v / 255.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
    assert_eq!(c.data[0], expect(0.0, 0));
    assert_eq!(c.data[12], expect(255.0, 1));
    assert_eq!(c.data[35], expect(128.0, 2));
    let err = Normalize::new([0.0; 3], [1.0, 0.0, 1.0]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                transform: "Normalization",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn same_seed_same_clip() {
    let frames = clip(3, 320, 240);
    for cfg in [
        PipelineConfig::tutorial_train(),
        PipelineConfig::k400_train(),
    ] {
        let p = Pipeline::new(cfg).unwrap();
        let a = p.apply(&frames, &mut rng(42)).unwrap();
        let b = p.apply(&frames, &mut rng(42)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape(), [3, 3, 224, 224]);
        let differ = (0..10).any(|s| p.apply(&frames, &mut rng(s)).unwrap() != a);
        assert!(differ);
    }
}

#[test]
fn presets_and_sizes() {
    let v = Pipeline::new(PipelineConfig::tutorial_valid()).unwrap();
    assert_eq!(v.output_size(320, 240).unwrap(), (224, 224));
    assert!(v.leading_scale().is_some());
    assert_eq!(v.leading_scale().unwrap().output_size(320, 240), (341, 256));
    let k = Pipeline::new(PipelineConfig::k400_train()).unwrap();
    assert_eq!(k.leading_scale().unwrap().output_size(640, 272), (341, 256));
    assert_eq!(k.output_size(640, 272).unwrap(), (224, 224));
    let t = Pipeline::new(PipelineConfig::tutorial_train()).unwrap();
    assert!(t.leading_scale().is_none());
    // MultiScaleCrop always yields its target size, so small frames get upscaled.
    assert_eq!(t.output_size(200, 150).unwrap(), (224, 224));
    let kv = Pipeline::new(PipelineConfig::k400_valid()).unwrap();
    assert_eq!(kv.output_size(176, 144).unwrap(), (224, 224));
}

#[test]
fn config_round_trips_through_toml_and_json() {
    let toml_text = r#"
        mean = [0.5, 0.5, 0.5]
        [[transforms]]
        Scale = { short_size = 256 }
        [[transforms]]
        MultiScaleCrop = { target_size = 256, fix_crop = false }
        [[transforms]]
        RandomCrop = { target_size = 224 }
        [[transforms]]
        RandomFlip = {}
    "#;
    let cfg: PipelineConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(cfg.std, IMAGENET_STD);
    assert_eq!(cfg.mean, [0.5; 3]);
    let Transform::Scale(s) = &cfg.transforms[0] else {
        panic!()
    };
    assert!(s.fixed_ratio && !s.do_round);
    let Transform::MultiScaleCrop(m) = &cfg.transforms[1] else {
        panic!()
    };
    assert_eq!(m.scales, vec![1.0, 0.875, 0.75, 0.66]);
    assert!(!m.fix_crop && m.more_fix_crop && m.max_distort == 1);
    assert_eq!(
        cfg.transforms[3],
        Transform::RandomFlip(RandomFlip { p: 0.5 })
    );

    for preset in [
        PipelineConfig::tutorial_train(),
        PipelineConfig::tutorial_valid(),
        PipelineConfig::k400_train(),
        PipelineConfig::k400_valid(),
    ] {
        let t = toml::to_string(&preset).unwrap();
        assert_eq!(toml::from_str::<PipelineConfig>(&t).unwrap(), preset, "{t}");
        let j = serde_json::to_string(&preset).unwrap();
        assert_eq!(serde_json::from_str::<PipelineConfig>(&j).unwrap(), preset);
    }
    for (bad, field) in [
        (
            r#"{"transforms": [{"Scale": {"short_size": 256, "fixed": true}}]}"#,
            "`fixed`",
        ),
        (r#"{"transforms": [], "means": [0, 0, 0]}"#, "`means`"),
    ] {
        let e = serde_json::from_str::<PipelineConfig>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field") && e.contains(field), "{e}");
    }
}

#[test]
fn pipeline_checks_config_and_choices() {
    let ten = PipelineConfig {
        transforms: vec![
            Transform::Scale(Scale::new(256)),
            Transform::TenCrop(TenCrop { target_size: 224 }),
        ],
        ..PipelineConfig::k400_valid()
    };
    let p = Pipeline::new(ten.clone()).unwrap();
    assert_eq!(p.views(), 10);
    let frames = clip(2, 320, 240);
    assert!(matches!(
        p.apply(&frames, &mut rng(0)),
        Err(Error::MultiView { views: 10 })
    ));
    let views = p.apply_views(&frames, &mut rng(0)).unwrap();
    assert_eq!(views.len(), 10);
    assert!(views.iter().all(|c| c.shape() == [2, 3, 224, 224]));

    let mut not_last = ten;
    not_last.transforms.reverse();
    let err = Pipeline::new(not_last).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { reason, .. } if reason.contains("must come last")),
        "{err}"
    );
    let bad_p = PipelineConfig {
        transforms: vec![Transform::RandomFlip(RandomFlip { p: -1.0 })],
        ..PipelineConfig::tutorial_train()
    };
    let err = Pipeline::new(bad_p).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidParameter {
                transform: "RandomFlip",
                ..
            }
        ),
        "{err}"
    );

    let t = Pipeline::new(PipelineConfig::tutorial_train()).unwrap();
    assert!(matches!(
        t.apply_with(&frames, &[Choice::Fixed]),
        Err(Error::ChoiceCount {
            expected: 3,
            got: 1
        })
    ));
    let wrong = [Choice::Fixed, Choice::Fixed, Choice::RandomFlip(false)];
    assert!(matches!(
        t.apply_with(&frames, &wrong),
        Err(Error::ChoiceMismatch { index: 0, .. })
    ));
    let choices = t.sample(320, 240, &mut rng(9)).unwrap();
    assert_eq!(
        t.apply_with(&frames, &choices).unwrap()[0],
        t.apply(&frames, &mut rng(9)).unwrap()
    );
}

#[test]
fn mixup_mixes_with_a_permutation() {
    let m = Mixup::default();
    let mut r = rng(5);
    for batch in [1, 2, 7, 16] {
        for _ in 0..20 {
            let c = m.sample(batch, &mut r).unwrap();
            assert!((0.0..=1.0).contains(&c.lam));
            let mut p = c.perm.clone();
            p.sort();
            assert_eq!(p, (0..batch).collect::<Vec<_>>());
        }
    }
    // Beta(0.2, 0.2) piles up near 0 and 1.
    let lams: Vec<f32> = (0..1000)
        .map(|_| m.sample(4, &mut r).unwrap().lam)
        .collect();
    let extreme = lams.iter().filter(|l| **l < 0.1 || **l > 0.9).count();
    assert!(extreme > 500, "{extreme}");

    let data: Vec<f32> = (0..12).map(|v| v as f32).collect(); // 3 samples of 4
    let labels = [10, 11, 12];
    let choice = MixupChoice {
        lam: 0.25,
        perm: vec![2, 0, 1],
    };
    let out = m.apply(&data, &labels, &choice).unwrap();
    assert_eq!(out.permuted_labels, vec![12, 10, 11]);
    assert_eq!(out.labels, labels.to_vec());
    assert_eq!(out.data[0], 0.25 * 0.0 + 0.75 * 8.0);
    assert_eq!(out.data[5], 0.25 * 5.0 + 0.75 * 1.0);
    assert_eq!(out.lam, 0.25);

    let err = m.apply(&data[..11], &labels, &choice).unwrap_err();
    assert!(
        matches!(err, Error::BatchShape { len: 11, batch: 3 }),
        "{err}"
    );
    let dup = MixupChoice {
        lam: 0.5,
        perm: vec![0, 0, 1],
    };
    let err = m.apply(&data, &labels, &dup).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { transform: "Mixup", reason } if reason.contains("not a permutation")),
        "{err}"
    );
    let err = Mixup { alpha: 0.0 }.sample(3, &mut r).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter { transform: "Mixup", reason } if reason.contains("alpha = 0")),
        "{err}"
    );
    let a = m.mix(&data, &labels, &mut rng(1)).unwrap();
    assert_eq!(a, m.mix(&data, &labels, &mut rng(1)).unwrap());
}
