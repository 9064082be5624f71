"""Drawing and writing the frames of a stream: overlays, colour masks, side by side with a legend, mask files,
per-frame class statistics. Used by ``fcnseg.runtime.video.loop``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ...core.atomic import commit_temp, temp_path
from ...core.errors import FcnsegError
from ..postprocess import colorize, legend, overlay, save_mask
from ..preprocess import to_rgb_uint8
from .sinks import Sink

PathLike = Union[str, "os.PathLike[str]"]
VISUALIZE = ("overlay", "mask", "side-by-side")


class FrameRenderer:
    """Draws a frame and its mask: ``overlay``, ``mask`` (colours only) or ``side-by-side`` (frame | colours).

    With ``legend`` a panel on the right names the classes present (the largest first when they do not all
    fit); it has a fixed width, so every frame of a video has the same size.
    """

    def __init__(self, visualize: str = "overlay", *, alpha: float = 0.5, legend: bool = True,
                 classes: Sequence[str] = (), palette: Optional[Sequence[Sequence[int]]] = None) -> None:
        if visualize not in VISUALIZE:
            raise FcnsegError(f"expected visualize to be one of {', '.join(VISUALIZE)}, got {visualize!r}")
        if not 0.0 <= alpha <= 1.0:
            raise FcnsegError(f"expected alpha in [0, 1], got {alpha}")
        self.visualize, self.alpha, self.classes, self.palette = visualize, alpha, list(classes), palette
        self.legend_width = legend_panel_width(self.classes, palette) if legend and self.classes else 0

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        rgb = to_rgb_uint8(image)
        if self.visualize == "overlay":
            panels = [overlay(rgb, mask, self.alpha, self.palette)]
        elif self.visualize == "mask":
            panels = [colorize(mask, self.palette)]
        else:
            panels = [rgb, colorize(mask, self.palette)]
        if self.legend_width:
            panels.append(self._legend(mask, rgb.shape[0]))
        return np.ascontiguousarray(np.concatenate(panels, axis=1))

    def _legend(self, mask: np.ndarray, height: int) -> np.ndarray:
        counts = np.bincount(mask.ravel(), minlength=256)[: len(self.classes)]
        ids = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
        strip = legend(self.classes, self.palette, ids[: max(1, (height - 4) // 16)])
        panel = np.full((height, self.legend_width, 3), 255, dtype=np.uint8)
        h, w = min(height, strip.shape[0]), min(self.legend_width, strip.shape[1])
        panel[:h, :w] = strip[:h, :w]
        return panel


def legend_panel_width(classes: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None) -> int:
    """Width of a legend that lists every class (so the panel never changes size between frames)."""
    return int(legend(classes, palette, range(len(classes))).shape[1])


def class_shares(mask: np.ndarray, classes: Sequence[str]) -> Dict[str, float]:
    """Share of the frame's pixels per class present (names from ``classes``; others as ``class_<id>``)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=256)
    total = max(int(counts.sum()), 1)
    def name(i: int) -> str:
        return str(classes[i]) if i < len(classes) else "void" if i == 255 else f"class_{i}"
    return {name(int(i)): round(int(counts[i]) / total, 6) for i in np.flatnonzero(counts)}


class StreamOutputs:
    """Everything written per frame: the rendered frame to the sink, the mask file, the statistics line."""

    def __init__(self, sink: Optional[Sink], renderer: FrameRenderer, save_masks: Optional[PathLike],
                 stats: Optional[PathLike], mask_format: str) -> None:
        self.sink, self.renderer, self.mask_format = sink, renderer, mask_format
        self.mask_dir = Path(save_masks) if save_masks is not None else None
        self._stats = _JsonLines(stats) if stats is not None else None

    def write(self, index: int, image: np.ndarray, mask: np.ndarray) -> None:
        if self.sink is not None:
            self.sink.write(self.renderer(image, mask), index)
        if self.mask_dir is not None:
            try:
                save_mask(self.mask_dir / f"{index:06d}.{self.mask_format}", mask, palette=self.renderer.palette)
            except OSError as e:
                raise FcnsegError(f"could not write a mask to {str(self.mask_dir)!r} ({e}); try another "
                                  "--save-masks folder") from None
        if self._stats is not None:
            self._stats.write({"frame": index, "shares": class_shares(mask, self.renderer.classes)})

    def close(self) -> None:
        """Close the statistics file (the sink belongs to the caller)."""
        if self._stats is not None:
            self._stats.close()

    def __enter__(self) -> "StreamOutputs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _JsonLines:
    """JSON lines written to a temporary file as they come, renamed to ``path`` when closed."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._tmp = temp_path(self.path)
        self._file = open(self._tmp, "w")

    def write(self, record: Dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            commit_temp(self._tmp, self.path)
