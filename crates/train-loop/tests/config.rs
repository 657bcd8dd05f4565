//! The shipped configs, overrides and error messages.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use augment::PipelineConfig;
use train_loop::{Error, TrainConfig};

fn asset(name: &str) -> std::path::PathBuf {
    test_support::project_root()
        .join("assets/configs")
        .join(name)
}

fn load(name: &str, overrides: &[&str]) -> Result<TrainConfig, Error> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&asset(name), &o)
}

#[test]
fn shipped_configs_are_the_recipes() {
    let t = load("pptsm_ucf101_tutorial.toml", &[]).unwrap();
    assert_eq!(t.data.train_pipeline, PipelineConfig::tutorial_train());
    assert_eq!(t.data.valid_pipeline, PipelineConfig::tutorial_valid());
    assert_eq!(
        (t.train.epochs, t.data.batch_size, t.model.arch.num_classes),
        (30, 16, 101)
    );
    assert_eq!((t.lr.warmup_start_lr, t.lr.cosine_base_lr), (0.0005, 0.001));
    assert_eq!(
        (t.train.label_smoothing, t.train.mixup_alpha),
        (0.1, Some(0.2))
    );
    assert!(t.lr.iter_step && t.precise_bn.enabled && t.optimizer.nesterov);

    let k = load("pptsm_k400_frames_uniform.toml", &[]).unwrap();
    assert_eq!(k.data.train_pipeline, PipelineConfig::k400_train());
    assert_eq!(k.data.valid_pipeline, PipelineConfig::k400_valid());
    assert_eq!(
        (k.train.epochs, k.lr.warmup_epochs, k.lr.cosine_base_lr),
        (80, 10.0, 0.01)
    );

    // the resolved config round-trips through TOML
    let again = TrainConfig::from_toml_str(&t.to_toml().unwrap(), Path::new("x"), &[]).unwrap();
    assert_eq!(again, t);
}

#[test]
fn overrides_set_values_and_name_bad_keys() {
    let c = load(
        "pptsm_ucf101_tutorial.toml",
        &[
            "train.epochs=3",
            "lr.cosine_base_lr = 0.01",
            "output.dir=runs/x",
            "data.list.suffix=.mp4",
            "distill.teacher=teacher.safetensors",
        ],
    )
    .unwrap();
    assert_eq!(c.train.epochs, 3);
    assert_eq!(c.lr.cosine_base_lr, 0.01);
    assert_eq!(c.output.dir, Path::new("runs/x"));
    assert_eq!(c.data.list.suffix, ".mp4");
    assert_eq!(c.distill.unwrap().temperature, 1.0);

    let msg = |o: &str| {
        load("pptsm_ucf101_tutorial.toml", &[o])
            .unwrap_err()
            .to_string()
    };
    let m = msg("train.epocs=3");
    assert!(
        m.contains("train.epocs") && m.contains("unknown field"),
        "{m}"
    );
    let m = msg("train.epochs=many");
    assert!(m.contains("train.epochs"), "{m}");
    let m = msg("optimizer.momentum=1.5");
    assert!(m.contains("momentum"), "{m}");
    let m = msg("noequals");
    assert!(m.contains("noequals"), "{m}");
    // [model] is tsm-model's config plus `pretrained`: its keys are checked too
    let m = msg("model.dpeth=50");
    assert!(
        m.contains("model.dpeth") && m.contains("unknown field `dpeth`"),
        "{m}"
    );
    let m = msg("model.depth=42");
    assert!(m.contains("depth 42 is not one of"), "{m}");
    let c = load(
        "pptsm_ucf101_tutorial.toml",
        &["model.pretrained=\"w.safetensors\""],
    )
    .unwrap();
    assert_eq!(
        c.model.pretrained.as_deref(),
        Some(Path::new("w.safetensors"))
    );
    // and the resolved config round-trips through TOML
    let again =
        TrainConfig::from_toml_str(&c.to_toml().unwrap(), Path::new("x.toml"), &[]).unwrap();
    assert_eq!(again, c);
}

