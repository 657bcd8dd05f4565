//! The model on `cuda:0` against the CPU (feature `cuda`; needs a GPU: `cargo xtask gpu-check`
//! runs it there). f32 GEMMs without TF32, so the GPU computes what the CPU does.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tsm_model::{temporal_shift, ParamRole, Tsm, TsmConfig};

fn gpu() -> Device {
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    Device::new_cuda(0).unwrap_or_else(|e| panic!("this test needs cuda:0: {e}"))
}

fn rel(a: &Tensor, b: &Tensor) -> f32 {
    test_support::rel_l2(
        &a.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
        &b.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    )
}

/// The shift and its gradient on the GPU equal the CPU op's bit for bit (it only moves values):
/// every dtype, odd channel counts, T = 1, folds of zero channels, planes whose bytes allow 16-,
/// 8-, 4- and 2-byte words, and a view that starts inside its buffer.
#[test]
fn shift_kernel_equals_the_cpu_op() {
    let gpu = gpu();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shapes = [
        (2, 8, 64, 56, 56),
        (1, 8, 2048, 7, 7),
        (3, 1, 5, 3, 3),
        (2, 3, 7, 1, 1),
        (1, 8, 4, 2, 2),
        (2, 4, 13, 5, 7),
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for &(n, t, c, h, w) in &shapes {
            let ratio = [0.125, 0.25, 1.0 / 3.0][rng.random_range(0..3)];
            // one extra leading frame, dropped by `narrow`: a view at an offset
            let full = test_support::randn((n * t + 1, c, h, w))
                .to_dtype(dtype)
                .unwrap();
            let x = full.narrow(0, 1, n * t).unwrap();
            let g = test_support::randn(x.shape()).to_dtype(dtype).unwrap();
            let on = |dev: &Device| {
                let x = Var::from_tensor(&x.to_device(dev).unwrap()).unwrap();
                let y = temporal_shift(x.as_tensor(), t, ratio).unwrap();
                let loss = (&y * g.to_device(dev).unwrap()).unwrap().sum_all().unwrap();
                let gx = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
                (y, gx)
            };
            let (y_cpu, gx_cpu) = on(&Device::Cpu);
            let (y_gpu, gx_gpu) = on(&gpu);
            let what = format!("{dtype:?} [{}, {c}, {h}, {w}] T={t} ratio {ratio}", n * t);
            assert_eq!(rel(&y_cpu, &y_gpu), 0.0, "forward, {what}");
            assert_eq!(rel(&gx_cpu, &gx_gpu), 0.0, "gradient, {what}");
        }
    }
    let bad = Tensor::zeros((12, 16, 4, 4), DType::F32, &gpu).unwrap();
    let e = temporal_shift(&bad, 8, 0.125).unwrap_err().to_string();
    assert!(e.contains("not a multiple of num_seg 8"), "{e}");
}

/// A model with seeded random weights and BN statistics, saved.
fn random_model(cfg: &TsmConfig, dir: &std::path::Path) -> std::path::PathBuf {
    let varmap = VarMap::new();
    let model = Tsm::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    model
        .init_weights(|i| ChaCha8Rng::seed_from_u64(i as u64))
        .unwrap();
    for p in model.params() {
        let r = |lo, hi| test_support::rand_uniform(lo, hi, p.tensor.shape());
        let value = match p.role {
            ParamRole::BnVariance | ParamRole::BnScale => r(0.5, 1.5),
            ParamRole::BnMean | ParamRole::BnShift => r(-0.2, 0.2),
            _ => continue,
        };
        p.var().unwrap().set(&value).unwrap();
    }
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    path
}

