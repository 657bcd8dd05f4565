"""Reference outputs for crates/tsm-model and crates/paddle-weights: PaddleVideo's own PP-TSM.

Usage: python tests/reference/paddle_model.py OUT_DIR

Builds PaddleVideo's ResNetTweaksTSM backbone and ppTSMHead from ppvideo==2.3.1's own source
files (see _paddle.py), randomises every weight and every BatchNorm running
statistic, saves the state dicts as .pdparams (protocol 2 and 4, as paddle.save writes them) and
the eval-mode logits and pooled features for random clips. Also records F.temporal_shift and its
gradient. Everything is written to OUT_DIR:

  <case>.pdparams (and <case>.p2.pdparams / <case>.p4.pdparams for the two-protocol case)
  <case>.safetensors   clips [N,T,3,H,W], logits [N,K], features [N,C]
  cases.json           the list of cases with depth, num_seg, size, batch, num_classes, files
  shift.safetensors    x, grad_out, y, grad_x for a few temporal-shift configurations
"""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import paddle
import paddle.nn.functional as F
from safetensors.numpy import save_file

from _paddle import Recognizer, load_ppvideo_modules, ppvideo_root, randomise

# name, depth, num_seg, size, batch, num_classes (None: backbone-only file), pickle protocols
CASES = [
    ("r18_t8_s224", 18, 8, 224, 1, 10, [4]),
    ("r18_t16_s100", 18, 16, 100, 2, 7, [2]),
    ("r18_t8_s100_backbone", 18, 8, 100, 1, None, [4]),
    ("r50_t8_s224", 50, 8, 224, 1, 400, [2, 4]),
    ("r50_t16_s100", 50, 16, 100, 1, 5, [4]),
    ("r101_t8_s100", 101, 8, 100, 1, 6, [2]),
    # for the ONNX export tests (crates/cli/tests/export.rs): small odd and even sizes, 3 clips
    ("r18_t8_s33", 18, 8, 33, 3, 5, [4]),
    ("r18_t16_s32", 18, 16, 32, 3, 7, [4]),
    ("r50_t8_s32", 50, 8, 32, 3, 6, [4]),
    ("r50_t16_s35", 50, 16, 35, 3, 5, [4]),
]


def run_case(out, name, depth, num_seg, size, batch, num_classes, protocols, classes):
    ResNetTweaksTSM, ppTSMHead = classes
    paddle.seed(0)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    backbone = ResNetTweaksTSM(depth=depth, num_seg=num_seg)
    head = None
    if num_classes is not None:
        in_ch = 2048 if depth >= 50 else 512
        head = ppTSMHead(num_classes=num_classes, in_channels=in_ch, num_seg=num_seg)
    model = Recognizer(backbone, head)
    randomise(model, rng)
    model.eval()
    clips = rng.normal(0.0, 1.0, (batch, num_seg, 3, size, size)).astype(np.float32)
    with paddle.no_grad():
        logits, pooled = model(paddle.to_tensor(clips))
    # a backbone-only file is saved as PaddleClas's ImageNet weights are: no `backbone.` prefix
    state = model.state_dict() if head is not None else backbone.state_dict()
    files = []
    for proto in protocols:
        fname = f"{name}.pdparams" if len(protocols) == 1 else f"{name}.p{proto}.pdparams"
        paddle.save(state, os.path.join(out, fname), protocol=proto)
        files.append(fname)
    tensors = {"clips": clips, "features": pooled.numpy()}
    if logits is not None:
        tensors["logits"] = logits.numpy()
    save_file(tensors, os.path.join(out, f"{name}.safetensors"))
    scale = float(np.abs(tensors["features"]).mean())
    print(f"{name}: files {files}, mean |feature| {scale:.3g}", flush=True)
    return {
        "name": name,
        "depth": depth,
        "num_seg": num_seg,
        "size": size,
        "batch": batch,
        "num_classes": num_classes,
        "pdparams": files,
        "outputs": f"{name}.safetensors",
    }


def shift_cases(out):
    """F.temporal_shift forward and gradient for a few (N*T, C, H, W, T, ratio)."""
    rng = np.random.default_rng(7)
    tensors, meta = {}, []
    for i, (n, t, c, h, w, ratio) in enumerate(
        [(2, 8, 16, 3, 5, 1.0 / 8), (1, 4, 10, 2, 3, 0.25), (3, 3, 7, 4, 4, 1.0 / 3)]
    ):
        x = rng.normal(0.0, 1.0, (n * t, c, h, w)).astype(np.float32)
        g = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
        xt = paddle.to_tensor(x, stop_gradient=False)
        y = F.temporal_shift(xt, t, ratio)
        (y * paddle.to_tensor(g)).sum().backward()
        tensors[f"{i}.x"] = x
        tensors[f"{i}.grad_out"] = g
        tensors[f"{i}.y"] = y.numpy()
        tensors[f"{i}.grad_x"] = xt.grad.numpy()
        meta.append({"index": i, "num_seg": t, "ratio": ratio})
    save_file(tensors, os.path.join(out, "shift.safetensors"))
    with open(os.path.join(out, "shift.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    paddle.set_device("cpu")
    if len(sys.argv) == 4 and sys.argv[2] == "--case":
        # one model per process: Paddle's dygraph refuses a second parameter named
        # `conv1_1_weights` (ppvideo names its parameters explicitly)
        case = next(c for c in CASES if c[0] == sys.argv[3])
        meta = run_case(out, *case, classes=load_ppvideo_modules())
        with open(os.path.join(out, f"{case[0]}.json"), "w") as f:
            json.dump(meta, f, indent=1)
        return
    shift_cases(out)
    ppvideo_root()  # install once, before the per-case processes
    only = os.environ.get("PADDLE_MODEL_CASES")  # comma-separated subset, for development
    cases = []
    for c in CASES:
        if only is not None and c[0] not in only.split(","):
            continue
        subprocess.check_call([sys.executable, __file__, out, "--case", c[0]])
        with open(os.path.join(out, f"{c[0]}.json")) as f:
            cases.append(json.load(f))
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