/// A recipe without `[output]` takes its run directory from an override (what `tsm-cli train
/// --output DIR` passes), and says how to give one when there is none.
#[test]
fn run_directory_from_the_recipe_or_an_override() {
    let text = std::fs::read_to_string(asset("pptsm_ucf101_tutorial.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert!(
        table.contains_key("output"),
        "the tutorial recipe has [output]"
    );
    let mut without = table.clone();
    without.remove("output");
    let without = toml::to_string(&without).unwrap();
    let c =
        TrainConfig::from_toml_str(&without, Path::new("r.toml"), &["output.dir=runs/y".into()])
            .unwrap();
    assert_eq!(c.output.dir, Path::new("runs/y"));
    let e = TrainConfig::from_toml_str(&without, Path::new("r.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("r.toml") && e.contains("--output"), "{e}");
}

#[test]
fn file_errors_name_the_key() {
    let text = std::fs::read_to_string(asset("pptsm_ucf101_tutorial.toml")).unwrap();
    let bad = text.replace("[train]\n", "[train]\nbogus = 1\n");
    let e = TrainConfig::from_toml_str(&bad, Path::new("my.toml"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("my.toml") && e.contains("bogus"), "{e}");
}

/// Rank, world size and local rank come from the launcher's variables: Open MPI's first, then
/// Slurm's (`srun` step), then torchrun's; bad values name the variable.
#[test]
fn launch_from_each_launchers_environment() {
    use std::collections::HashMap;
    use train_loop::comm::{Launch, Launcher};
    let launch = |vars: &[(&str, &str)]| {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| env.get(k).cloned())
    };
    let l = launch(&[]).unwrap();
    assert_eq!((l.rank, l.world_size, l.launcher), (0, 1, Launcher::None));
    let l = launch(&[
        ("OMPI_COMM_WORLD_RANK", "3"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("SLURM_PROCID", "0"),
        ("SLURM_STEP_NUM_TASKS", "1"),
    ])
    .unwrap();
    assert_eq!(
        (l.rank, l.world_size, l.local_rank, l.launcher),
        (3, 4, 1, Launcher::OpenMpi)
    );
    // A batch script has SLURM_NTASKS but no step: one process.
    let l = launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "64")]).unwrap();
    assert_eq!(l.world_size, 1);
    let l = launch(&[
        ("SLURM_PROCID", "9"),
        ("SLURM_STEP_NUM_TASKS", "64"),
        ("SLURM_LOCALID", "1"),
    ])
    .unwrap();
    assert_eq!(
        (l.rank, l.world_size, l.local_rank, l.launcher),
        (9, 64, 1, Launcher::Slurm)
    );
    let l = launch(&[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap();
    assert_eq!(
        (l.rank, l.world_size, l.local_rank, l.launcher),
        (1, 2, 1, Launcher::Torchrun)
    );
    // The job's name: TSM_JOB_ID first, then the launcher's own; torchrun's default is none.
    let job = |vars: &[(&str, &str)]| launch(vars).unwrap().job;
    let ompi = [("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")];
    assert_eq!(job(&ompi), None);
    let with = |extra: &[(&'static str, &'static str)]| [&ompi[..], extra].concat();
    assert_eq!(
        job(&with(&[(
            "OMPI_MCA_orte_precondition_transports",
            "6d2d-55a9"
        )])),
        Some("6d2d-55a9".into())
    );
    assert_eq!(
        job(&with(&[
            ("PMIX_NAMESPACE", "prterun-n1-7@1"),
            ("OMPI_MCA_orte_precondition_transports", "x")
        ])),
        Some("prterun-n1-7@1".into())
    );
    assert_eq!(
        job(&with(&[("TSM_JOB_ID", "mine"), ("PMIX_NAMESPACE", "p")])),
        Some("mine".into())
    );
    let slurm = [("SLURM_PROCID", "1"), ("SLURM_STEP_NUM_TASKS", "2")];
    assert_eq!(job(&slurm), None);
    let slurm_ids = [("SLURM_JOB_ID", "812"), ("SLURM_STEP_ID", "0")];
    assert_eq!(
        job(&[&slurm[..], &slurm_ids].concat()),
        Some("812.0".into())
    );
    let torchrun = [("RANK", "1"), ("WORLD_SIZE", "2")];
    let run_id = |id: &'static str| job(&[&torchrun[..], &[("TORCHELASTIC_RUN_ID", id)]].concat());
    assert_eq!(run_id("none"), None);
    assert_eq!(run_id("k400-1"), Some("k400-1".into()));

    let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("RANK=\"x\""), "{e}");
    let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("RANK=2") && e.contains("WORLD_SIZE=2"), "{e}");
}

/// NCCL's ranks meet through a file named after the job: the other ranks wait for rank 0's
/// bytes (whole, never half-written), a file of another job is not theirs, and a rank 0 that
/// never comes is an error naming the file after the timeout.
#[test]
fn ranks_meet_through_a_file_named_after_the_job() {
    use std::time::Duration;
    use train_loop::comm::FileRendezvous;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let long = Duration::from_secs(30);
    // A file an earlier job left behind.
    FileRendezvous::new(&run, "nccl-old", long)
        .publish(&[7; 128])
        .unwrap();
    let rank0 = FileRendezvous::new(&run, "nccl-prterun-n1@1/x", long);
    assert_eq!(
        rank0.path().file_name().unwrap(),
        ".rendezvous-nccl-prterun-n1_1_x"
    );
    let bytes: Vec<u8> = (0..128).collect();
    let waiting = {
        let (run, bytes) = (run.clone(), bytes.clone());
        std::thread::spawn(move || {
            let got = FileRendezvous::new(&run, "nccl-prterun-n1@1/x", long).wait(128);
            assert_eq!(got.unwrap(), bytes);
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    rank0.publish(&bytes).unwrap();
    waiting.join().unwrap();
    rank0.remove();
    assert!(!rank0.path().exists());

    let e = FileRendezvous::new(&run, "nccl-old", long)
        .wait(64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".rendezvous-nccl-old") && e.contains("holds 128 bytes"),
        "{e}"
    );
    let e = FileRendezvous::new(&run, "nccl-never", Duration::from_millis(300))
        .wait(128)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(".rendezvous-nccl-never") && e.contains("rank 0 did not publish"),
        "{e}"
    );
}
