"""Reference outputs for crates/tsm-model and crates/paddle-weights: PaddleVideo's own PP-TSM.

Usage: python tests/reference/paddle_model.py OUT_DIR

Builds PaddleVideo's ResNetTweaksTSM backbone and ppTSMHead from ppvideo==2.3.1's own source
files (loaded by path: the package __init__ wants cv2/decord/av, which we neither need nor can
install beside paddlepaddle 3.3.1), randomises every weight and every BatchNorm running
statistic, saves the state dicts as .pdparams (protocol 2 and 4, as paddle.save writes them) and
the eval-mode logits and pooled features for random clips. Also records F.temporal_shift and its
gradient. Everything is written to OUT_DIR:

  <case>.pdparams (and <case>.p2.pdparams / <case>.p4.pdparams for the two-protocol case)
  <case>.safetensors   clips [N,T,3,H,W], logits [N,K], features [N,C]
  cases.json           the list of cases with depth, num_seg, size, batch, num_classes, files
  shift.safetensors    x, grad_out, y, grad_x for a few temporal-shift configurations

ppvideo is installed into this venv with `pip install --no-deps` on first use, because its
declared dependencies (opencv-python==4.2.0.32, scipy==1.6.3, decord==0.4.2, av==8.0.3) do not
install on current Python and none of them is used by the two model files.
"""

import importlib.util
import json
import os
import subprocess
import sys
import types
import zlib

import numpy as np
import paddle
import paddle.nn.functional as F
from safetensors.numpy import save_file

PPVIDEO = "ppvideo==2.3.1"


def ppvideo_root():
    """The installed ppvideo package folder, installing it (without dependencies) if absent."""
    spec = importlib.util.find_spec("ppvideo")
    if spec is None:
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", PPVIDEO]
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("ppvideo")
    return os.path.dirname(spec.origin)


def stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so that submodules resolve
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod
    return mod


class _Registry:
    def register(self, *args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda cls: cls


def load_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_ppvideo_modules():
    """ResNetTweaksTSM and ppTSMHead, from ppvideo's files, with their package imports stubbed."""
    # Paddle 3 dropped this; ppvideo's BottleneckBlock asks it on every forward.
    if not hasattr(paddle.device, "is_compiled_with_npu"):
        paddle.device.is_compiled_with_npu = lambda: False
    root = os.path.join(ppvideo_root(), "paddlevideo", "modeling")
    reg = _Registry()
    stub("_ppv")
    stub("_ppv.modeling")
    stub("_ppv.modeling.registry", BACKBONES=reg, HEADS=reg)
    stub("_ppv.modeling.weight_init", weight_init_=lambda *a, **k: None)
    stub("_ppv.modeling.builder", build_loss=lambda cfg: None)
    stub("_ppv.modeling.backbones")
    stub("_ppv.modeling.heads")
    stub("_ppv.utils")
    stub("_ppv.utils.save_load", load_ckpt=None)
    stub("paddlevideo")
    stub("paddlevideo.utils", get_logger=lambda *a, **k: None, get_dist_info=lambda: (0, 1))
    bb = load_by_path(
        "_ppv.modeling.backbones.resnet_tweaks_tsm",
        os.path.join(root, "backbones", "resnet_tweaks_tsm.py"),
    )
    load_by_path("_ppv.modeling.heads.base", os.path.join(root, "heads", "base.py"))
    load_by_path("_ppv.modeling.heads.tsn_head", os.path.join(root, "heads", "tsn_head.py"))
    head = load_by_path(
        "_ppv.modeling.heads.pptsm_head", os.path.join(root, "heads", "pptsm_head.py")
    )
    return bb.ResNetTweaksTSM, head.ppTSMHead


class Recognizer(paddle.nn.Layer):
    """PaddleVideo's Recognizer2D.forward_net with a backbone and an optional head."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, clips):
        num_segs = clips.shape[1]
        imgs = paddle.reshape(clips, [-1] + list(clips.shape[2:]))
        feature = self.backbone(imgs)
        # pooled features exactly as ppTSMHead computes them before its fc (eval: no dropout)
        pooled = F.adaptive_avg_pool2d(feature, 1)
        pooled = paddle.reshape(pooled, [-1, num_segs, pooled.shape[1]]).mean(axis=1)
        score = self.head(feature, num_segs) if self.head is not None else None
        return score, pooled


def randomise(layer, rng):
    """Every parameter and BN statistic random, at scales that keep activations O(1)."""
    for name, p in layer.state_dict().items():
        shape = p.shape
        if name.endswith("_conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("_batch_norm.weight"):
            v = rng.uniform(0.3, 1.2, shape)
        elif name.endswith("_batch_norm.bias"):
            v = rng.normal(0.0, 0.2, shape)
        elif name.endswith("_batch_norm._mean"):
            v = rng.normal(0.0, 0.2, shape)
        elif name.endswith("_batch_norm._variance"):
            v = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("fc.weight"):
            v = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        elif name.endswith("fc.bias"):
            v = rng.normal(0.0, 0.1, shape)
        else:
            raise SystemExit(f"unexpected parameter {name}")
        p.set_value(v.astype(np.float32))


# name, depth, num_seg, size, batch, num_classes (None: backbone-only file), pickle protocols
CASES = [
    ("r18_t8_s224", 18, 8, 224, 1, 10, [4]),
    ("r18_t16_s100", 18, 16, 100, 2, 7, [2]),
    ("r18_t8_s100_backbone", 18, 8, 100, 1, None, [4]),
    ("r50_t8_s224", 50, 8, 224, 1, 400, [2, 4]),
    ("r50_t16_s100", 50, 16, 100, 1, 5, [4]),
    ("r101_t8_s100", 101, 8, 100, 1, 6, [2]),
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
