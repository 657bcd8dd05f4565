//! Our side of `cargo xtask bench pipeline`: loads one clip per listed video through the
//! tutorial's valid or train pipeline and prints `{"clips", "seconds", "peak_rss_mb"}`.
//!
//! `pipeline_bench --mode valid|train --threads N [--repeat R] LIST_OR_VIDEO`
//! With N > 1 clips are loaded in parallel on a rayon pool of N threads, one FFmpeg thread each,
//! as the training loader does.

use std::time::Instant;

use augment::{ClipLoader, Pipeline, PipelineConfig};
use rayon::prelude::*;
use video_io::{DecodeOptions, ListFormat, ListOptions, SampleLocation, SampleMode, Sampling};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let mode = match flag("--mode").as_deref() {
        Some("train") => SampleMode::Train,
        _ => SampleMode::Valid,
    };
    let threads: usize = flag("--threads").map_or(Ok(1), |t| t.parse())?;
    let repeat: usize = flag("--repeat").map_or(Ok(1), |t| t.parse())?;
    let input = args
        .last()
        .ok_or("usage: pipeline_bench --mode M --threads N LIST")?;
    let locations: Vec<SampleLocation> = if input.ends_with(".txt") {
        video_io::read_list(input.as_ref(), ListFormat::Videos, &ListOptions::default())?
            .into_iter()
            .map(|e| e.location)
            .collect()
    } else {
        vec![SampleLocation::Video(input.into())]
    };
    let jobs: Vec<&SampleLocation> = (0..repeat).flat_map(|_| locations.iter()).collect();
    let config = match mode {
        SampleMode::Train => PipelineConfig::tutorial_train(),
        SampleMode::Valid => PipelineConfig::tutorial_valid(),
    };
    let loader = ClipLoader::new(
        Sampling::default(),
        Pipeline::new(config)?,
        DecodeOptions { threads: 1 },
    );
    // Warm-up (codec registration, first allocations), as the Python baselines do.
    loader.load_seeded(jobs[0], mode, 0)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let start = Instant::now();
    let clips: Result<Vec<usize>, augment::Error> = pool.install(|| {
        jobs.par_iter()
            .enumerate()
            .map(|(i, loc)| {
                loader
                    .load_seeded(loc, mode, i as u64)
                    .map(|c| c.clips.len())
            })
            .collect()
    });
    let clips = clips?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"clips\": {}, \"seconds\": {seconds:.4}, \"peak_rss_mb\": {:.1}}}",
        clips.len(),
        peak_rss_mb()
    );
    Ok(())
}
