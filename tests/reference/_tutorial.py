"""Shared helpers for the reference scripts: importing the tutorial's pipeline from the shared
spec folder (never copied into this repository) and making test media with the ffmpeg CLI."""

import os
import subprocess
import sys

SHARED = os.environ.get("TSM_SHARED_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "..", "shared")


def tutorial():
    """The tutorial's pipeline module, `seed_pipeline`, imported from ../shared/spec."""
    sys.path.insert(0, os.path.join(SHARED, "spec"))
    import seed_pipeline
    return seed_pipeline


def media(name):
    return os.path.join(SHARED, "media", name)


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-y", "-hide_banner", "-loglevel", "error", *args], check=True)


def make_test_videos(out_dir):
    """UCF101-like and odd videos made from the shared media and FFmpeg's test sources.
    Returns {name: path}. The Rust tests read these same files from the reference folder."""
    os.makedirs(out_dir, exist_ok=True)
    made = {}

    def mk(name, *args):
        path = os.path.join(out_dir, name)
        ffmpeg(*args, path)
        made[name] = path

    # UCF101-like: 320x240, 25 fps, xvid in .avi, ffmpeg's mpeg4 default GOP (12).
    mk("ucf_bikes.avi", "-i", media("bikes.mp4"), "-t", "7", "-vf", "scale=320:240",
       "-r", "25", "-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "4", "-an")
    mk("ucf_testsrc.avi", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4.36",
       "-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "4")
    # H.264 with B-frames and a long GOP, audio track included (must be ignored).
    mk("h264_bframes.mp4", "-f", "lavfi", "-i", "testsrc2=size=256x192:rate=30", "-f", "lavfi",
       "-i", "sine=frequency=440", "-t", "5", "-c:v", "libx264", "-g", "48", "-bf", "3",
       "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")
    # Fewer frames than segments: the sampler wraps around.
    mk("short5.avi", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-frames:v", "5",
       "-c:v", "mpeg4", "-vtag", "xvid")
    return made
