//! `cargo xtask bench pipeline`: the data path, ours against the baselines, in one run.
//! `cargo xtask bench scale`: training samples/s of one process against two MPI ranks.
//!
//! Generates two corpora with the ffmpeg CLI (cached under `target/bench/corpus`), then times
//! each method in its own process so that peak RSS is per method: the ffmpeg CLI decoding every
//! frame (the floor for decode-everything), the tutorial's Python pipeline, decord's `get_batch`
//! of the sampled indices followed by the tutorial's transforms, and ours on one thread and on
//! all cores. One table, ratios to the tutorial's pipeline.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, project_root, python, run_cmd};

/// One corpus: its name, the files, and how they were made.
struct Corpus {
    name: &'static str,
    files: Vec<PathBuf>,
}

fn ffmpeg(args: &[&str]) -> Result<()> {
    run_cmd(
        Command::new("ffmpeg")
            .args(["-y", "-hide_banner", "-loglevel", "error"])
            .args(args),
    )
}

/// Makes `path` with `args` unless it exists (written to a temporary name, then renamed, so a
/// killed run leaves no half file that looks complete).
fn make(path: &Path, args: &[&str]) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension(format!(
        "part.{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or("mp4")
    ));
    let mut a: Vec<&str> = args.to_vec();
    let tmp_s = tmp.to_str().context("non-UTF-8 path")?;
    a.push(tmp_s);
    ffmpeg(&a)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn shared_media(name: &str) -> Result<String> {
    let p = python::shared_dir().join("media").join(name);
    if !p.exists() {
        bail!("{} is missing (set TSM_SHARED_DIR)", p.display());
    }
    Ok(p.to_string_lossy().into_owned())
}

/// UCF101-like: 320x240, 25 fps, xvid .avi with mpeg4's default GOP (12), 4 to 10 s, cut from
/// real footage at different offsets. Kinetics-like: 1280x720 H.264, 10 s.
fn corpora(ucf_count: usize, k400_count: usize) -> Result<Vec<Corpus>> {
    let dir = project_root().join("target/bench/corpus");
    std::fs::create_dir_all(&dir)?;
    let bikes = shared_media("bikes.mp4")?;
    let bunny = shared_media("bigbuckbunny.mp4")?;
    let mut ucf = Vec::new();
    for i in 0..ucf_count {
        let secs = 4 + (i * 5) % 7; // 4..10 s
        let p = dir.join(format!("ucf_{i:02}.avi"));
        let start = format!("{}", (i * 3) % 5);
        let dur = secs.to_string();
        make(
            &p,
            &[
                "-stream_loop",
                "-1",
                "-ss",
                &start,
                "-i",
                &bikes,
                "-t",
                &dur,
                "-vf",
                "scale=320:240",
                "-r",
                "25",
                "-c:v",
                "mpeg4",
                "-vtag",
                "xvid",
                "-q:v",
                "5",
                "-an",
            ],
        )?;
        ucf.push(p);
    }
    let mut k400 = Vec::new();
    for i in 0..k400_count {
        let p = dir.join(format!("k400_{i:02}.mp4"));
        let start = format!("{:.1}", i as f64 * 0.7);
        make(
            &p,
            &[
                "-stream_loop",
                "-1",
                "-ss",
                &start,
                "-i",
                &bunny,
                "-t",
                "10",
                "-vf",
                "scale=1280:720",
                "-r",
                "30",
                "-c:v",
                "libx264",
                "-preset",
                "fast",
                "-crf",
                "23",
                "-pix_fmt",
                "yuv420p",
                "-an",
            ],
        )?;
        k400.push(p);
    }
    Ok(vec![
        Corpus {
            name: "ucf101-like",
            files: ucf,
        },
        Corpus {
            name: "kinetics-like",
            files: k400,
        },
    ])
}

/// A 10-minute 1080p H.264 video for the memory check.
fn long_video() -> Result<PathBuf> {
    let p = project_root().join("target/bench/corpus/long_1080p.mp4");
    make(
        &p,
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=25",
            "-t",
            "600",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "250",
            "-pix_fmt",
            "yuv420p",
        ],
    )?;
    Ok(p)
}

/// What one method reported.
#[derive(Debug)]
struct Measurement {
    clips: f64,
    seconds: f64,
    peak_rss_mb: f64,
}

impl Measurement {
    fn clips_per_s(&self) -> f64 {
        self.clips / self.seconds
    }
}

/// Parses the one JSON line `{"clips": .., "seconds": .., "peak_rss_mb": ..}` a bench process
/// prints last.
fn parse_measurement(stdout: &str) -> Result<Measurement> {
    let line = result_line(stdout)?;
    Ok(Measurement {
        clips: json_number(line, "clips")?,
        seconds: json_number(line, "seconds")?,
        // torch_eager.py names it for the GPU's peak too
        peak_rss_mb: json_number(line, "peak_rss_mb")
            .or_else(|_| json_number(line, "peak_mem_mb"))?,
    })
}

/// The last JSON line of a bench process's stdout: its result.
fn result_line(stdout: &str) -> Result<&str> {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("bench process printed no result line")
}

/// The number under key `k` of a flat one-line JSON object.
fn json_number(line: &str, k: &str) -> Result<f64> {
    let at = line
        .find(&format!("\"{k}\""))
        .with_context(|| format!("no {k} in {line}"))?;
    let rest = &line[at + k.len() + 2..];
    let rest = rest.trim_start_matches([':', ' ']);
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Ok(rest[..end].trim().parse()?)
}

fn measure(cmd: &mut Command) -> Result<Measurement> {
    parse_measurement(&bench_stdout(cmd)?)
}

