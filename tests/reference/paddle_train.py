"""Reference outputs for crates/train-loop: two PP-TSM training steps as PaddleVideo takes them.

Usage: python tests/reference/paddle_train.py OUT_DIR

PaddleVideo's ResNetTweaksTSM (R18) + ppTSMHead (dropout off, label smoothing 0.1) from
ppvideo's files (see _paddle.py), random weights and BN statistics, one random batch mixed with a
fixed mixup lambda and permutation, PaddleVideo's loss (BaseHead.loss with mixup labels),
paddle.optimizer.Momentum with use_nesterov=True and L2Decay(1e-4), the layers' own
ParamAttr regularizers and learning-rate multipliers (BN decay 0, fc weight 1e-4 and x5, fc bias
0 and x10), and ppvideo's CustomWarmupCosineDecay stepped every iteration. Writes to OUT_DIR:

  before.pdparams      the state dict before the first step
  after.pdparams       the state dict after two steps (parameters and BN running statistics)
  batch.safetensors    clips [N,T,3,H,W] (before mixing), labels [N] (int64)
  case.json            depth, num_seg, size, num_classes, eps, lam, perm, schedule, lrs, losses
"""

import json
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle.regularizer import L2Decay
from safetensors.numpy import save_file

from _paddle import Recognizer, load_by_path, load_ppvideo_modules, ppvideo_root, randomise

DEPTH, NUM_SEG, SIZE, BATCH, NUM_CLASSES = 18, 4, 32, 4, 7
EPS = 0.1
LAM = 0.7
PERM = [2, 0, 3, 1]
SCHEDULE = dict(warmup_start_lr=0.01, warmup_epochs=2, cosine_base_lr=0.05, max_epoch=4,
                num_iters=3)
STEPS = 2


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    paddle.set_device("cpu")
    paddle.seed(0)
    rng = np.random.default_rng(20240601)

    def build_loss(cfg):
        # ppvideo's CrossEntropyLoss (loss_weight 1): F.cross_entropy with the head's kwargs
        return lambda score, labels, **kw: F.cross_entropy(score, labels, **kw)

    ResNetTweaksTSM, ppTSMHead = load_ppvideo_modules(build_loss)
    custom_lr = load_by_path(
        "_ppv_custom_lr", os.path.join(ppvideo_root(), "paddlevideo", "solver", "custom_lr.py")
    )
    backbone = ResNetTweaksTSM(depth=DEPTH, num_seg=NUM_SEG)
    head = ppTSMHead(num_classes=NUM_CLASSES, in_channels=512, num_seg=NUM_SEG, drop_ratio=0.0,
                     ls_eps=EPS)
    assert head.dropout is None
    model = Recognizer(backbone, head)
    randomise(model, rng)
    paddle.save(model.state_dict(), os.path.join(out, "before.pdparams"))

    clips = rng.normal(0.0, 1.0, (BATCH, NUM_SEG, 3, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int64)
    # PaddleVideo's Mixup collate: lam * x + (1 - lam) * x[perm], labels and labels[perm]
    mixed = (LAM * clips + (1.0 - LAM) * clips[PERM]).astype(np.float32)
    labels_b = labels[PERM]

    sched = custom_lr.CustomWarmupCosineDecay(**SCHEDULE)
    opt = paddle.optimizer.Momentum(
        learning_rate=sched,
        momentum=0.9,
        parameters=model.parameters(),
        use_nesterov=True,
        weight_decay=L2Decay(1e-4),
    )
    model.train()
    losses, lrs = [], []
    x = paddle.to_tensor(mixed)
    la = paddle.to_tensor(labels.reshape(-1, 1))
    lb = paddle.to_tensor(labels_b.reshape(-1, 1))
    lam = paddle.to_tensor(np.full(BATCH, LAM, dtype=np.float32))
    for _ in range(STEPS):
        imgs = paddle.reshape(x, [-1, 3, SIZE, SIZE])
        score = model.head(model.backbone(imgs), NUM_SEG)
        loss = model.head.loss(score, [la, lb, lam])["loss"]
        lrs.append(float(opt.get_lr()))
        loss.backward()
        opt.step()
        opt.clear_grad()
        sched.step()
        losses.append(float(loss.numpy().reshape(-1)[0]))
    paddle.save(model.state_dict(), os.path.join(out, "after.pdparams"))
    save_file({"clips": clips, "labels": labels}, os.path.join(out, "batch.safetensors"))
    case = dict(depth=DEPTH, num_seg=NUM_SEG, size=SIZE, num_classes=NUM_CLASSES, eps=EPS,
                lam=LAM, perm=PERM, schedule=SCHEDULE, lrs=lrs, losses=losses)
    with open(os.path.join(out, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
    print(f"paddle_train: losses {losses}, lrs {lrs}", flush=True)


if __name__ == "__main__":
    main()
