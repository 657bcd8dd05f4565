"""Reference outputs for crates/augment: the tutorial's own transform classes
($TSM_SHARED_DIR/spec/seed_pipeline.py) run on real frames with their random draws fixed.

Usage: python tutorial_transforms.py OUT_DIR

seed_pipeline's `random` is replaced by a recorder that answers each draw from a seeded
generator (or a forced index) and logs it, so the Rust side can apply the very same choices.
Writes to OUT_DIR:
  tensors.safetensors  in_<input>: uint8 [T,H,W,3] frames; out_<case>: float32 [T,3,H,W]
  cases.json           per case: input, pipeline config (augment's serde format), the choices
                       (augment's `Choice` serde format) and MultiScaleCrop's candidate lists
"""

import json
import os
import random as pyrandom
import sys

import cv2
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

SHARED = os.environ["TSM_SHARED_DIR"]
sys.path.insert(0, os.path.join(SHARED, "spec"))
import seed_pipeline as S  # noqa: E402

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def read_frames(name, indices):
    cap = cv2.VideoCapture(os.path.join(SHARED, "media", name))
    frames, i = [], 0
    wanted = set(indices)
    while len(frames) < len(indices):
        ok, frame = cap.read()
        if not ok:
            raise RuntimeError(f"{name}: only {i} frames")
        if i in wanted:
            frames.append(np.ascontiguousarray(frame[:, :, ::-1]))  # BGR -> RGB, as the tutorial
        i += 1
    return np.stack(frames)


class Recorder:
    """Stands in for the `random` module inside seed_pipeline."""

    def __init__(self, seed, forced_choices=()):
        self.rng = pyrandom.Random(seed)
        self.forced = list(forced_choices)
        self.log = []

    def choice(self, seq):
        seq = list(seq)
        i = self.forced.pop(0) if self.forced else self.rng.randrange(len(seq))
        self.log.append(("choice", seq, seq[i]))
        return seq[i]

    def randint(self, a, b):
        v = self.rng.randint(a, b)
        self.log.append(("randint", a, b, v))
        return v

    def random(self):
        v = self.rng.random()
        self.log.append(("random", v))
        return v


def build(cfg):
    """seed_pipeline objects from one augment `Transform` config ({"Name": {params}})."""
    (name, params), = cfg.items()
    return getattr(S, name)(**params)


def choice_of(cfg, log, size):
    """augment's `Choice` for one transform from the draws it made, plus candidate lists."""
    (name, params), = cfg.items()
    extra = None
    if name == "MultiScaleCrop":
        (_, pairs, (cw, ch)), rest = log[0], log[1:]
        if params.get("fix_crop", True):
            (_, offsets, (x, y)), = rest
        else:
            (_, _, _, x), (_, _, _, y) = rest
            offsets = None
        extra = {"image_size": list(size), "pairs": [list(p) for p in pairs],
                 "offsets": None if offsets is None else [[float(a), float(b)] for a, b in offsets]}
        return {"MultiScaleCrop": {"width": cw, "height": ch, "x": float(x), "y": float(y)}}, extra
    if name == "RandomCrop":
        (_, _, _, x), (_, _, _, y) = log
        return {"RandomCrop": {"x": x, "y": y}}, extra
    if name == "RandomFlip":
        (_, v), = log
        return {"RandomFlip": bool(v < params.get("p", 0.5))}, extra
    assert not log, f"{name} drew {log}"
    return "Fixed", extra


