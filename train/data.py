"""The training Dataset: ``fcnseg.datasets.voc.VOCLayout`` (paths, label checks) wrapped for torch."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

from PIL import Image
from torch.utils.data import Dataset

from ..core.classes import NUM_CLASSES
from ..datasets.voc import VOCLayout
from .transforms import collate_fn, get_transform

__all__ = ["VOCSegmentationDataset", "get_dataset", "collate_fn"]

PathLike = Union[str, "os.PathLike[str]"]
PairTransform = Callable[[Image.Image, Image.Image], tuple]


class VOCSegmentationDataset(Dataset):
    """One split of a VOC-style dataset as (image, mask) samples.

    Args:
        root: the folder that holds ``VOCdevkit/`` (or ``VOCdevkit/VOC2012`` itself).
        split: a list under ``ImageSets/Segmentation`` (``train``, ``val``, ``trainval``).
        transforms: called as ``transforms(image, mask)`` on the RGB PIL image and "L" PIL mask;
            without it the PIL pair is returned.
        num_classes: labels must be in ``0..num_classes-1`` or 255.
        use_aug: use the SBD-augmented train list when present.

    Raises:
        FcnsegError: when the layout or split list is missing; when loading a sample whose file is missing or
            whose label PNG is not a palette/"L" image with valid values.
    """

    def __init__(self, root: PathLike, split: str = "train", *, transforms: Optional[PairTransform] = None,
                 num_classes: int = NUM_CLASSES, use_aug: bool = True) -> None:
        self.layout = VOCLayout(root, split, num_classes=num_classes, use_aug=use_aug)
        self.transforms = transforms
        self.num_classes = num_classes

    @property
    def ids(self) -> list:
        return self.layout.ids

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, index: int) -> tuple:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        image, mask = self.layout.load_pil(index % len(self))
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask


def get_dataset(root: PathLike, split: str, *, train: bool, base_size: int, crop_size: int,
                num_classes: int = NUM_CLASSES) -> tuple[VOCSegmentationDataset, int]:
    """The reference's ``get_dataset``: a split with the train or eval preset attached.

    Args:
        root: the folder that holds ``VOCdevkit/``.
        split: the list name (``train``, ``val``, ...).
        train: attach the training augmentation (else the eval preprocessing).
        base_size: shorter-side size of the presets.
        crop_size: training crop size.
        num_classes: number of classes, checked against the labels.

    Returns:
        ``(dataset, num_classes)``, as the reference returns.
    """
    transform = get_transform(train, base_size=base_size, crop_size=crop_size)
    return VOCSegmentationDataset(root, split, transforms=transform, num_classes=num_classes), num_classes
