"""Reference for video-io: which frames the tutorial's pipeline (OpenCV full decode + Sampler)
picks, and their pixels, on the shared media and on generated UCF101-style clips.

Writes to OUT_DIR: media/*.avi|mp4 (the generated clips), decode.json (per video: frames_len,
valid indices, train draws and indices) and <video>.safetensors (sampled frames as uint8 HWC, and
the valid-mode tensor the tutorial's Compose produces)."""

import json
import os
import random
import sys

import numpy as np
from safetensors.numpy import save_file

from _tutorial import make_test_videos, media, tutorial

S = tutorial()
out = sys.argv[1]
videos = {n: media(n) for n in ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4",
                                "carphone_distorted.mp4"]}
videos.update(make_test_videos(os.path.join(out, "media")))

draws = []
real_randint = random.randint


def recording_randint(a, b):
    v = real_randint(a, b)
    draws.append(v)
    return v


S.random.randint = recording_randint
random.seed(1234)
summary = {}
for name, path in sorted(videos.items()):
    decoded = S.VideoDecoder()(dict(filename=path))
    frames_len = decoded["frames_len"]

    def sample(valid):
        r = dict(decoded)
        return S.Sampler(num_seg=8, seg_len=1, valid_mode=valid)(r)

    # Sampler._get keeps only images; recover the indices by re-running its arithmetic through
    # the same class with frames replaced by their ordinals.
    def indices(valid):
        r = dict(format="video", frames_len=frames_len,
                 frames=[np.full((1, 1, 3), 0, np.uint8)] * frames_len)
        picked = []
        orig_get = S.Sampler._get
        S.Sampler._get = lambda self, idx, res: picked.extend(idx) or res
        try:
            S.Sampler(num_seg=8, seg_len=1, valid_mode=valid)(r)
        finally:
            S.Sampler._get = orig_get
        return [int(i) for i in picked]

    valid_idx = indices(True)
    draws.clear()
    state = random.getstate()
    train_idx = indices(False)
    train_draws = list(draws)
    random.setstate(state)
    train_imgs = sample(False)["imgs"]
    valid_imgs = sample(True)["imgs"]
    tensor = S.Compose(train_mode=False)(dict(filename=path))["imgs"]
    summary[name] = dict(frames_len=frames_len, valid_indices=valid_idx,
                         train_draws=train_draws, train_indices=train_idx,
                         path=os.path.relpath(path, out) if path.startswith(out) else path)
    save_file({
        "valid_frames": np.stack([np.asarray(i) for i in valid_imgs]).astype(np.uint8),
        "train_frames": np.stack([np.asarray(i) for i in train_imgs]).astype(np.uint8),
        "valid_tensor": np.ascontiguousarray(tensor.astype(np.float32)),
    }, os.path.join(out, name + ".safetensors"))
    print(name, frames_len, valid_idx, train_idx)

with open(os.path.join(out, "decode.json"), "w") as f:
    json.dump(summary, f, indent=1)