def run_case(frames, transforms, seed, forced):
    rec = Recorder(seed, forced)
    S.random = rec
    results = {"imgs": [Image.fromarray(f) for f in frames]}
    choices, candidates = [], []
    for cfg in transforms:
        size = results["imgs"][0].size
        rec.log = []
        results = build(cfg)(results)
        c, extra = choice_of(cfg, rec.log, size)
        choices.append(c)
        if extra is not None:
            candidates.append(extra)
    results = S.Image2Array()(results)
    results = S.Normalization(mean=MEAN, std=STD)(results)
    return results["imgs"].astype(np.float32), choices, candidates


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)

    bikes = read_frames("bikes.mp4", [0, 120])  # 640x272
    carphone = read_frames("carphone_pristine.mp4", [0, 60])  # 176x144
    inputs = {
        "bikes": bikes,
        "carphone": carphone,
        # Square: a box filling the image has zero grid step (de-duplicated grid).
        "bikes_square": np.ascontiguousarray(bikes[:, :, 184:456]),
        # Odd sides: half-pixel grid offsets and rounding.
        "carphone_odd": np.ascontiguousarray(carphone[:, :143, :175]),
        # Short side already 256: Scale returns it unchanged, even with fixed_ratio.
        "bikes_256": np.ascontiguousarray(bikes[:, 8:264, 100:500]),
        # Short side 254: MultiScaleCrop(256) snaps its box to 256, past the image (black pad).
        "bikes_254": np.ascontiguousarray(bikes[:, 9:263, 0:380]),
    }

    valid = [{"Scale": {"short_size": 256, "fixed_ratio": False}},
             {"CenterCrop": {"target_size": 224}}]
    train = [{"MultiScaleCrop": {"target_size": 256}},
             {"RandomCrop": {"target_size": 224}},
             {"RandomFlip": {}}]
    k400_train = [{"Scale": {"short_size": 256}}] + train
    k400_valid = [{"Scale": {"short_size": 256}}, {"CenterCrop": {"target_size": 224}}]
    odd = [{"Scale": {"short_size": 256, "fixed_ratio": False, "do_round": True}},
           {"MultiScaleCrop": {"target_size": 224, "scales": [1, .875, .75, .66, .5],
                               "max_distort": 2, "fix_crop": False,
                               "allow_duplication": True, "more_fix_crop": False}},
           {"CenterCrop": {"target_size": 199, "do_round": False}},
           {"RandomFlip": {"p": 0.8}}]
    dup = [{"MultiScaleCrop": {"target_size": 256, "allow_duplication": True,
                               "more_fix_crop": False}},
           {"RandomCrop": {"target_size": 224}}]
    nodup5 = [{"MultiScaleCrop": {"target_size": 224, "more_fix_crop": False}}]
    fixed_round = [{"Scale": {"short_size": 256, "fixed_ratio": True, "do_round": True}},
                   {"CenterCrop": {"target_size": 224}}]

    # (case, input, transforms, seed, forced random.choice indices)
    cases = []
    for name in ["bikes", "carphone", "carphone_odd", "bikes_256"]:
        cases.append((f"valid_{name}", name, valid, 0, []))
        cases.append((f"k400_valid_{name}", name, k400_valid, 0, []))
    for name in ["bikes", "carphone", "bikes_square", "carphone_odd"]:
        for seed in range(3):
            cases.append((f"train_{name}_{seed}", name, train, seed, []))
    # bikes: box 179 wide (scale .66), grid centre x = 2 * 115.25 = 230.5: Pillow rounds to
    # 230 and the right edge 409.5 to 410, a 180-pixel box.
    cases.append(("train_bikes_halfpixel", "bikes", train, 7, [9, 4]))
    cases.append(("train_bikes_254_pad", "bikes_254", train, 1, [0, 2]))
    cases.append(("train_bikes_254_pad_corner", "bikes_254", train, 2, [0, 3]))
    for name in ["bikes", "carphone", "bikes_256"]:
        for seed in range(2):
            cases.append((f"k400_train_{name}_{seed}", name, k400_train, seed, []))
    for name in ["bikes", "carphone_odd"]:
        for seed in range(3):
            cases.append((f"odd_{name}_{seed}", name, odd, seed, []))
    cases.append(("dup_bikes_square_full", "bikes_square", dup, 0, [0, 3]))
    cases.append(("dup_bikes_square", "bikes_square", dup, 1, []))
    cases.append(("nodup5_bikes_square_full", "bikes_square", nodup5, 0, [0, 0]))
    cases.append(("nodup5_carphone", "carphone", nodup5, 3, []))
    for name in ["carphone_odd", "bikes_256"]:
        cases.append((f"fixed_round_{name}", name, fixed_round, 0, []))

    tensors = {f"in_{k}": v for k, v in inputs.items()}
    meta = []
    for case, inp, transforms, seed, forced in cases:
        out, choices, candidates = run_case(inputs[inp], transforms, seed, forced)
        tensors[f"out_{case}"] = np.ascontiguousarray(out)
        meta.append({"name": case, "input": inp,
                     "config": {"transforms": transforms, "mean": MEAN, "std": STD},
                     "choices": choices, "candidates": candidates,
                     "shape": list(out.shape)})
    save_file(tensors, os.path.join(out_dir, "tensors.safetensors"))
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"cases": meta}, f, indent=1)
    print(f"tutorial_transforms: {len(meta)} cases, {len(inputs)} inputs -> {out_dir}")


if __name__ == "__main__":
    main()