/// Runs one bench process; its stdout, or an error with its stderr.
fn bench_stdout(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: bench: {cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_list(name: &str, files: &[PathBuf]) -> Result<PathBuf> {
    let p = project_root().join(format!("target/bench/{name}.txt"));
    let text: String = files
        .iter()
        .map(|f| format!("{} 0\n", f.display()))
        .collect();
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Runs the pipeline benchmark and prints the table.
pub fn pipeline(quick: bool) -> Result<()> {
    crate::setup::run(false)?;
    let python = python::venv_python()?;
    run_cmd(cargo().current_dir(project_root()).args([
        "build",
        "--release",
        "-p",
        "augment",
        "--example",
        "pipeline_bench",
    ]))?;
    let ours = target_dir().join("release/examples/pipeline_bench");
    let script = project_root().join("tests/bench/pipeline_baselines.py");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ucf_n, k_n) = if quick { (8, 2) } else { (40, 6) };
    let mut rows: Vec<(String, String, String, Measurement)> = Vec::new();
    for corpus in corpora(ucf_n, k_n)? {
        let list = write_list(corpus.name, &corpus.files)?;
        for mode in ["valid", "train"] {
            let baseline = |method: &str| {
                let mut c = Command::new(&python);
                c.arg(&script)
                    .args([method, mode])
                    .arg(&list)
                    .env("TSM_SHARED_DIR", python::shared_dir());
                c
            };
            let mut methods: Vec<(String, Command)> = Vec::new();
            if mode == "valid" {
                methods.push((
                    "ffmpeg CLI, all frames, 1 thread".into(),
                    baseline("ffmpeg"),
                ));
            }
            methods.push(("tutorial (OpenCV + PIL)".into(), baseline("tutorial")));
            methods.push(("decord get_batch + PIL".into(), baseline("decord")));
            for threads in [1, cores] {
                let mut c = Command::new(&ours);
                c.args(["--mode", mode, "--threads", &threads.to_string()])
                    .arg(&list);
                methods.push((format!("tsm-rs, {threads} thread(s)"), c));
            }
            for (label, mut cmd) in methods {
                let m = measure(&mut cmd)?;
                rows.push((corpus.name.to_string(), mode.to_string(), label, m));
            }
        }
    }
    print_table(&rows, cores);
    let long = long_video()?;
    let mem = measure(
        Command::new(&ours)
            .args(["--mode", "valid", "--threads", "1", "--repeat", "20"])
            .arg(&long),
    )?;
    println!(
        "\nmemory: 10-minute 1080p H.264, valid mode, 20 clips: peak RSS {:.0} MB ({:.2} clips/s)",
        mem.peak_rss_mb,
        mem.clips_per_s()
    );
    Ok(())
}

fn print_table(rows: &[(String, String, String, Measurement)], cores: usize) {
    println!(
        "\npipeline benchmark: {cores} cores, 8 segments x 224 crop, clips/s (higher is better)"
    );
    println!(
        "| corpus | mode | method | clips/s | x tutorial | peak RSS MB |\n|---|---|---|---:|---:|---:|"
    );
    for (corpus, mode, label, m) in rows {
        let tutorial = rows
            .iter()
            .find(|r| &r.0 == corpus && &r.1 == mode && r.2.starts_with("tutorial"))
            .map(|r| r.3.clips_per_s());
        let ratio = tutorial.map_or("-".to_string(), |t| format!("{:.2}", m.clips_per_s() / t));
        println!(
            "| {corpus} | {mode} | {label} | {:.2} | {ratio} | {:.0} |",
            m.clips_per_s(),
            m.peak_rss_mb
        );
    }
}

/// Training throughput, one process against two MPI ranks sharing this machine's cores: the
/// same small TSM (ResNet-18, 8 frames, 64x64 crops), the same global batch and steps. One
/// process gets every core as compute threads, each rank half of them. Samples/s are taken
/// from rank 0's step records after the first step (warm-up).
pub fn scale(steps: usize) -> Result<()> {
    crate::setup::run(true)?;
    run_cmd(cargo().current_dir(project_root()).args([
        "build",
        "--release",
        "-p",
        "cli",
        "--features",
        "mpi",
    ]))?;
    let tsm = target_dir().join("release/tsm-cli");
    let dir = project_root().join("target/bench/scale");
    std::fs::create_dir_all(&dir)?;
    let global_batch = 8;
    let mut list = String::new();
    for i in 0..global_batch * (steps + 1) {
        let path = dir.join(format!("clip_{i:03}.avi"));
        let hue = format!("hue=h={}", i * 23);
        make(
            &path,
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=128x96:rate=25",
                "-vf",
                &hue,
                "-frames:v",
                "50",
                "-c:v",
                "mpeg4",
            ],
        )?;
        list.push_str(&format!("{} {}\n", path.display(), i % 10));
    }
    let list_path = dir.join("train.txt");
    std::fs::write(&list_path, list)?;
    let cfg = dir.join("scale.toml");
    std::fs::write(&cfg, scale_config(&list_path, steps + 1))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_rank = (cores / 2).max(1);
    let run = |ranks: usize, threads: usize| -> Result<f64> {
        let out = dir.join(format!("run_{ranks}"));
        let mut cmd = if ranks == 1 {
            Command::new(&tsm)
        } else {
            let mut c = Command::new("mpirun");
            c.args(["-np", &ranks.to_string(), "--oversubscribe"])
                .args([
                    "--mca",
                    "btl",
                    "self,tcp",
                    "--mca",
                    "btl_tcp_if_include",
                    "lo",
                ])
                .args(["--mca", "oob_tcp_if_include", "lo"])
                .arg(&tsm)
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
            c
        };
        cmd.args(["train", "-c"])
            .arg(&cfg)
            .arg("--output")
            .arg(&out)
            .args(["-o", &format!("data.batch_size={}", global_batch / ranks)])
            .args(["-o", &format!("data.num_workers={threads}")])
            .env("RAYON_NUM_THREADS", threads.to_string());
        eprintln!("xtask: bench: {cmd:?}");
        let status = cmd.stdout(std::process::Stdio::null()).status()?;
        if !status.success() {
            bail!("{cmd:?} failed with {status}");
        }
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
        let (mut samples, mut seconds) = (0.0, 0.0);
        for line in metrics.lines().filter(|l| l.contains("\"kind\":\"step\"")) {
            if json_number(line, "iter")? >= 1.0 {
                let ips = json_number(line, "ips")?;
                let t = json_number(line, "batch_time")?;
                samples += ips * t;
                seconds += t;
            }
        }
        if seconds == 0.0 {
            bail!("{}: no step after the first", out.display());
        }
        Ok(samples / seconds)
    };
    let one = run(1, cores)?;
    let two = run(2, per_rank)?;
    println!(
        "\ntraining scale benchmark: {cores} cores, ResNet-18 TSM, 8 frames x 64^2, global batch \
         {global_batch}, {steps} timed steps"
    );
    println!("| processes | threads each | samples/s | x 1 process |\n|---|---:|---:|---:|");
    println!("| 1 | {cores} | {one:.2} | 1.00 |");
    println!("| 2 MPI ranks | {per_rank} | {two:.2} | {:.2} |", two / one);
    Ok(())
}

fn scale_config(list: &Path, iters: usize) -> String {
    format!(
        r#"
[model]
depth = 18
num_seg = 8
num_classes = 10

[data]
format = "videos"
train_list = "{list}"
batch_size = 8
prefetch = 2
sampling = {{ segments = {{ num_seg = 8, seg_len = 1 }} }}

[data.train_pipeline]
transforms = [
  {{ MultiScaleCrop = {{ target_size = 80 }} }},
  {{ RandomCrop = {{ target_size = 64 }} }},
  {{ RandomFlip = {{ p = 0.5 }} }},
]

[data.valid_pipeline]
transforms = [{{ CenterCrop = {{ target_size = 64 }} }}]

[train]
epochs = 1
max_iters = {iters}
log_interval = 1

[lr]
warmup_start_lr = 0.01
warmup_epochs = 0
cosine_base_lr = 0.01

[output]
dir = "unused"
"#,
        list = list.display(),
    )
}

/// The cargo target folder (`CARGO_TARGET_DIR` or `target/`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

/// What `bench model` runs, built: our bench binary, the exported ONNX model of the same network
/// (PP-TSM R50, 8 frames, 224 px) and the Python that runs the baselines.
struct ModelBench {
    python: PathBuf,
    /// The PyTorch venv's python.
    torch: PathBuf,
    ours: PathBuf,
    onnx: PathBuf,
}

impl ModelBench {
    /// Builds model_bench and onnx_export and exports the ONNX model.
    fn build() -> Result<Self> {
        // prost-build (the ONNX export) needs protoc
        crate::setup::run(false)?;
        let python = python::venv_python()?;
        run_cmd(cargo().current_dir(project_root()).args([
            "build",
            "--release",
            "-p",
            "tsm-model",
            "--features",
            "onnx",
            "--example",
            "model_bench",
            "--example",
            "onnx_export",
        ]))?;
        let onnx = target_dir().join("bench/pptsm_r50_t8_s224.onnx");
        std::fs::create_dir_all(target_dir().join("bench"))?;
        run_cmd(
            Command::new(target_dir().join("release/examples/onnx_export"))
                .args(["50", "8", "224"])
                .arg(&onnx),
        )?;
        Ok(Self {
            python,
            torch: python::torch_python()?,
            ours: target_dir().join("release/examples/model_bench"),
            onnx,
        })
    }
}

/// The row of our bf16 (`model_bench --dtype bf16`): bf16 weights and activations in eval,
/// bf16 conv products in training.
const TSM_BF16: &str = "tsm-rs, bf16";
/// PyTorch eager's rows, in f32 and with bf16 autocast: the bars for our f32 and bf16 rows.
const TORCH_F32: &str = "PyTorch eager, f32";
const TORCH_BF16: &str = "PyTorch eager, bf16 autocast";

/// `--threads`, or all cores.
fn thread_count(threads: Option<usize>) -> String {
    threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .to_string()
}

/// Runs the model benchmark and prints the table, then the per-layer profile of a batch-1 eval
/// forward, ours against OpenVINO's ([`layer_profile`]). Each engine runs in its own process
/// with the same thread count: Paddle, us (f32, and bf16 where this CPU has AVX-512 BF16),
/// PyTorch eager (f32 and bf16 autocast), and in eval our exported ONNX model in ONNX Runtime
/// and in OpenVINO (fp32 hint, and its default precision, whichever that is here).
pub fn model(quick: bool, threads: Option<usize>, rounds: usize) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let bench = ModelBench::build()?;
    let (python, ours, onnx) = (&bench.python, &bench.ours, &bench.onnx);
    let script = project_root().join("tests/bench/model_baselines.py");
    let engines = project_root().join("tests/bench/onnx_engines.py");
    let torch_script = project_root().join("tests/bench/torch_eager.py");
    let threads = thread_count(threads);
    let eval_iters = if quick { 2 } else { 6 };
    // (label, mode, batch, timed iterations): R50, 8 frames, 224 px
    let cases = [
        ("eval, batch 1", "eval", 1, eval_iters),
        ("eval, batch 8", "eval", 8, if quick { 1 } else { 2 }),
        ("train step, batch 2", "train", 2, if quick { 1 } else { 3 }),
    ];
    // every (case, engine) in first-run order, with its measurement from each round
    let mut rows: Vec<(&str, String, Vec<Measurement>)> = Vec::new();
    let mut record = |label: &'static str, engine: String, m: Measurement| match rows
        .iter_mut()
        .find(|r| r.0 == label && r.1 == engine)
    {
        Some(r) => r.2.push(m),
        None => rows.push((label, engine, vec![m])),
    };
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!("xtask: bench model: round {round} of {rounds}");
        }
        for (label, mode, batch, iters) in cases {
            let args = [mode.to_string(), "50".into(), "8".into(), "224".into()]
                .into_iter()
                .chain([batch.to_string(), iters.to_string()]);
            let args: Vec<String> = args.collect();
            let paddle = measure(
                Command::new(python)
                    .arg(&script)
                    .args(&args)
                    .env("OMP_NUM_THREADS", &threads)
                    .env("MKL_NUM_THREADS", &threads)
                    .env("FLAGS_use_onednn", "1"),
            )?;
            record(label, "Paddle 3.3.1 (oneDNN)".into(), paddle);
            let rs = measure(
                Command::new(ours)
                    .args(&args)
                    .env("RAYON_NUM_THREADS", &threads),
            )?;
            record(label, "tsm-rs".into(), rs);
            // bf16 where this CPU has the kernels' instructions; elsewhere model_bench says
            // which it lacks
            let bf16 = bench_stdout(
                Command::new(ours)
                    .args(&args)
                    .args(["--dtype", "bf16"])
                    .env("RAYON_NUM_THREADS", &threads),
            )?;
            match skipped(&bf16) {
                Some(why) => eprintln!("xtask: bench model: {TSM_BF16} not run: {why}"),
                None => record(label, TSM_BF16.into(), parse_measurement(&bf16)?),
            }
            for (dtype, name) in [("f32", TORCH_F32), ("bf16", TORCH_BF16)] {
                let torch = measure(
                    Command::new(&bench.torch)
                        .arg(&torch_script)
                        .args(&args)
                        .args(["--device", "cpu", "--dtype", dtype])
                        .env("OMP_NUM_THREADS", &threads),
                )?;
                record(label, name.into(), torch);
            }
            if mode != "eval" {
                continue;
            }
            for (engine, name) in [
                ("onnxruntime", "ONNX Runtime, CPU EP"),
                ("openvino-f32", "OpenVINO CPU, f32 hint"),
                ("openvino", "OpenVINO CPU, default"),
            ] {
                let mut cmd = Command::new(python);
                cmd.arg(&engines)
                    .arg(engine)
                    .arg(onnx)
                    .args([batch.to_string(), iters.to_string(), threads.clone()])
                    .env("OMP_NUM_THREADS", &threads);
                let (m, precision) = measure_with_precision(&mut cmd)?;
                record(label, format!("{name} (ran {precision})"), m);
            }
        }
    }
    println!(
        "\nmodel benchmark: PP-TSM R50, 8 frames x 224, random weights, {threads} thread(s) each, \
         {} ({} cores), {rounds} round(s) (median clips/s, range over rounds); ONNX engines on \
         `onnx_export`'s model (Tsm::to_onnx, opset 17)",
        cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| measurement | engine | clips/s | range | x Paddle | x fastest f32 engine | x OpenVINO \
         default | x PyTorch, same precision | peak RSS MB | RSS x Paddle |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let median_of = |label: &str, pick: &dyn Fn(&str) -> bool| -> Option<f64> {
        rows.iter()
            .filter(|r| r.0 == label && pick(&r.1))
            .map(|r| median_clips_per_s(&r.2))
            .reduce(f64::max)
    };
    for (label, engine, ms) in &rows {
        let speed = median_clips_per_s(ms);
        let (lo, hi) = ms
            .iter()
            .map(Measurement::clips_per_s)
            .fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let rss = ms.iter().map(|m| m.peak_rss_mb).fold(0f64, f64::max);
        let paddle_rows = rows
            .iter()
            .find(|r| r.0 == *label && r.1.starts_with("Paddle"));
        let (vs_paddle, rss_ratio) = paddle_rows.map_or(("-".into(), "-".into()), |p| {
            let p_rss = p.2.iter().map(|m| m.peak_rss_mb).fold(0f64, f64::max);
            (
                format!("{:.2}x", speed / median_clips_per_s(&p.2)),
                format!("{:.2}", rss / p_rss),
            )
        });
        // the fastest median of the engines that computed in f32, as the bar for our (f32) row
        let onnx_best = median_of(label, &|e: &str| {
            (e.contains("ONNX Runtime") || e.contains("OpenVINO")) && e.contains("(ran f32)")
        });
        let vs_best = match onnx_best {
            Some(best) if engine == "tsm-rs" => format!("{:.2}x", speed / best),
            _ => "-".into(),
        };
        // OpenVINO as it runs out of the box: the bar for our bf16 row
        let ov_default = median_of(label, &|e: &str| e.starts_with("OpenVINO CPU, default"));
        let vs_ov_default = match ov_default {
            Some(ov) if engine == "tsm-rs" || engine == TSM_BF16 => format!("{:.2}x", speed / ov),
            _ => "-".into(),
        };
        // PyTorch in the row's own precision: f32 for f32, bf16 autocast for bf16
        let torch = match engine.as_str() {
            "tsm-rs" => median_of(label, &|e: &str| e == TORCH_F32),
            TSM_BF16 => median_of(label, &|e: &str| e == TORCH_BF16),
            _ => None,
        };
        let vs_torch = torch.map_or("-".into(), |t| format!("{:.2}x", speed / t));
        println!(
            "| {label} | {engine} | {speed:.3} | {lo:.3}-{hi:.3} | {vs_paddle} | {vs_best} | \
             {vs_ov_default} | {vs_torch} | {rss:.0} | {rss_ratio} |"
        );
    }
    layer_profile(&bench, &threads, eval_iters)?;
    step_profile(&bench, &threads, if quick { 1 } else { 3 })
}

