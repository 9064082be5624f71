"""How images meet the network: ``Segmenter``'s ``mode`` and the sliding window's ``tile`` and ``stride``.

One home for the choices and their defaults: the CLI option layer (``cli_args.mode_options``) and the runtime
(``fcnseg.runtime.tiling``) both read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FcnsegError

MODES = ("resize", "slide", "whole")


@dataclass(frozen=True)
class Tiling:
    """The sliding window: square tiles of ``tile`` pixels every ``stride`` pixels (default: a third overlap)."""

    tile: int = 512
    stride: int = 341

    def check(self, min_size: int = 1, max_size: "int | None" = None) -> "Tiling":
        """Refuse a stride that leaves gaps, or a tile outside the model's declared input range."""
        if not 1 <= self.stride <= self.tile:
            raise FcnsegError(f"expected 1 <= --stride <= --tile (tiles that overlap or touch), got tile "
                              f"{self.tile}, stride {self.stride}; try --stride {max(1, self.tile * 2 // 3)}")
        if self.tile < min_size or (max_size is not None and self.tile > max_size):
            fits = min(max(Tiling.tile, min_size), max_size or Tiling.tile)
            raise FcnsegError(f"expected --tile within the model's declared input range {min_size}.."
                              f"{max_size or 'any'}, got {self.tile}; try --tile {fits}")
        return self


def check_mode(mode: str) -> str:
    """One of ``MODES``, or a one-line error."""
    if mode not in MODES:
        raise FcnsegError(f"expected a mode in {', '.join(MODES)}, got {mode!r}; try --mode slide")
    return mode
