//! The model `cargo xtask bench model` runs in ONNX Runtime and OpenVINO:
//!
//!     onnx_export DEPTH NUM_SEG SIZE OUT.onnx
//!
//! PP-TSM with random weights and 400 classes, as the bench's other engines build it, exported
//! with [`Tsm::to_onnx`] at `SIZE` x `SIZE` (opset 17). The weights do not matter for speed.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use tsm_model::{OnnxOptions, Tsm, TsmConfig};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [depth, seg, size, out] = &args[..] else {
        return Err("usage: onnx_export DEPTH NUM_SEG SIZE OUT.onnx".into());
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let cfg = TsmConfig::pptsm(num(depth)?, 400).with_num_seg(num(seg)?);
    let varmap = VarMap::new();
    let model = Tsm::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let opts = OnnxOptions {
        height: num(size)?,
        width: num(size)?,
        ..Default::default()
    };
    std::fs::write(out, model.to_onnx(&opts)?).map_err(|e| format!("{out}: {e}"))?;
    Ok(())
}