/// The median of the rounds' clips/s (the mean of the middle two for an even count).
fn median_clips_per_s(ms: &[Measurement]) -> f64 {
    let mut v: Vec<f64> = ms.iter().map(Measurement::clips_per_s).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `cargo xtask bench model-profile`: only the profiles `bench model` ends with.
pub fn model_profile(threads: Option<usize>, iters: usize) -> Result<()> {
    let (bench, threads) = (ModelBench::build()?, thread_count(threads));
    layer_profile(&bench, &threads, iters)?;
    step_profile(&bench, &threads, 3)
}

/// Why model_bench skipped its run, where it printed a `{"skipped": ..}` line.
fn skipped(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("{\"skipped\": "))
}

/// Prints our per-layer profile of a batch-1 eval forward (model_bench's own table, on its
/// stderr), then that profile joined with OpenVINO's performance counters for the same model
/// (the same threads, averaged over `ov_iters` forwards after a warm-up): one row per layer, so
/// that the next gap is visible at a glance. Once in f32 against OpenVINO's f32, then, where
/// this CPU runs our bf16 kernel, in bf16 against OpenVINO's default precision.
fn layer_profile(bench: &ModelBench, threads: &str, ov_iters: usize) -> Result<()> {
    for (dtype, engine) in [
        ("f32", "openvino-f32-profile"),
        ("bf16", "openvino-profile"),
    ] {
        let args = [
            "eval",
            "50",
            "8",
            "224",
            "1",
            "0",
            "--profile",
            "--dtype",
            dtype,
        ];
        let Some((_, stderr)) = our_profile(bench, &args, threads, "per-layer")? else {
            continue;
        };
        println!("{}", stderr.trim_end());
        let ours = parse_our_profile(&stderr).context("reading model_bench's profile table")?;
        let stdout = bench_stdout(
            Command::new(&bench.python)
                .arg(project_root().join("tests/bench/onnx_engines.py"))
                .arg(engine)
                .arg(&bench.onnx)
                .args(["1", &ov_iters.to_string(), threads])
                .env("OMP_NUM_THREADS", threads)
                .stderr(std::process::Stdio::inherit()),
        )?;
        let (ov, ov_total, ov_precision) =
            parse_ov_profile(&stdout).context("reading onnx_engines.py's OpenVINO profile")?;
        println!(
            "\nper layer, batch-1 eval forward, {threads} thread(s): tsm-rs {dtype} (the \
             profile above) against OpenVINO's performance counters (it ran {ov_precision}; \
             mean of {ov_iters} forwards); convs joined on `conv KxK sS C->O HxW` (HxW the \
             input), other steps by kind"
        );
        print_joined(&join_profiles(&ours, &ov), &ours, ov_total);
    }
    Ok(())
}

