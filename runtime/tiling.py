"""Sliding-window inference: a large image in overlapping tiles at its own resolution, as mmsegmentation's
``mode='slide'``, blended with a smooth window so that tile seams do not show.

Tiles start every ``stride`` pixels, the last one flush with the image's edge (mmsegmentation's grid); an image
smaller than a tile is one tile of its own size. Each tile's class scores (or, for a graph ending in ArgMax, its
class votes) are multiplied by a separable raised-cosine window, which is highest in the tile's middle, where the
network saw the most context, and lowest at its border, and summed; the mask is the argmax of the sums.

Memory: only one band of rows is held, ``C x tile x W`` float32 sums beside the image and its mask (246 MiB for
21 classes, 512-pixel tiles and a 6000-pixel-wide image), never a full-resolution score map. Rows are final
once no later band reaches them; the band then moves down by the stride.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Tuple

import numpy as np

from ..core.errors import FcnsegError
from ..core.view import MODES, Tiling, check_mode  # noqa: F401 (re-exported)

WINDOW_FLOOR = 0.05   # a tile's border still counts a little: the image's own border is covered by one tile only


def tile_starts(length: int, tile: int, stride: int) -> List[int]:
    """Where tiles start along one axis of ``length`` pixels: every ``stride``, the last flush with the end."""
    if length <= tile:
        return [0]
    count = (length - tile + stride - 1) // stride + 1
    return [min(i * stride, length - tile) for i in range(count)]


def window(height: int, width: int) -> np.ndarray:
    """A (height, width) float32 raised-cosine weight, 1 in the middle and ``WINDOW_FLOOR`` at the border."""
    def ramp(n: int) -> np.ndarray:
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n)
        return (WINDOW_FLOOR + (1 - WINDOW_FLOOR) * hann).astype(np.float32)
    return np.outer(ramp(height), ramp(width))


def tiles(hw: Tuple[int, int], tiling: Tiling) -> Iterator[Tuple[int, List[int], int, int]]:
    """Bands of tiles: (top row, left columns, tile height, tile width) for each row of tiles."""
    h, w = hw
    th, tw = min(tiling.tile, h), min(tiling.tile, w)
    xs = tile_starts(w, tw, tiling.stride)
    for y in tile_starts(h, th, tiling.stride):
        yield y, xs, th, tw


# One call of the network on a batch of equally sized RGB tiles: (N, C, h, w) scores, or (N, h, w) class ids
# when ``votes`` is True (a graph ending in ArgMax), with C given.
RunTiles = Callable[[List[np.ndarray]], np.ndarray]


def slide(image: np.ndarray, run: RunTiles, num_classes: int, tiling: Tiling = Tiling(), *, batch: int = 8,
          votes: bool = False) -> np.ndarray:
    """The HxW uint8 mask of an HxWx3 uint8 image, segmented tile by tile (see the module docstring).

    Args:
        image: the RGB image at its own resolution.
        run: the network on a list of tiles (see ``RunTiles``).
        num_classes: C.
        tiling: tile size and stride.
        batch: tiles per call.
        votes: ``run`` returns class ids (an in-graph argmax) instead of scores.
    """
    h, w = image.shape[:2]
    band = _Band(num_classes, min(tiling.tile, h), w)
    bands = list(tiles((h, w), tiling))
    mask = np.empty((h, w), np.uint8)
    for i, (y, xs, th, tw) in enumerate(bands):
        weight = window(th, tw)
        for start in range(0, len(xs), batch):
            chunk = xs[start:start + batch]
            out = run([image[y:y + th, x:x + tw] for x in chunk])
            for x, scores in zip(chunk, out):
                band.add(x, _one_hot(scores, num_classes) if votes else scores, weight)
        next_y = bands[i + 1][0] if i + 1 < len(bands) else h
        mask[y:next_y] = band.take(next_y - y)
    return mask


def _one_hot(ids: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.arange(num_classes, dtype=np.uint8)[:, None, None] == ids[None]).astype(np.float32)


class _Band:
    """The weighted sums of the rows some tile of the current band covers (``tile`` rows of the image).

    The sums need no division by the summed weights: a pixel's weight is the same for every class, so it does
    not change the argmax.
    """

    def __init__(self, num_classes: int, rows: int, width: int) -> None:
        self.sums = np.zeros((num_classes, rows, width), np.float32)

    def add(self, x: int, scores: np.ndarray, weight: np.ndarray) -> None:
        th, tw = weight.shape
        if scores.shape[-2:] != (th, tw):
            raise FcnsegError(f"expected the network's scores at the tile's size {th}x{tw}, got "
                              f"{scores.shape[-2]}x{scores.shape[-1]}; try --mode resize for this model")
        self.sums[:, :th, x:x + tw] += scores.astype(np.float32, copy=False) * weight

    def take(self, rows: int) -> np.ndarray:
        """Argmax of the first ``rows`` rows (final now), then move the band down by that many."""
        done = self.sums[:, :rows].argmax(axis=0).astype(np.uint8)
        self.sums[:, :-rows] = self.sums[:, rows:].copy() if rows < self.sums.shape[1] else 0
        self.sums[:, -rows:] = 0
        return done


def tile_count(hw: Tuple[int, int], tiling: Tiling) -> int:
    """How many tiles an image of (H, W) takes (tiles/s in the benchmark)."""
    return sum(len(xs) for _, xs, _, _ in tiles(hw, tiling))
