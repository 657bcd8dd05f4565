"""ONNX engines for `cargo xtask bench model`, one measurement per process so peak RSS is its own.

    python onnx_engines.py ENGINE MODEL.onnx BATCH ITERS THREADS

ENGINE: `onnxruntime` (CPU execution provider, THREADS intra-op threads, one inter-op thread),
`openvino-f32` (CPU plugin, THREADS inference threads, INFERENCE_PRECISION_HINT f32, read back
and checked) or `openvino` (the same with the plugin's default precision, which is bf16 on CPUs
with AMX or AVX-512 BF16). Random clips of the model's input shape at BATCH clips. One untimed
warm-up iteration, then ITERS timed ones. Prints one JSON line: clips, seconds, peak_rss_mb and
precision (what the engine computed in).

ENGINE `openvino-f32-profile` (or `openvino-profile`): `openvino-f32` (or `openvino`) compiled
with PERF_COUNT on; after the warm-up,
sums OpenVINO's per-node performance counters (real time) over ITERS iterations and prints them
per layer label, in the labels of tsm-model's profile: `conv KxK sS C->O HxW` (HxW the conv's
input) from the ONNX graph with inferred shapes, else the kind of step (`max pool 3x3`,
`avg pool 2x2`, `residual add+act`, `temporal shift` for the shift's Slice/Pad/Concat/Reshape,
`head (pool + fc)`, `layout reorder` for OpenVINO's own layout conversions). Each runtime node
is mapped to the ONNX node it came from through its `originalLayersNames`; the first of them
that is a Conv, or else the first, names the row, the others are what OpenVINO fused into it.
One JSON line per label, the most time first: label, ms (per iteration), nodes (executed
runtime nodes), exec_type (OpenVINO's kernels, `/`-joined), fused (the ONNX ops fused into
those nodes, e.g. `LeakyRelu`, or `Add+LeakyRelu 1/4, none 3/4` where they differ) and
fused_into (the kinds, e.g. `conv`, whose nodes absorbed nodes of this label: a label whose
nodes all ran fused into others still gets its line, with nodes 0);
then one line with total_ms, iters and precision."""

import json
import resource
import sys
import time

import numpy as np

engine, model_path = sys.argv[1], sys.argv[2]
batch, iters, threads = (int(a) for a in sys.argv[3:6])

# ONNX ops of the classifier head, and the ops the temporal shift is exported as (with Reshape)
HEAD_OPS = {"GlobalAveragePool", "ReduceMean", "Gemm", "MatMul", "Flatten", "Softmax"}
SHIFT_OPS = {"Slice", "Pad", "Concat"}