/// Runs model_bench with `args` (a `--profile` run, `--dtype` last) on `threads`: its stdout
/// and stderr (where the profile is), or `None`, said on stderr, where it skipped the dtype on
/// this CPU (the `what` profile not run).
fn our_profile(
    bench: &ModelBench,
    args: &[&str],
    threads: &str,
    what: &str,
) -> Result<Option<(String, String)>> {
    let mut cmd = Command::new(&bench.ours);
    cmd.args(args).env("RAYON_NUM_THREADS", threads);
    eprintln!("xtask: bench: {cmd:?}");
    let out = cmd.output().context("running our profile")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("our profile run failed: {}", stderr.trim_end());
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(why) = skipped(&stdout) {
        let dtype = args.last().copied().unwrap_or_default();
        eprintln!("xtask: bench: the {dtype} {what} profile not run: {why}");
        return Ok(None);
    }
    Ok(Some((stdout, stderr)))
}

/// Prints a training step at batch 2 by part, ours (`model_bench train --profile`, each op
/// synchronised) against PyTorch eager in the same precision (`torch_eager.py --profile`, each
/// operator's own time in torch.profiler, parted as ours): f32, then, where this CPU runs our
/// bf16 kernels, bf16 against PyTorch's bf16 autocast. Both profilers slow what they measure,
/// so each column's total is its profiled step, beside the step's unprofiled time.
fn step_profile(bench: &ModelBench, threads: &str, iters: usize) -> Result<()> {
    let args = ["train", "50", "8", "224", "2"];
    let iters = iters.to_string();
    let mut columns = Vec::new();
    for (dtype, torch_name) in [("f32", TORCH_F32), ("bf16", TORCH_BF16)] {
        let ours_args = [&args[..], &[&iters, "--profile", "--dtype", dtype]].concat();
        let Some((stdout, stderr)) = our_profile(bench, &ours_args, threads, "step")? else {
            continue;
        };
        let ours = parse_step_table(&stderr).context("reading model_bench's step profile")?;
        let ours_step = parse_measurement(&stdout)?;
        let torch_out = bench_stdout(
            Command::new(&bench.torch)
                .arg(project_root().join("tests/bench/torch_eager.py"))
                .args(args)
                .args([
                    iters.as_str(),
                    "--device",
                    "cpu",
                    "--dtype",
                    dtype,
                    "--profile",
                ])
                .env("OMP_NUM_THREADS", threads),
        )?;
        let torch = parse_torch_parts(&torch_out).context("reading torch_eager.py's profile")?;
        let torch_step = parse_measurement(&torch_out)?;
        columns.push((
            format!("tsm-rs {dtype}"),
            torch_name,
            [ours, torch],
            [
                ours_step.seconds / ours_step.clips * 2.0,
                torch_step.seconds / torch_step.clips * 2.0,
            ],
        ));
    }
    println!(
        "\ntraining step by part, batch 2, {threads} thread(s), ms per step: tsm-rs \
         (`model_bench --profile`, each op synchronised) against PyTorch eager in the same \
         precision (torch.profiler, each operator's own time); `profiled`: the profiled step, \
         `unprofiled`: the same step timed without a profiler"
    );
    let mut header = "| part |".to_string();
    let mut rule = "|---|".to_string();
    for (ours, torch, _, _) in &columns {
        header += &format!(" {ours} | {torch} | ratio |");
        rule += "---:|---:|---:|";
    }
    println!("{header}\n{rule}");
    let mut parts: Vec<&str> = Vec::new();
    for (_, _, tables, _) in &columns {
        for table in tables {
            for (part, _) in table {
                if !parts.contains(&part.as_str()) {
                    parts.push(part);
                }
            }
        }
    }
    let cell = |table: &[(String, f64)], part: &str| {
        table.iter().find(|(p, _)| p == part).map(|(_, ms)| *ms)
    };
    let row = |pair: [Option<f64>; 2]| -> String {
        let ms = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.1}"));
        let ratio = match pair {
            [Some(a), Some(b)] if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        format!(" {} | {} | {ratio} |", ms(pair[0]), ms(pair[1]))
    };
    for part in parts {
        let mut line = format!("| {part} |");
        for (_, _, [ours, torch], _) in &columns {
            line += &row([cell(ours, part), cell(torch, part)]);
        }
        println!("{line}");
    }
    let mut profiled = "| profiled |".to_string();
    let mut unprofiled = "| unprofiled |".to_string();
    for (_, _, tables, seconds) in &columns {
        let total = |t: &[(String, f64)]| Some(t.iter().map(|(_, ms)| ms).sum());
        profiled += &row([total(&tables[0]), total(&tables[1])]);
        unprofiled += &row(seconds.map(|s| Some(s * 1e3)));
    }
    println!("{profiled}\n{unprofiled}");
    Ok(())
}

