"""The pipeline's video step: a short synthetic video from val images, segmented side by side by the INT8
model through ``fcnseg.runtime.video.loop.segment_stream``; the first frames as PNG and the FPS go into the report.
"""

from __future__ import annotations

from typing import Any

from .report import need
from ..runtime import Segmenter, save_image
from ..runtime.video import read_video, segment_stream, write_video
from ..datasets import open_dataset

VIDEO_FRAMES = 24        # val images made into the input video (cycled when there are fewer)
VIDEO_FPS = 8.0
PNG_FRAMES = 2           # first output frames saved as PNG for the report


def video_section(cfg: Any, art: Any, report: Any) -> None:
    """Write ``video_in.mp4``, segment it into ``video_out.mp4`` (side by side), save frames and FPS."""
    key, model = art.showcase_model()
    layout = open_dataset(need(art.data, "a dataset"), "val")
    n = len(need(layout.ids, "val images"))
    frames = [layout.load(i % n)[0] for i in range(VIDEO_FRAMES)]
    src, dst = write_video(frames, cfg.out / "video_in.mp4", fps=VIDEO_FPS), cfg.out / "video_out.mp4"
    with Segmenter.load(model) as seg:
        stats = segment_stream(seg, src, dst, visualize="side-by-side")
    images = []
    for i, frame in enumerate(read_video(dst, max_frames=PNG_FRAMES)):
        path = cfg.out / f"video_frame_{i}.png"
        save_image(path, frame)
        images.append((f"video frame {i}", path.name))
    report.add("video", {"model": key, "input": src.name, "output": dst.name, "frames": stats.frames,
                         "fps": stats.fps, "stage_ms": stats.stage_ms},
               [("video (side by side, INT8 model)", stats.summary())], images)
