"""Shared helpers for the Paddle reference scripts (paddle_model.py, paddle_train.py): PaddleVideo's
ResNetTweaksTSM and ppTSMHead loaded from ppvideo==2.3.1's own source files (loaded by path: the
package __init__ wants cv2/decord/av, which we neither need nor can install beside paddlepaddle
3.3.1), a minimal Recognizer2D, and weight randomisation.

ppvideo is installed into this venv with `pip install --no-deps` on first use, because its
declared dependencies (opencv-python==4.2.0.32, scipy==1.6.3, decord==0.4.2, av==8.0.3) do not
install on current Python and none of them is used by the files we load.
"""

import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import paddle
import paddle.nn.functional as F

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


def load_ppvideo_modules(build_loss=None):
    """ResNetTweaksTSM and ppTSMHead, from ppvideo's files, with their package imports stubbed.
    `build_loss(cfg)` stands in for ppvideo's loss builder (the heads' `loss_func`)."""
    # Paddle 3 dropped this; ppvideo's BottleneckBlock asks it on every forward.
    if not hasattr(paddle.device, "is_compiled_with_npu"):
        paddle.device.is_compiled_with_npu = lambda: False
    root = os.path.join(ppvideo_root(), "paddlevideo", "modeling")
    reg = _Registry()
    stub("_ppv")
    stub("_ppv.modeling")
    stub("_ppv.modeling.registry", BACKBONES=reg, HEADS=reg)
    stub("_ppv.modeling.weight_init", weight_init_=lambda *a, **k: None)
    stub("_ppv.modeling.builder", build_loss=build_loss or (lambda cfg: None))
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
