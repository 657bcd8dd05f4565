"""Paddle baseline for `cargo xtask bench model`, one measurement per process so peak RSS is its own.

    python model_baselines.py MODE DEPTH NUM_SEG SIZE BATCH ITERS

PaddleVideo's PP-TSM (ResNetTweaksTSM + ppTSMHead from ppvideo's own files, see
tests/reference/_paddle.py) on Paddle's CPU, random weights and clips. MODE: eval (no_grad
forward in eval mode) or train (train-mode forward, cross entropy, backward, Momentum with
Nesterov and L2Decay(1e-4), as PP-TSM trains). One untimed warm-up iteration, then ITERS timed
ones. Threads: OMP_NUM_THREADS / MKL_NUM_THREADS from the caller; FLAGS_use_mkldnn (oneDNN) from
the caller too. Prints one JSON line: clips, seconds, peak_rss_mb."""

import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
from _paddle import Recognizer, load_ppvideo_modules  # noqa: E402

NUM_CLASSES = 400

mode = sys.argv[1]
depth, num_seg, size, batch, iters = (int(a) for a in sys.argv[2:7])
paddle.set_device("cpu")
paddle.seed(0)
ResNetTweaksTSM, ppTSMHead = load_ppvideo_modules(
    build_loss=lambda cfg: (lambda score, labels, **kw: F.cross_entropy(score, labels, **kw))
)
backbone = ResNetTweaksTSM(depth=depth, num_seg=num_seg)
head = ppTSMHead(
    num_classes=NUM_CLASSES, in_channels=2048 if depth >= 50 else 512, num_seg=num_seg
)
model = Recognizer(backbone, head)
rng = np.random.default_rng(0)
clips = paddle.to_tensor(
    rng.normal(0.0, 1.0, (batch, num_seg, 3, size, size)).astype(np.float32)
)
labels = paddle.to_tensor((np.arange(batch) % NUM_CLASSES).astype(np.int64).reshape(-1, 1))

if mode == "eval":
    model.eval()

    def step():
        with paddle.no_grad():
            logits, _ = model(clips)
        logits.numpy()

elif mode == "train":
    model.train()
    opt = paddle.optimizer.Momentum(
        learning_rate=0.01,
        momentum=0.9,
        use_nesterov=True,
        weight_decay=paddle.regularizer.L2Decay(1e-4),
        parameters=model.parameters(),
    )

    def step():
        logits, _ = model(clips)
        loss = F.cross_entropy(logits, labels, soft_label=False)
        loss.backward()
        opt.step()
        opt.clear_grad()
        float(loss)

else:
    raise SystemExit(f"unknown mode {mode} (eval or train)")

step()
t = time.perf_counter()
for _ in range(iters):
    step()
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"clips": batch * iters, "seconds": seconds, "peak_rss_mb": peak}))
