"""The training Dataset: a split of any layout ``fcnseg.datasets.open_dataset`` reads, wrapped for torch."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

from PIL import Image
from torch.utils.data import Dataset

from ..core.errors import FcnsegError
from ..core.data_source import SourceLike
from ..datasets import PairDataset, open_dataset
from .transforms import collate_fn, get_transform

__all__ = ["SegmentationDataset", "VOCSegmentationDataset", "get_dataset", "collate_fn"]

PathLike = Union[str, "os.PathLike[str]"]
PairTransform = Callable[[Image.Image, Image.Image], tuple]


class SegmentationDataset(Dataset):
    """One split of a dataset (any layout ``open_dataset`` reads) as (image, mask) samples.

    Args:
        root: the dataset folder, or a ``DataSource`` (folder, layout, class file).
        split: the split (``train``, ``val``, ...).
        transforms: called as ``transforms(image, mask)`` on the RGB PIL image and "L" PIL mask of class ids;
            without it the PIL pair is returned.
        num_classes: when given, the dataset's class map must have this many classes.
        use_aug: VOC: use the SBD-augmented train list when present.

    Raises:
        FcnsegError: when the layout or split is missing, the class count differs; when loading a sample whose
            file is missing or whose label holds values outside the class map.
    """

    def __init__(self, root: SourceLike, split: str = "train", *, transforms: Optional[PairTransform] = None,
                 num_classes: Optional[int] = None, use_aug: bool = True) -> None:
        self.layout: PairDataset = open_dataset(root, split, use_aug=use_aug)
        if num_classes is not None and num_classes != self.layout.num_classes:
            raise FcnsegError(f"expected --num-classes to match the dataset's {self.layout.num_classes} classes "
                              f"(from {self.layout.class_map.source or self.layout.layout}), got {num_classes}; "
                              "leave --num-classes out, or give the classes with --classes FILE")
        self.transforms = transforms
        self.num_classes = self.layout.num_classes
        self.class_map = self.layout.class_map

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


VOCSegmentationDataset = SegmentationDataset   # the name torchvision's reference readers know


def get_dataset(root: SourceLike, split: str, *, train: bool, base_size: int, crop_size: int,
                num_classes: Optional[int] = None) -> tuple[SegmentationDataset, int]:
    """The reference's ``get_dataset``: a split with the train or eval preset attached.

    Args:
        root: the dataset folder or ``DataSource``.
        split: the split name (``train``, ``val``, ...).
        train: attach the training augmentation (else the eval preprocessing).
        base_size: shorter-side size of the presets.
        crop_size: training crop size.
        num_classes: when given, checked against the dataset's class map.

    Returns:
        ``(dataset, num_classes)``, as the reference returns.
    """
    transform = get_transform(train, base_size=base_size, crop_size=crop_size)
    dataset = SegmentationDataset(root, split, transforms=transform, num_classes=num_classes)
    return dataset, dataset.num_classes
