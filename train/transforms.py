"""Joint (image, mask) transforms: torchvision's segmentation reference presets (``use_v2=True``, PIL backend).

Train: random resize of the shorter side to 0.5-2.0x ``base_size``, horizontal flip, pad to ``crop_size``
(image 0, mask 255) and random crop. Eval: resize of the shorter side to ``base_size``. Both then give a
normalised 3xHxW float32 image and an HxW int64 mask. Masks are ``tv_tensors.Mask`` inside the pipeline, so
every geometric step resizes them nearest-neighbour and pads them with the void label.

The eval preset resizes PIL images with PIL's bilinear filter and the same size rule as
``fcnseg.runtime.preprocess.preprocess``: what the network sees in evaluation is what the runtime feeds it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..core.errors import FcnsegError
from ..core.classes import IGNORE_INDEX, MEAN, STD

MaskLike = Union[Image.Image, torch.Tensor]


class PadIfSmaller:
    """Pad the right and bottom so both sides are at least ``size`` (the reference's ``v2_extras.PadIfSmaller``).

    Unlike ``RandomCrop(pad_if_needed=True)`` it pads only what is missing, and fills the mask with the
    void label so padding is never scored.

    Args:
        size: the minimum height and width.
        fill: value for padded image pixels.
        mask_fill: value for padded mask pixels.
    """

    def __init__(self, size: int, *, fill: int = 0, mask_fill: int = IGNORE_INDEX) -> None:
        self.size = size
        self.fill = fill
        self.mask_fill = mask_fill

    def __call__(self, image: Any, mask: tv_tensors.Mask) -> tuple[Any, tv_tensors.Mask]:
        height, width = F.get_size(image)
        padding = [0, 0, max(self.size - width, 0), max(self.size - height, 0)]
        if not any(padding):
            return image, mask
        return F.pad(image, padding, fill=self.fill), F.pad(mask, padding, fill=self.mask_fill)


class _Preset:
    """Runs a v2 pipeline on (PIL image, PIL/tensor mask) and returns (float image, HxW int64 mask)."""

    def __init__(self, steps: list, mean: Sequence[float], std: Sequence[float]) -> None:
        steps = steps + [
            v2.PILToTensor(),
            v2.ToDtype(dtype={torch.Tensor: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                       scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
            v2.ToPureTensor(),
        ]
        self.transforms = v2.Compose(steps)

    def __call__(self, image: Image.Image, mask: MaskLike) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(image, Image.Image):
            raise FcnsegError(f"expected a PIL image, got {type(image).__name__}; "
                              "try PairDataset.load_pil or PIL.Image.open(...).convert('RGB')")
        img, target = self.transforms(image, tv_tensors.Mask(mask))
        return img, target.reshape(target.shape[-2:])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transforms!r})"


class SegmentationPresetTrain(_Preset):
    """Training augmentation: random scale, flip, pad and crop, then normalise.

    Args:
        base_size: the shorter side is resized to a random size in ``[0.5, 2.0) * base_size``.
        crop_size: side of the square crop (smaller images are padded first).
        hflip_prob: probability of a horizontal flip.
        mean: per-channel mean of RGB in [0, 1].
        std: per-channel standard deviation.
    """

    def __init__(self, *, base_size: int, crop_size: int, hflip_prob: float = 0.5,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        _check_size("base_size", base_size)
        _check_size("crop_size", crop_size)
        steps: list[Callable] = [v2.RandomResize(min_size=int(0.5 * base_size), max_size=int(2.0 * base_size))]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        steps += [PadIfSmaller(crop_size), v2.RandomCrop(crop_size)]
        super().__init__(steps, mean, std)


class SegmentationPresetEval(_Preset):
    """Evaluation preprocessing: shorter side to ``base_size`` (PIL bilinear; mask nearest), then normalise.

    Args:
        base_size: target length of the shorter side.
        mean: per-channel mean of RGB in [0, 1].
        std: per-channel standard deviation.
    """

    def __init__(self, *, base_size: int, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> None:
        _check_size("base_size", base_size)
        super().__init__([v2.Resize(base_size)], mean, std)


def get_transform(train: bool, *, base_size: int, crop_size: int) -> _Preset:
    """The reference's ``get_transform``: the train preset when ``train`` else the eval preset."""
    if train:
        return SegmentationPresetTrain(base_size=base_size, crop_size=crop_size)
    return SegmentationPresetEval(base_size=base_size)


def cat_list(tensors: Sequence[torch.Tensor], fill_value: int = 0) -> torch.Tensor:
    """Stack tensors of different trailing (H, W) into one batch, padding right and bottom with ``fill_value``."""
    max_size = tuple(max(s) for s in zip(*[t.shape for t in tensors]))
    batched = tensors[0].new_full((len(tensors),) + max_size, fill_value)
    for t, out in zip(tensors, batched):
        out[..., : t.shape[-2], : t.shape[-1]].copy_(t)
    return batched


def collate_fn(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader collate for variable-size samples: images padded with 0, masks with the void label 255."""
    images, targets = zip(*batch)
    return cat_list(images, fill_value=0), cat_list(targets, fill_value=IGNORE_INDEX)


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FcnsegError(f"expected {name} to be a positive integer, got {value!r}")
