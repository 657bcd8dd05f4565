"""Runs an exported ONNX model in ONNX Runtime and OpenVINO, for crates/cli/tests/export.rs.

Usage: python tests/export/run_engines.py MODEL.onnx INPUTS.safetensors OUT_PREFIX

Checks MODEL.onnx with onnx.checker (full_check: strict shape inference too), then feeds every
tensor of INPUTS.safetensors (each a batch of clips) to ONNX Runtime's CPU execution provider
and to OpenVINO's CPU plugin compiled with INFERENCE_PRECISION_HINT f32 (read back from the
compiled model: this machine's default is bf16). Writes OUT_PREFIX.safetensors holding
`ort.<input>` and `openvino.<input>` for every input, and OUT_PREFIX.json: the operators of the
graph, its opset, inputs, outputs and metadata_props, the engines' versions and the precision
OpenVINO ran in. Any failure raises, so the script exits non-zero."""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
from safetensors.numpy import load_file, save_file


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.dim_param else d.dim_value for d in shape.dim]


def main():
    model_path, inputs_path, out_prefix = sys.argv[1:4]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    inputs = load_file(inputs_path)
    input_name = model.graph.input[0].name

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        model_path, options, providers=["CPUExecutionProvider"]
    )
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    if precision != ov.Type.f32:
        raise SystemExit(f"OpenVINO compiled the model in {precision}, not f32")

    outputs = {}
    for name, clips in inputs.items():
        clips = np.ascontiguousarray(clips, dtype=np.float32)
        outputs[f"ort.{name}"] = session.run(None, {input_name: clips})[0]
        result = compiled.create_infer_request().infer({0: clips})
        outputs[f"openvino.{name}"] = np.asarray(result[compiled.output(0)])
    save_file(outputs, f"{out_prefix}.safetensors")

    report = {
        "operators": sorted({n.op_type for n in model.graph.node}),
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "ir_version": model.ir_version,
        "inputs": {i.name: dims(i) for i in model.graph.input},
        "outputs": {o.name: dims(o) for o in model.graph.output},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "onnxruntime": ort.__version__,
        "openvino": ov.get_version(),
        "openvino_precision": precision.get_type_name(),
    }
    with open(f"{out_prefix}.json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
