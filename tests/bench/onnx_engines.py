"""ONNX engines for `cargo xtask bench model`, one measurement per process so peak RSS is its own.

    python onnx_engines.py ENGINE MODEL.onnx BATCH ITERS THREADS

ENGINE: `onnxruntime` (CPU execution provider, THREADS intra-op threads, one inter-op thread),
`openvino-f32` (CPU plugin, THREADS inference threads, INFERENCE_PRECISION_HINT f32, read back
and checked) or `openvino` (the same with the plugin's default precision, which is bf16 on CPUs
with AMX or AVX-512 BF16). Random clips of the model's input shape at BATCH clips. One untimed
warm-up iteration, then ITERS timed ones. Prints one JSON line: clips, seconds, peak_rss_mb and
precision (what the engine computed in)."""

import json
import resource
import sys
import time

import numpy as np

engine, model_path = sys.argv[1], sys.argv[2]
batch, iters, threads = (int(a) for a in sys.argv[3:6])

if engine == "onnxruntime":
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    shape = [batch] + list(session.get_inputs()[0].shape[1:])
    name = session.get_inputs()[0].name
    precision = "f32"

    def run(x):
        return session.run(None, {name: x})[0]

elif engine in ("openvino", "openvino-f32"):
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads}
    if engine == "openvino-f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    model = core.read_model(model_path)
    shape = [batch] + [d.get_length() for d in model.input(0).get_partial_shape()[1:]]
    compiled = core.compile_model(model, "CPU", config)
    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    if engine == "openvino-f32" and ran != ov.Type.f32:
        raise SystemExit(f"OpenVINO compiled the model in {ran}, not f32")
    precision = ran.get_type_name()
    request = compiled.create_infer_request()

    def run(x):
        return request.infer({0: x})[compiled.output(0)]

else:
    raise SystemExit(f"unknown engine {engine} (onnxruntime, openvino, openvino-f32)")

clips = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
run(clips)
t = time.perf_counter()
for _ in range(iters):
    run(clips)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(
    json.dumps(
        {"clips": batch * iters, "seconds": seconds, "peak_rss_mb": peak, "precision": precision}
    )
)