/// Reads the step table `model_bench train --profile` prints (`| part | ms | % |`); its last
/// row, "rest (...)", is `rest` as in torch_eager.py's parts.
fn parse_step_table(text: &str) -> Result<Vec<(String, f64)>> {
    let (_, rows) = markdown_table(text, "| part | ms |")?;
    let mut parts = Vec::new();
    for (line, cells) in rows {
        let [label, ms, ..] = cells[..] else {
            bail!("short row {line}")
        };
        let label = if label.starts_with("rest") {
            "rest"
        } else {
            label
        };
        let ms = ms.parse().with_context(|| format!("ms in {line}"))?;
        parts.push((label.to_string(), ms));
    }
    if parts.is_empty() {
        bail!("the step profile has no rows");
    }
    Ok(parts)
}

/// The `"parts_ms": {"label": ms, ...}` object of torch_eager.py's last JSON line.
fn parse_torch_parts(stdout: &str) -> Result<Vec<(String, f64)>> {
    let line = result_line(stdout)?;
    let at = line
        .find("\"parts_ms\"")
        .context("no parts_ms in the result line")?;
    let body = line[at..]
        .split_once('{')
        .and_then(|(_, b)| b.split_once('}'))
        .map(|(b, _)| b)
        .context("parts_ms is not an object")?;
    let mut parts = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (label, after) = rest
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .with_context(|| format!("parts_ms: no label at {rest:?}"))?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .context("parts_ms: no `:`")?;
        let (value, next) = after.split_once(',').unwrap_or((after, ""));
        let ms = value
            .trim()
            .parse()
            .with_context(|| format!("parts_ms: {label}: {value:?}"))?;
        parts.push((label.to_string(), ms));
        rest = next.trim();
    }
    if parts.is_empty() {
        bail!("parts_ms is empty");
    }
    Ok(parts)
}

