//! The whole valid-mode data path (our decoding, sampling and transforms) against the
//! tutorial's `Compose(train_mode=False)` on the same videos: real media and generated
//! UCF101-style clips. Reference: `tests/reference/tutorial_decode.py`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use augment::{ClipLoader, Pipeline, PipelineConfig};
use test_support::{mean_abs_diff, read_json, read_safetensors, reference_dir};
use video_io::{DecodeOptions, SampleLocation, SampleMode, Sampling};

#[test]
fn valid_tensor_matches_the_tutorial() {
    let dir = reference_dir("tutorial_decode");
    let summary = read_json(&dir.join("decode.json"));
    let loader = ClipLoader::new(
        Sampling::default(),
        Pipeline::new(PipelineConfig::tutorial_valid()).unwrap(),
        DecodeOptions::default(),
    );
    let mut checked = 0;
    for (name, rec) in summary.as_object().unwrap() {
        let p = PathBuf::from(rec["path"].as_str().unwrap());
        let path = if p.is_absolute() { p } else { dir.join(p) };
        let reference = read_safetensors(&dir.join(format!("{name}.safetensors")));
        let expect = &reference["valid_tensor"];
        let got = loader
            .load_seeded(&SampleLocation::Video(path), SampleMode::Valid, 0)
            .unwrap();
        assert_eq!(got.clips.len(), 1);
        let clip = &got.clips[0];
        assert_eq!(clip.shape().to_vec(), expect.shape, "{name}");
        let mad = mean_abs_diff(&clip.data, &expect.data);
        println!("{name}: valid-mode MAD {mad:.6}");
        assert!(mad <= 0.02, "{name}: MAD {mad}");
        checked += 1;
    }
    assert!(checked >= 8);
}
