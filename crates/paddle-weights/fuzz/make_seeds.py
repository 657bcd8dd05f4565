"""Writes the fuzzing seeds: small state dicts saved by paddle.save with pickle protocols 2, 3
and 4, shaped like PaddleVideo checkpoints (conv, BatchNorm, fc; float32, float16, int64).

Usage: python crates/paddle-weights/fuzz/make_seeds.py OUT_DIR
(run with the reference venv: target/pyref-venv/bin/python; the files are committed in seeds/)
"""

import os
import sys

import numpy as np
import paddle


class Tiny(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, bias_attr=False)
        self.bn = paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4, 2)


def main(out):
    os.makedirs(out, exist_ok=True)
    paddle.seed(0)
    model = Tiny()
    state = model.state_dict()
    for proto in (2, 3, 4):
        paddle.save(state, os.path.join(out, f"tiny.p{proto}.pdparams"), protocol=proto)
    # numpy values (not tensors) of other dtypes, as optimizer states and converted files hold
    mixed = {
        "w16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "steps": np.array([3], dtype=np.int64),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    for proto in (2, 4):
        paddle.save(mixed, os.path.join(out, f"mixed.p{proto}.pdparams"), protocol=proto)
    for f in sorted(os.listdir(out)):
        print(f, os.path.getsize(os.path.join(out, f)))


if __name__ == "__main__":
    main(sys.argv[1])