/// The joined table, with a totals row (ours summed over our steps, OpenVINO's over all its
/// nodes, also those no row shows).
fn print_joined(rows: &[JoinedLayer], ours: &[StepTime], ov_total: f64) {
    let ms = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.1}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    println!(
        "| layer | calls | tsm-rs ms | OpenVINO ms | ratio | OpenVINO kernel |\n\
         |---|---:|---:|---:|---:|---|"
    );
    for r in rows {
        let calls = match r.calls {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        println!(
            "| {} | {calls} | {} | {} | {} | {} |",
            r.layer,
            ms(r.ours_ms),
            ms(r.ov_ms),
            ratio(r.ours_ms, r.ov_ms),
            r.kernel
        );
    }
    let our_total: f64 = ours.iter().map(|s| s.ms).sum();
    let calls: usize = ours.iter().map(|s| s.calls).sum();
    println!(
        "| total | {calls} | {our_total:.1} | {ov_total:.1} | {} | |",
        ratio(Some(our_total), Some(ov_total))
    );
}

/// One row of our profile: a step label, how often it ran and its summed time.
#[derive(Debug, Clone, PartialEq)]
struct StepTime {
    label: String,
    calls: usize,
    ms: f64,
}

/// Reads the markdown table `model_bench --profile` prints (`| step | calls | ms | ... |`),
/// finding the columns by their header so that added columns do not matter.
fn parse_our_profile(text: &str) -> Result<Vec<StepTime>> {
    let (header, rows) = markdown_table(text, "| step |")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no {name} column in {header:?}"))
    };
    let (label, calls, ms) = (column("step")?, column("calls")?, column("ms")?);
    let mut steps = Vec::new();
    for (line, row) in rows {
        let cell = |i: usize| row.get(i).with_context(|| format!("short row {line}"));
        steps.push(StepTime {
            label: cell(label)?.to_string(),
            calls: cell(calls)?
                .parse()
                .with_context(|| format!("calls in {line}"))?,
            ms: cell(ms)?.parse().with_context(|| format!("ms in {line}"))?,
        });
    }
    if steps.is_empty() {
        bail!("the profile table has no rows");
    }
    Ok(steps)
}

/// A markdown table row: the line, and its cells.
type TableRow<'a> = (&'a str, Vec<&'a str>);

/// The first markdown table in `text` whose header line starts with `header_start`: its
/// header's cells, and each row after the `|---|` rule with its cells (trimmed).
fn markdown_table<'a>(
    text: &'a str,
    header_start: &str,
) -> Result<(Vec<&'a str>, Vec<TableRow<'a>>)> {
    let cells = |l: &'a str| -> Vec<&'a str> {
        let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(str::trim).collect()
    };
    let mut lines = text.lines().skip_while(|l| !l.starts_with(header_start));
    let header = lines
        .next()
        .with_context(|| format!("no `{header_start} ...` table"))?;
    let rows = lines
        .take_while(|l| l.starts_with('|'))
        .map(|l| (l, cells(l)))
        .filter(|(_, row)| {
            !row.iter()
                .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':')))
        })
        .collect();
    Ok((cells(header), rows))
}

/// One label of OpenVINO's profile (`onnx_engines.py openvino-f32-profile` or `openvino-profile`).
#[derive(Debug, Clone, Default)]
struct OvLayer {
    label: String,
    /// Per forward.
    ms: f64,
    /// Runtime nodes that ran under this label (0 where all were fused into others).
    nodes: usize,
    exec_type: String,
    /// ONNX ops fused into these nodes (`LeakyRelu`, `Add+LeakyRelu 3/4, none 1/4`).
    fused: String,
    /// The kinds of layer that absorbed nodes of this label (`conv`).
    fused_into: String,
}

/// The per-label lines, the total ms per forward and the precision OpenVINO ran.
fn parse_ov_profile(stdout: &str) -> Result<(Vec<OvLayer>, f64, String)> {
    let mut layers = Vec::new();
    let mut total = None;
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        if line.contains("\"total_ms\"") {
            total = Some((
                json_number(line, "total_ms")?,
                json_string(line, "precision")?,
            ));
            continue;
        }
        layers.push(OvLayer {
            label: json_string(line, "label")?,
            ms: json_number(line, "ms")?,
            nodes: json_number(line, "nodes")? as usize,
            exec_type: json_string(line, "exec_type")?,
            fused: json_string(line, "fused")?,
            fused_into: json_string(line, "fused_into")?,
        });
    }
    let (total, precision) = total.context("no total_ms line")?;
    Ok((layers, total, precision))
}

/// The string under key `k` of a flat one-line JSON object.
fn json_string(line: &str, k: &str) -> Result<String> {
    let key = format!("\"{k}\"");
    let at = line
        .find(&key)
        .with_context(|| format!("no {k} in {line}"))?;
    let rest = line[at + key.len()..].trim_start_matches([':', ' ']);
    let mut chars = rest
        .strip_prefix('"')
        .with_context(|| format!("{k} is not a string in {line}"))?
        .chars();
    let mut s = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(s),
            '\\' => match chars.next() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let code = u32::from_str_radix(&hex, 16)
                        .with_context(|| format!("bad escape \\u{hex} in {line}"))?;
                    s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                }
                Some(c) => s.push(c), // \" \\ \/
                None => break,
            },
            c => s.push(c),
        }
    }
    bail!("unterminated {k} in {line}")
}

