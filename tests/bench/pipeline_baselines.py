"""Baselines for `cargo xtask bench pipeline`, one method per process so peak RSS is its own.

    python pipeline_baselines.py METHOD MODE LIST

METHOD: ffmpeg (CLI decoding every frame of all files in one process, one thread), tutorial (the tutorial's Compose:
OpenCV decodes every frame, PIL transforms), decord (decord get_batch of the sampled indices,
then the tutorial's transforms). MODE: valid or train. LIST: `path label` lines.
Prints one JSON line: clips, seconds, peak_rss_mb."""

import json
import os
import random
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from _tutorial import tutorial  # noqa: E402

method, mode, list_path = sys.argv[1:4]
files = [line.rsplit(maxsplit=1)[0] for line in open(list_path) if line.strip()]
S = tutorial()
random.seed(0)
train = mode == "train"


def transforms():
    pipes = S.Compose(train_mode=train).pipelines
    return pipes[2:]  # after VideoDecoder and Sampler


def run_tutorial(path):
    return S.Compose(train_mode=train)(dict(filename=path))["imgs"]


def run_decord(path, _tf=transforms()):
    import decord
    from PIL import Image
    vr = decord.VideoReader(path, num_threads=1)
    n = len(vr)
    picked = []
    orig = S.Sampler._get
    S.Sampler._get = lambda self, idx, res: picked.extend(idx) or res
    try:
        S.Sampler(num_seg=8, seg_len=1, valid_mode=not train)(
            dict(format="video", frames_len=n, frames=None))
    finally:
        S.Sampler._get = orig
    frames = vr.get_batch(picked).asnumpy()
    data = dict(imgs=[Image.fromarray(f, mode="RGB") for f in frames])
    for t in _tf:
        data = t(data)
    return data["imgs"]


def run_ffmpeg(paths):
    """Every frame of every file decoded by one ffmpeg process (the concat demuxer), so that
    process start-up is not counted against the floor."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as lst:
        lst.writelines(f"file '{os.path.abspath(p)}'\n" for p in paths)
        lst.flush()
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-threads", "1", "-f",
                        "concat", "-safe", "0", "-i", lst.name, "-f", "null", "-"], check=True)


if method == "ffmpeg":
    start = time.perf_counter()
    run_ffmpeg(files)
else:
    run = dict(tutorial=run_tutorial, decord=run_decord)[method]
    run(files[0])  # warm-up: imports, codec init
    start = time.perf_counter()
    for f in files:
        run(f)
seconds = time.perf_counter() - start
rss_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
             resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps(dict(clips=len(files), seconds=seconds, peak_rss_mb=rss_kb / 1024)))
