"""A torch-free reader of the PASCAL VOC 2012 segmentation layout.

``ROOT/VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/<split>.txt}``
(torchvision's convention for ``--data-path ROOT``). The SBD-augmented list is used for ``train`` when
``ImageSets/Segmentation/train_aug.txt`` and ``SegmentationClassAug/`` are present. Training wraps this in a
torch Dataset; evaluation, INT8 calibration and the benchmarks read it directly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..core.errors import FcnsegError
from ..core.classes import IGNORE_INDEX, NUM_CLASSES
from ..runtime import open_image


class VOCLayout:
    """Paths and sample loading for one split of a VOC-style dataset.

    Args:
        root: the folder that contains ``VOCdevkit/`` (or ``VOCdevkit/VOC2012`` itself).
        split: a list name under ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).
        num_classes: labels must be in ``0..num_classes-1`` or 255.
        use_aug: use the SBD-augmented train list when present.
    """

    def __init__(self, root: Union[str, Path], split: str = "train", *, num_classes: int = NUM_CLASSES,
                 use_aug: bool = True) -> None:
        self.base = _find_base(Path(root))
        self.split = split
        self.num_classes = num_classes
        aug_list = self.base / "ImageSets/Segmentation/train_aug.txt"
        if split == "train" and use_aug and aug_list.is_file() and (self.base / "SegmentationClassAug").is_dir():
            list_file, self.mask_dir = aug_list, self.base / "SegmentationClassAug"
        else:
            list_file, self.mask_dir = self.base / f"ImageSets/Segmentation/{split}.txt", self.base / "SegmentationClass"
        if not list_file.is_file():
            raise FcnsegError(f"expected the split list {list_file}, which does not exist; "
                              f"try one of the splits {_available_splits(self.base)} (the command's split "
                              "option: --split, --val-split, --calib-split or --eval-split) or check --data-path")
        self.ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
        if not self.ids:
            raise FcnsegError(f"expected image ids in {list_file}, got an empty list")
        self.image_dir = self.base / "JPEGImages"

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, ids: Sequence[str]) -> "VOCLayout":
        """The same split restricted to ``ids`` (each one of its own), as a new layout; this one is unchanged."""
        unknown = sorted(set(ids) - set(self.ids))
        if unknown:
            raise FcnsegError(f"expected image ids of split {self.split!r}, got {len(unknown)} others "
                              f"({', '.join(unknown[:3])}); try ids read from its list file")
        part = copy.copy(self)
        part.ids = list(ids)
        return part

    def image_path(self, i: int) -> Path:
        return self.image_dir / f"{self.ids[i]}.jpg"

    def mask_path(self, i: int) -> Path:
        return self.mask_dir / f"{self.ids[i]}.png"

    def load_pil(self, i: int) -> tuple[Image.Image, Image.Image]:
        """The i-th sample as (RGB image, "L" mask) PIL images, with the mask's values checked."""
        img = _open(self.image_path(i)).convert("RGB")
        mask, arr = self._label(i)
        self._check_sizes(i, img.size, mask.size)
        return img, Image.fromarray(arr, mode="L") if mask.mode == "P" else mask

    def check_pair(self, i: int) -> None:
        """Check the i-th pair without decoding the image: both files readable, label mode, values and sizes.

        Fast enough to scan a whole split before training (the image's header gives its size).

        Raises:
            FcnsegError: the first problem found, naming the file.
        """
        path = self.image_path(i)
        try:
            with Image.open(path) as img:
                size = img.size
        except FileNotFoundError:
            raise FcnsegError(f"expected the file {path}, which does not exist (listed in the split file)") from None
        except OSError as e:
            raise FcnsegError(f"could not read {path}: {e}; expected a valid JPEG/PNG") from None
        mask, _ = self._label(i)
        self._check_sizes(i, size, mask.size)

    def _label(self, i: int) -> tuple[Image.Image, np.ndarray]:
        mask = _open(self.mask_path(i))
        if mask.mode not in ("P", "L"):
            raise FcnsegError(f"expected a palette ('P') or 'L' label PNG, got mode {mask.mode!r} in "
                              f"{self.mask_path(i)}; VOC labels store class ids, not colours")
        arr = np.asarray(mask)
        self._check_values(arr, self.mask_path(i))
        return mask, arr

    def _check_sizes(self, i: int, image_size: tuple, mask_size: tuple) -> None:
        if image_size != mask_size:
            raise FcnsegError(f"expected image and label of the same size, got {image_size} and {mask_size} "
                              f"for {self.ids[i]}")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The i-th sample as (HxWx3 uint8 image, HxW uint8 mask)."""
        img, mask = self.load_pil(i)
        return np.asarray(img), np.asarray(mask)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self.load(i)

    def _check_values(self, arr: np.ndarray, path: Path) -> None:
        # bincount of uint8 labels: one pass, no sort (np.unique sorts every pixel)
        values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if arr.dtype == np.uint8 else np.unique(arr)
        bad = values[(values >= self.num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            raise FcnsegError(f"expected label values in 0..{self.num_classes - 1} or {IGNORE_INDEX}, got "
                              f"{bad[:5].tolist()} in {path}")


def _find_base(root: Path) -> Path:
    for base in (root / "VOCdevkit" / "VOC2012", root):
        if (base / "ImageSets" / "Segmentation").is_dir() and (base / "JPEGImages").is_dir():
            return base
    raise FcnsegError(f"expected a VOC layout ROOT/VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,"
                      f"ImageSets/Segmentation}} under {root}, got none; try `fcn-data synth {root}` "
                      "to write a synthetic dataset, or point --data-path at the folder holding VOCdevkit/")


def _available_splits(base: Path) -> list:
    return sorted(p.stem for p in (base / "ImageSets" / "Segmentation").glob("*.txt"))


def _open(path: Path) -> Image.Image:
    """The project's one image reader, on the stored pixels (labels are drawn on them: no EXIF rotation)."""
    if not path.is_file():
        raise FcnsegError(f"expected the file {path}, which does not exist (listed in the split file)")
    return open_image(path, exif=False)


def take(layout: VOCLayout, limit: Optional[int] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The first ``limit`` samples of a layout (all when None)."""
    n = len(layout) if limit is None else min(limit, len(layout))
    for i in range(n):
        yield layout.load(i)