/// The join key of a profile label: a conv's geometry, `conv KxK sS C->O HxW` (its first five
/// words; what follows, such as `+bias+act`, says what is fused into it and may differ between
/// the two sides), otherwise the kind of step.
fn layer_key(label: &str) -> String {
    if label.starts_with("conv ") {
        return label
            .split_whitespace()
            .take(5)
            .collect::<Vec<_>>()
            .join(" ");
    }
    let kinds = [
        ("max pool", "max pool"),
        ("avg pool", "avg pool"),
        ("shift", "temporal shift"),
        ("head", "head"),
        ("add", "add"),
        ("eltwise", "add"),
    ];
    kinds
        .iter()
        .find(|(word, _)| label.contains(word))
        .map_or(label.to_string(), |(_, kind)| kind.to_string())
}

/// One row of the joined profile.
#[derive(Debug, Clone, PartialEq)]
struct JoinedLayer {
    key: String,
    /// The key with our labels' suffixes (`conv ... 56x56 +bias, +bias+add+act`), our label(s)
    /// for other kinds, or OpenVINO's label where we have none.
    layer: String,
    /// Ours (0 where we have no such step).
    calls: usize,
    ours_ms: Option<f64>,
    ov_ms: Option<f64>,
    kernel: String,
}

/// Joins our steps and OpenVINO's labels on [`layer_key`], summing each side's rows of a key;
/// the most time on our side first, then OpenVINO's rows that we have no step for. A label of
/// OpenVINO's whose nodes all ran fused into others is shown only where we have the step.
fn join_profiles(ours: &[StepTime], ov: &[OvLayer]) -> Vec<JoinedLayer> {
    let mut rows: Vec<JoinedLayer> = Vec::new();
    let mut our_labels: Vec<Vec<&str>> = Vec::new();
    for step in ours {
        let key = layer_key(&step.label);
        match rows.iter().position(|r| r.key == key) {
            Some(i) => {
                rows[i].calls += step.calls;
                rows[i].ours_ms = Some(rows[i].ours_ms.unwrap_or(0.0) + step.ms);
                our_labels[i].push(&step.label);
            }
            None => {
                rows.push(JoinedLayer {
                    layer: String::new(),
                    calls: step.calls,
                    ours_ms: Some(step.ms),
                    ov_ms: None,
                    kernel: String::new(),
                    key,
                });
                our_labels.push(vec![&step.label]);
            }
        }
    }
    for (row, labels) in rows.iter_mut().zip(&our_labels) {
        row.layer = if row.key.starts_with("conv ") {
            let mut suffixes: Vec<String> = Vec::new();
            for l in labels {
                let suffix = l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
                if !suffix.is_empty() && !suffixes.contains(&suffix) {
                    suffixes.push(suffix);
                }
            }
            if suffixes.is_empty() {
                row.key.clone()
            } else {
                format!("{} {}", row.key, suffixes.join(", "))
            }
        } else {
            labels.join(", ")
        };
    }
    let mut ov_nodes = vec![0; rows.len()];
    for layer in ov {
        let key = layer_key(&layer.label);
        let i = match rows.iter().position(|r| r.key == key) {
            Some(i) => i,
            None if layer.nodes == 0 => continue,
            None => {
                rows.push(JoinedLayer {
                    layer: layer.label.clone(),
                    calls: 0,
                    ours_ms: None,
                    ov_ms: None,
                    kernel: String::new(),
                    key,
                });
                ov_nodes.push(0);
                rows.len() - 1
            }
        };
        let row = &mut rows[i];
        let mut kernel = Vec::new();
        if layer.nodes > 0 {
            row.ov_ms = Some(row.ov_ms.unwrap_or(0.0) + layer.ms);
            ov_nodes[i] += layer.nodes;
            kernel.push(layer.exec_type.clone());
            if !layer.fused.is_empty() {
                kernel.push(format!("fused {}", layer.fused));
            }
        }
        if !layer.fused_into.is_empty() {
            kernel.push(format!("fused into {}", layer.fused_into));
        }
        if !row.kernel.is_empty() && !kernel.is_empty() {
            row.kernel.push_str("; ");
        }
        row.kernel.push_str(&kernel.join(", "));
    }
    for (row, nodes) in rows.iter_mut().zip(ov_nodes) {
        if nodes > 0 && nodes != row.calls {
            let s = if nodes == 1 { "" } else { "s" };
            row.kernel.push_str(&format!(" ({nodes} node{s})"));
        }
    }
    // the most time first, ours then OpenVINO's; a side without the step last
    let desc = |t: Option<f64>| t.map_or(f64::INFINITY, |t| -t);
    rows.sort_by(|a, b| {
        (desc(a.ours_ms).total_cmp(&desc(b.ours_ms))).then(desc(a.ov_ms).total_cmp(&desc(b.ov_ms)))
    });
    rows
}

/// [`measure`] for a process whose result line also says the precision it computed in
/// (`"precision": "bf16"`).
fn measure_with_precision(cmd: &mut Command) -> Result<(Measurement, String)> {
    let stdout = bench_stdout(cmd)?;
    let m = parse_measurement(&stdout)?;
    let line = stdout.lines().rev().find(|l| l.contains("\"precision\""));
    let precision = line
        .and_then(|l| l.split("\"precision\"").nth(1))
        .and_then(|rest| rest.split('"').nth(1))
        .context("the engine did not say its precision")?;
    Ok((m, precision.to_string()))
}