def onnx_layers(path):
    """Every ONNX node's (op_type, label), by node name, and the producing node of each tensor."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    shapes = {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    producer = {out: n for n in graph.node for out in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)

    def ints(node, name, default):
        a = next((a for a in node.attribute if a.name == name), None)
        return list(onnx.helper.get_attribute_value(a)) if a is not None else default

    def dims(v):
        return "x".join(str(d) for d in v)

    def producer_op(node):
        p = producer.get(node.input[0])
        return p.op_type if p is not None else None

    def label(node):
        op = node.op_type
        if op == "Conv":
            x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
            if not x or not w or None in x[1:] or None in w:
                raise SystemExit(f"{node.name}: no inferred shape for its input or weight")
            k = ints(node, "kernel_shape", w[2:])
            s = ints(node, "strides", [1] * len(k))
            stride = str(s[0]) if len(set(s)) == 1 else dims(s)
            return f"conv {dims(k)} s{stride} {x[1]}->{w[0]} {dims(x[2:])}"
        if op in ("MaxPool", "AveragePool"):
            kind = "max" if op == "MaxPool" else "avg"
            return f"{kind} pool {dims(ints(node, 'kernel_shape', []))}"
        if op in HEAD_OPS:
            return "head (pool + fc)"
        if op in ("Add", "Sum"):
            return "residual add+act"
        if op in ("LeakyRelu", "Relu"):
            return "residual add+act" if producer_op(node) in ("Add", "Sum") else "activation"
        if op in SHIFT_OPS:
            return "temporal shift"
        if op == "Reshape":
            if producer_op(node) in SHIFT_OPS or "Slice" in consumers.get(node.output[0], []):
                return "temporal shift"
            if producer_op(node) in HEAD_OPS:
                return "head (pool + fc)"
            return "reshape"
        return op.lower()

    layers = {n.name: (n.op_type, label(n)) for n in graph.node}
    return layers, {t: n.name for t, n in producer.items()}


def openvino_profile(model_path, batch, iters, threads, f32):
    import re
    from collections import Counter, defaultdict

    import openvino as ov

    layers, tensor_node = onnx_layers(model_path)

    def onnx_name(name):
        """The ONNX node an OpenVINO name came from: `Conv_7/WithoutBiases` is Conv_7's,
        `Concat_16_1` Concat_16's (a renamed copy), `logits` the node writing tensor logits."""
        base = name.split("/")[0]
        for candidate in (name, base, re.sub(r"_\d+$", "", base)):
            if candidate in layers:
                return candidate
            if candidate in tensor_node:
                return tensor_node[candidate]
        return None

    core = ov.Core()
    model = core.read_model(model_path)
    shape = [batch] + [d.get_length() for d in model.input(0).get_partial_shape()[1:]]
    config = {"INFERENCE_NUM_THREADS": threads}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    config["PERF_COUNT"] = True  # ov.properties.enable_profiling
    compiled = core.compile_model(model, "CPU", config)
    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    if f32 and ran != ov.Type.f32:
        raise SystemExit(f"OpenVINO compiled the model in {ran}, not f32")
    origin = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        names = op.get_rt_info()["originalLayersNames"].astype(str)
        origin[op.get_friendly_name()] = [n for n in names.split(",") if n]
    request = compiled.create_infer_request()
    clips = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
    request.infer({0: clips})
    seconds, kernel = defaultdict(float), {}
    for _ in range(iters):
        request.infer({0: clips})
        for p in request.get_profiling_info():
            if p.status == ov.ProfilingInfo.Status.EXECUTED:
                seconds[p.node_name] += p.real_time.total_seconds()
                kernel[p.node_name] = (p.node_type, p.exec_type)

    rows = defaultdict(lambda: {"ms": 0.0, "nodes": 0, "exec": [], "fused": Counter()})
    absorbed = defaultdict(set)
    for name, t in seconds.items():
        node_type, exec_type = kernel[name]
        found = [n for n in map(onnx_name, origin.get(name) or [name]) if n is not None]
        if node_type == "Reorder" and not origin.get(name):
            host, others = "layout reorder", []
        elif not found:
            print(f"onnx_engines: {name} ({node_type}) maps to no ONNX node", file=sys.stderr)
            host, others = f"{node_type} (OpenVINO)", []
        else:
            primary = next((n for n in found if layers[n][0] == "Conv"), found[0])
            host = layers[primary][1]
            others = [n for n in found if n != primary]
        row = rows[host]
        row["ms"] += t * 1e3 / iters
        row["nodes"] += 1
        if exec_type not in row["exec"]:
            row["exec"].append(exec_type)
        fused = dict.fromkeys(layers[n][0] for n in others)  # op types, in order, once each
        row["fused"]["+".join(fused)] += 1
        for n in others:
            if layers[n][1] != host:
                absorbed[layers[n][1]].add(host.split(" ")[0])
    for kind in absorbed:  # a kind all of whose nodes were fused elsewhere still gets its line
        rows.setdefault(kind, rows.default_factory())

    def fused_summary(counts):
        if len(counts) <= 1:
            return next(iter(counts), "")
        total = sum(counts.values())
        return ", ".join(f"{k or 'none'} {n}/{total}" for k, n in counts.most_common())

    for label, row in sorted(rows.items(), key=lambda r: -r[1]["ms"]):
        line = {
            "label": label,
            "ms": round(row["ms"], 4),
            "nodes": row["nodes"],
            "exec_type": "/".join(row["exec"]),
            "fused": fused_summary(row["fused"]),
            "fused_into": "/".join(sorted(absorbed.get(label, ()))),
        }
        print(json.dumps(line))
    total = sum(seconds.values()) * 1e3 / iters
    precision = ran.get_type_name()
    print(json.dumps({"total_ms": round(total, 4), "iters": iters, "precision": precision}))


if engine in ("openvino-profile", "openvino-f32-profile"):
    openvino_profile(model_path, batch, iters, threads, f32=engine == "openvino-f32-profile")
    sys.exit(0)

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
    raise SystemExit(
        f"unknown engine {engine} (onnxruntime, openvino, openvino-f32, openvino-f32-profile, "
        "openvino-profile)"
    )

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
