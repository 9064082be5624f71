#!/usr/bin/env python3
"""Segment a camera or a video with the engine ``build_engine.sh`` built, through fcnseg's stream API.

    python3 run.py /dev/video0 out.mp4                 # USB camera -> video file with overlays
    python3 run.py csi://0 http://0.0.0.0:8080         # CSI camera -> MJPEG preview in a browser
    python3 run.py clip.mp4 out.mp4 --visualize mask   # video file -> colour masks
    python3 run.py clip.mp4 out.mp4 --engine fcn_int8.plan --alpha 0.6

Needs the runtime wheel from ``wheels/`` plus TensorRT's Python bindings and cuda-python or pycuda
(see README.md), and PyAV (``pip3 install av``) for video files and cameras. Written by
``fcn-export bundle``; runs on Python 3.8 and later.
"""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="camera (/dev/video0, csi://0), video file, rtsp:// or udp:// stream")
    p.add_argument("sink", help="video file (out.mp4), image folder, udp://HOST:PORT or http://HOST:PORT (MJPEG)")
    p.add_argument("--engine", default=str(HERE / "fcn_@DEFAULT_PRECISION@.plan"),
                   help="TensorRT engine from build_engine.sh (default: %(default)s)")
    p.add_argument("--visualize", help="overlay, mask or side-by-side (default: the stream API's)")
    p.add_argument("--alpha", type=float, help="overlay opacity in [0, 1] (default: the stream API's)")
    p.add_argument("--size", type=int, help="shorter side at inference (default: the model's)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (default: the whole source)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from fcnseg.runtime import FcnsegError, Segmenter
    from fcnseg.runtime.video import segment_stream

    given = (("visualize", args.visualize), ("alpha", args.alpha), ("max_frames", args.max_frames))
    options = {k: v for k, v in given if v is not None}
    try:
        with Segmenter.load(args.engine, size=args.size) as seg:
            stats = segment_stream(seg, args.source, args.sink, **options)
    except FcnsegError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