/// The CPU model from /proc/cpuinfo, for the table's caption.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_step_profile_table() {
        let stderr = "noise\n\nprofile of one training step (batch 2, synchronised per op): 2.1 s\n\
                      | part | ms | % |\n|---|---:|---:|\n| conv forward | 611.10 | 27.2 |\n\
                      | activation, residual add | 62.77 | 2.8 |\n\
                      | rest (head, loss, candle's gradient sums) | 37.50 | 1.7 |\n{\"clips\": 8}\n";
        let parts = parse_step_table(stderr).unwrap();
        let want = [
            ("conv forward", 611.10),
            ("activation, residual add", 62.77),
            ("rest", 37.50),
        ];
        assert_eq!(parts, want.map(|(l, ms)| (l.to_string(), ms)));
        assert!(parse_step_table("| part | ms | % |\n|---|---:|---:|\n").is_err());
        assert!(parse_step_table("| part | ms | % |\n| conv | x | 1 |\n").is_err());
    }

    #[test]
    fn reads_torch_eagers_parts() {
        let stdout = "warning\n{\"engine\": \"pytorch-eager\", \"parts_ms\": {\"conv forward\": \
                      465.5, \"activation, residual add\": 1.25e2, \"rest\": 262}, \
                      \"profiled_seconds\": 2.6}\n";
        let parts = parse_torch_parts(stdout).unwrap();
        let want = [
            ("conv forward", 465.5),
            ("activation, residual add", 125.0),
            ("rest", 262.0),
        ];
        assert_eq!(parts, want.map(|(l, ms)| (l.to_string(), ms)));
        assert!(parse_torch_parts("{\"clips\": 4}").is_err());
        assert!(parse_torch_parts("{\"parts_ms\": {}}").is_err());
        assert!(parse_torch_parts("{\"parts_ms\": {\"conv\": nan?}}").is_err());
    }

    #[test]
    fn median_over_rounds() {
        let m = |clips: f64| Measurement {
            clips,
            seconds: 1.0,
            peak_rss_mb: 0.0,
        };
        assert_eq!(median_clips_per_s(&[m(3.0)]), 3.0);
        assert_eq!(median_clips_per_s(&[m(5.0), m(1.0), m(2.0)]), 2.0);
        assert_eq!(median_clips_per_s(&[m(4.0), m(1.0), m(2.0), m(9.0)]), 3.0);
    }

    fn step(label: &str, calls: usize, ms: f64) -> StepTime {
        StepTime {
            label: label.into(),
            calls,
            ms,
        }
    }

    fn ov(label: &str, ms: f64, nodes: usize, exec_type: &str, fused: &str) -> OvLayer {
        OvLayer {
            label: label.into(),
            ms,
            nodes,
            exec_type: exec_type.into(),
            fused: fused.into(),
            fused_into: if nodes == 0 { "conv".into() } else { "".into() },
        }
    }

    #[test]
    fn reads_our_profile_table_by_its_header() {
        let stderr = "noise\n\nprofile of one eval forward (8 frames): 1.149 s\n\
                      | step | calls | ms | % | GFLOP/s |\n|---|---:|---:|---:|---:|\n\
                      | conv 3x3 s1 256->256 14x14 +bias+act | 5 | 127.4 | 11.1 | 73 |\n\
                      | head (pool + fc) | 1 | 0.8 | 0.1 |  |\n\ntrailing text\n";
        let steps = parse_our_profile(stderr).unwrap();
        assert_eq!(
            steps,
            [
                step("conv 3x3 s1 256->256 14x14 +bias+act", 5, 127.4),
                step("head (pool + fc)", 1, 0.8)
            ]
        );
        assert!(parse_our_profile("| a | b |\n").is_err());
    }

    #[test]
    fn reads_openvino_profile_lines() {
        let stdout = "{\"label\": \"conv 1x1 s1 64->256 56x56\", \"ms\": 56.46, \"nodes\": 4, \
                      \"exec_type\": \"brgconv_avx2_1x1_f32\", \"fused\": \"Add+LeakyRelu 3/4, \
                      none 1/4\", \"fused_into\": \"\"}\n\
                      {\"label\": \"q\\\"\\u00e9\", \"ms\": 0.0, \"nodes\": 0, \"exec_type\": \"\", \
                      \"fused\": \"\", \"fused_into\": \"conv\"}\n\
                      {\"total_ms\": 947.7, \"iters\": 2, \"precision\": \"f32\"}\n";
        let (layers, total, precision) = parse_ov_profile(stdout).unwrap();
        assert_eq!((total, precision.as_str()), (947.7, "f32"));
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].label, "conv 1x1 s1 64->256 56x56");
        assert_eq!((layers[0].ms, layers[0].nodes), (56.46, 4));
        assert_eq!(layers[0].fused, "Add+LeakyRelu 3/4, none 1/4");
        assert_eq!(layers[1].label, "q\"\u{e9}");
        assert_eq!(layers[1].fused_into, "conv");
    }

    #[test]
    fn joins_convs_on_geometry_and_other_steps_by_kind() {
        let ours = [
            step("conv 1x1 s1 64->256 56x56 +bias", 3, 30.0),
            step("temporal shift", 16, 40.0),
            step("conv 1x1 s1 64->256 56x56 +bias+add+act", 1, 12.0),
            step("residual add+act", 15, 25.0),
            step("conv 3x3 s1 64->64 56x56 +shift+bias+act", 3, 50.0),
            step("max pool 3x3", 1, 20.0),
        ];
        let ov = [
            ov("layout reorder", 100.0, 34, "reorder_f32", ""),
            ov("temporal shift", 60.0, 128, "ref_f32", ""),
            ov(
                "conv 3x3 s1 64->64 56x56",
                40.0,
                3,
                "brgconv_avx2_f32",
                "LeakyRelu",
            ),
            ov(
                "conv 1x1 s1 64->256 56x56",
                21.0,
                4,
                "brgconv_avx2_1x1_f32",
                "Add 3/4",
            ),
            ov("avg pool 2x2", 5.0, 3, "jit_avx2_f32", ""),
            ov("residual add+act", 0.0, 0, "", ""),
            ov("activation", 0.0, 0, "", ""),
        ];
        let rows = join_profiles(&ours, &ov);
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.layer.as_str(),
                    r.calls,
                    r.ours_ms,
                    r.ov_ms,
                    r.kernel.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "conv 3x3 s1 64->64 56x56 +shift+bias+act",
                    3,
                    Some(50.0),
                    Some(40.0),
                    "brgconv_avx2_f32, fused LeakyRelu"
                ),
                (
                    "conv 1x1 s1 64->256 56x56 +bias, +bias+add+act",
                    4,
                    Some(42.0),
                    Some(21.0),
                    "brgconv_avx2_1x1_f32, fused Add 3/4"
                ),
                (
                    "temporal shift",
                    16,
                    Some(40.0),
                    Some(60.0),
                    "ref_f32 (128 nodes)"
                ),
                ("residual add+act", 15, Some(25.0), None, "fused into conv"),
                ("max pool 3x3", 1, Some(20.0), None, ""),
                (
                    "layout reorder",
                    0,
                    None,
                    Some(100.0),
                    "reorder_f32 (34 nodes)"
                ),
                ("avg pool 2x2", 0, None, Some(5.0), "jit_avx2_f32 (3 nodes)"),
            ]
        );
    }
}