/// PP-TSM R50, 8 frames at 224: eval logits (plain and BN-folded) on the GPU within 1e-4 of the
/// CPU's; in bf16 within 1e-2, with the same top-1 class.
#[test]
fn r50_on_the_gpu_matches_the_cpu() {
    let gpu = gpu();
    let dir = tempfile::tempdir().unwrap();
    let path = random_model(&TsmConfig::pptsm(50, 400), dir.path());
    let clips = test_support::randn((2, 8, 3, 224, 224));
    let cpu = Tsm::load(&path, &Device::Cpu).unwrap();
    let want = cpu.forward(&clips).unwrap();
    let on_gpu = Tsm::load(&path, &gpu).unwrap();
    let clips_gpu = clips.to_device(&gpu).unwrap();
    let got = on_gpu.forward(&clips_gpu).unwrap();
    let e = rel(&want, &got);
    let e_fused = rel(
        &want,
        &on_gpu
            .fuse_for_inference()
            .unwrap()
            .forward(&clips_gpu)
            .unwrap(),
    );
    eprintln!("R50 8x224 logits, GPU vs CPU rel L2: {e:.2e}, BN folded {e_fused:.2e}");
    assert!(e <= 1e-4 && e_fused <= 1e-4, "{e} {e_fused}");

    let bf16 = Tsm::load_with_dtype(&path, DType::BF16, &gpu)
        .unwrap()
        .fuse_for_inference()
        .unwrap();
    let got = bf16
        .forward(&clips_gpu.to_dtype(DType::BF16).unwrap())
        .unwrap();
    let e = rel(&want, &got);
    eprintln!("R50 8x224 logits, GPU bf16 vs CPU f32 rel L2: {e:.2e}");
    assert!(e <= 1e-2, "{e}");
    let top1 = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .argmax(1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
    };
    assert_eq!(top1(&want), top1(&got));
}

/// Training on the GPU: the first SGD step (train-mode BN, dropout from the same seeded
/// generator, cross entropy) gives the CPU's loss and weights within 1e-4; without dropout, 20
/// steps on one batch bring the loss down (on the CPU: 2.37 to 0.02).
#[test]
fn training_on_the_gpu_matches_the_cpu_and_learns() {
    let gpu = gpu();
    let dir = tempfile::tempdir().unwrap();
    let clips = test_support::randn((2, 8, 3, 112, 112));
    let labels = Tensor::new(&[3u32, 7], &Device::Cpu).unwrap();
    let train = |path: &std::path::Path, dev: &Device, lr: f64, steps: usize| {
        let model = Tsm::load(path, dev).unwrap();
        let mut opt = SGD::new(model.trainable_vars().unwrap(), lr).unwrap();
        let (clips, labels) = (
            clips.to_device(dev).unwrap(),
            labels.to_device(dev).unwrap(),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut losses = Vec::new();
        for _ in 0..steps {
            let logits = model.forward_train(&clips, &mut rng).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            opt.backward_step(&loss).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
        }
        (model, losses)
    };
    let with_dropout = random_model(&TsmConfig::pptsm(50, 10), dir.path());
    let (cpu, cpu_loss) = train(&with_dropout, &Device::Cpu, 0.01, 1);
    let (one, gpu_loss) = train(&with_dropout, &gpu, 0.01, 1);
    let loss_err = (cpu_loss[0] - gpu_loss[0]).abs() / cpu_loss[0].abs();
    let worst = cpu
        .params()
        .iter()
        .zip(one.params())
        .map(|(a, b)| (rel(&a.tensor, &b.tensor), a.name.clone()))
        .fold((0f32, String::new()), |w, e| if e.0 > w.0 { e } else { w });
    eprintln!(
        "first step: loss {} vs {} (rel {loss_err:.2e}); worst tensor {} at {:.2e}",
        cpu_loss[0], gpu_loss[0], worst.1, worst.0
    );
    assert!(loss_err <= 1e-4 && worst.0 <= 1e-4, "{loss_err} {worst:?}");

    let no_dropout = TsmConfig {
        dropout: 0.0,
        ..TsmConfig::pptsm(50, 10)
    };
    let sub = dir.path().join("no-dropout");
    std::fs::create_dir(&sub).unwrap();
    let (_, losses) = train(&random_model(&no_dropout, &sub), &gpu, 0.002, 20);
    eprintln!("20 steps on the GPU: loss {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[19] < 0.25 * losses[0], "{losses:?}");
}
