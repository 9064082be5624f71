"""The kinds of file the runtime writes (masks and overlays), for the output guard: a PNG carrying fcnseg's
"Software" text chunk, or a uint8 HxW ``.npy`` mask, may be replaced; anything else only with ``--force``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.output_guard import SOFTWARE, ArtifactKind


def _is_fcnseg_png(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get("Software") == SOFTWARE
    except Exception:
        return False


def _is_mask_npy(path: Path) -> bool:
    try:
        a = np.load(str(path), allow_pickle=False, mmap_mode="r")
        return a.ndim == 2 and a.dtype == np.uint8
    except Exception:
        return False


MASK = ArtifactKind("fcnseg mask", lambda p: _is_mask_npy(p) if p.suffix.lower() == ".npy" else _is_fcnseg_png(p))
OVERLAY = ArtifactKind("fcnseg overlay", _is_fcnseg_png)
