"""Image preprocessing and mask postprocessing shared by the runtime, evaluation and INT8 calibration.

The rule is torchvision's segmentation eval preset: resize so the shorter side equals ``size``
(bilinear, PIL), scale to [0, 1], normalise with mean/std, NCHW float32. Masks go back to the
original size with nearest-neighbour resizing.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..core.errors import FcnsegError
from ..core.classes import MEAN, STD


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image array to HxWx3 uint8 RGB.

    Rules: HxW or HxWx1 grayscale is repeated to three channels; HxWx4 RGBA drops alpha;
    uint16 is scaled by 255/65535; float arrays are taken as [0, 1] and scaled by 255;
    anything else is an error.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise FcnsegError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {a.shape}; "
                          "try passing one image (or a list of images) in HWC layout")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise FcnsegError(f"expected a non-empty image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        return _float_to_uint8(a)
    raise FcnsegError(f"expected a uint8, uint16 or float image, got dtype {a.dtype}; try converting it to uint8 RGB")


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8; NaN/inf refused; values up to 255 taken as 0..255 with a warning."""
    if not np.isfinite(a).all():
        raise FcnsegError(f"expected a float image with finite values in [0, 1], got {int((~np.isfinite(a)).sum())} "
                          "NaN/inf pixels; try np.nan_to_num(image) or a uint8 image")
    low, high = float(a.min()), float(a.max())
    if low < 0.0 or high > 255.0:
        raise FcnsegError(f"expected a float image in [0, 1] (or 0..255), got values in [{low:g}, {high:g}]; "
                          "try scaling it to [0, 1] or converting it to uint8")
    if high > 1.0:
        warnings.warn(f"float image with values up to {high:g}: taken as 0..255, not [0, 1]", stacklevel=4)
        return (a + 0.5).astype(np.uint8)
    return (a * 255.0 + 0.5).astype(np.uint8)


def resized_hw(height: int, width: int, size: Optional[int]) -> tuple[int, int]:
    """Return the (h, w) after resizing the shorter side to ``size`` (unchanged when ``size`` is None)."""
    if size is None:
        return height, width
    if height <= width:
        return size, max(1, int(size * width / height))
    return max(1, int(size * height / width)), size


def resize_image(image: np.ndarray, size: Optional[int]) -> np.ndarray:
    """Resize an HxWx3 uint8 image so its shorter side is ``size`` (bilinear, as torchvision's Resize on PIL)."""
    h, w = image.shape[:2]
    nh, nw = resized_hw(h, w, size)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def normalize(image: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32, scaled to [0, 1] then normalised."""
    x = image.astype(np.float32) / 255.0
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: np.ndarray, *, size: Optional[int] = None,
               mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
               hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One image (any layout ``to_rgb_uint8`` accepts) -> a 1x3xhxw float32 network input.

    ``hw`` (a static graph's input) resizes to exactly (H, W) instead, aspect ratio not kept.
    """
    return normalize(resize_rgb(image, size=size, hw=hw), mean, std)[None]


def resize_rgb(image: np.ndarray, *, size: Optional[int] = None,
               hw: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """``preprocess`` without the normalisation: the resized HxWx3 uint8 RGB image (for graphs that normalise)."""
    rgb = to_rgb_uint8(image)
    if hw is not None and tuple(rgb.shape[:2]) != tuple(hw):
        return np.asarray(Image.fromarray(rgb).resize((int(hw[1]), int(hw[0])), Image.BILINEAR))
    return resize_image(rgb, size) if hw is None else rgb


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an HxW uint8 class mask to (height, width)."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A PIL image as an array ``Segmenter`` accepts, by one rule for files and in-memory images alike.

    RGB, RGBA and L stay as they are, 16-bit grayscale stays uint16, float ("F") stays float32 (see
    ``to_rgb_uint8``); palette, CMYK, YCbCr, 1-bit and the other modes become RGB(A): their raw arrays are
    palette indices or other channels, which would give silently wrong masks.
    """
    if img.mode in ("RGB", "RGBA", "L"):
        return np.asarray(img)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I"):  # 16-bit grayscale (read as "I;16" or 32-bit "I"): keep the depth
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    alpha = "A" in img.getbands() or "transparency" in img.info
    return np.asarray(img.convert("RGBA" if alpha else "RGB"))
