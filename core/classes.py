"""PASCAL VOC constants: class names, palette and the normalisation every stage shares.

One place for each default: training, export metadata and the runtime read these.
"""

from __future__ import annotations

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)
IGNORE_INDEX = 255
# ImageNet statistics, as torchvision's segmentation reference uses, applied to RGB in [0, 1].
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
BASE_SIZE = 520
CROP_SIZE = 480


def voc_palette(n: int = 256) -> np.ndarray:
    """Return the standard VOC colour map as an (n, 3) uint8 array (bit-interleaved, as VOC's devkit)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette
