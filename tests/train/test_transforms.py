from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.runtime.preprocess import preprocess, resized_hw
from fcnseg.core.classes import MEAN, STD
from fcnseg.train.transforms import (SegmentationPresetEval, SegmentationPresetTrain, cat_list, collate_fn,
                                     get_transform)


def _blocky_pair(h: int, w: int, values=(0, 3, 7, 255), seed: int = 0):
    """A mask of 4x4 blocks drawn from ``values`` and an image whose colour encodes the class."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(values, size=(-(-h // 4), -(-w // 4))).astype(np.uint8)
    mask = np.kron(blocks, np.ones((4, 4), np.uint8))[:h, :w]
    image = np.stack([mask, 255 - mask, mask * 37], axis=-1).astype(np.uint8)
    return Image.fromarray(image), Image.fromarray(mask)


def _halves(h: int, w: int):
    """Left half class 1 (red), right half class 2 (green)."""
    mask = np.ones((h, w), np.uint8)
    mask[:, w // 2:] = 2
    image = np.zeros((h, w, 3), np.uint8)
    image[mask == 1] = (255, 0, 0)
    image[mask == 2] = (0, 255, 0)
    return Image.fromarray(image), Image.fromarray(mask)


def test_train_output_is_crop_sized_and_pads_small_images_with_void():
    torch.manual_seed(0)
    image, mask = _blocky_pair(30, 41, values=(0, 3, 7))
    # base 20 -> shorter side in [10, 40), longer side < 55: always smaller than the 64 crop.
    img, target = SegmentationPresetTrain(base_size=20, crop_size=64)(image, mask)
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert target.shape == (64, 64) and target.dtype == torch.int64
    assert type(img) is torch.Tensor and type(target) is torch.Tensor
    # Padding goes right and bottom: void in the mask, zero (before normalisation) in the image.
    assert (target[-1] == 255).all() and (target[:, -1] == 255).all()
    zero = (-torch.tensor(MEAN) / torch.tensor(STD))
    assert torch.allclose(img[:, -1, -1], zero, atol=1e-6)
    assert (target[0, 0] != 255).item()


def test_train_crop_of_large_image_has_exact_size():
    torch.manual_seed(1)
    image, mask = _blocky_pair(90, 70)
    img, target = SegmentationPresetTrain(base_size=80, crop_size=48)(image, mask)
    assert img.shape == (3, 48, 48) and target.shape == (48, 48)


@pytest.mark.parametrize("train", [True, False])
def test_mask_values_are_never_interpolated(train):
    torch.manual_seed(2)
    image, mask = _blocky_pair(37, 53)
    original = set(np.unique(np.asarray(mask)).tolist())
    transform = get_transform(train, base_size=45, crop_size=40)
    for _ in range(5):
        _, target = transform(image, mask)
        assert set(torch.unique(target).tolist()) <= original


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_flip_moves_image_and_mask_together(flip):
    torch.manual_seed(3)
    image, mask = _halves(40, 60)
    # Crop larger than any resized image: no random crop, only the flip decides the layout.
    img, target = SegmentationPresetTrain(base_size=20, crop_size=64, hflip_prob=flip)(image, mask)
    left, right = (2, 1) if flip else (1, 2)
    assert target[0, 0].item() == left
    last_col = int((target[0] != 255).nonzero().max())
    assert target[0, last_col].item() == right
    red = img[0] > img[1]
    inside = (target == 1) | (target == 2)
    # Away from the seam (where bilinear mixes colours) red pixels are exactly the class-1 pixels.
    seam = torch.zeros_like(inside)
    col = int((target[0] == right).nonzero().min()) if flip == 0 else int((target[0] == left).nonzero().max())
    seam[:, max(col - 2, 0):col + 3] = True
    keep = inside & ~seam
    assert torch.equal(red[keep], (target == 1)[keep])


@pytest.mark.parametrize("base_size", [24, 50])
def test_eval_transform_matches_runtime_preprocess(base_size):
    rng = np.random.default_rng(4)
    array = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    mask = Image.fromarray(rng.choice([0, 5, 255], size=(37, 53)).astype(np.uint8))
    img, target = SegmentationPresetEval(base_size=base_size)(Image.fromarray(array), mask)
    expected = preprocess(array, size=base_size, mean=MEAN, std=STD)[0]
    assert img.shape == expected.shape == (3, *resized_hw(37, 53, base_size))
    assert np.abs(img.numpy() - expected).max() < 1e-5
    assert target.shape == img.shape[1:]


def test_eval_keeps_size_when_shorter_side_matches():
    image, mask = _blocky_pair(33, 47)
    img, target = SegmentationPresetEval(base_size=33)(image, mask)
    assert img.shape == (3, 33, 47)
    assert np.array_equal(target.numpy(), np.asarray(mask))


def test_collate_pads_images_with_zero_and_masks_with_void():
    a = (torch.ones(3, 4, 5), torch.full((4, 5), 2, dtype=torch.int64))
    b = (torch.full((3, 6, 3), 2.0), torch.full((6, 3), 7, dtype=torch.int64))
    images, targets = collate_fn([a, b])
    assert images.shape == (2, 3, 6, 5) and targets.shape == (2, 6, 5)
    assert (images[0, :, 4:] == 0).all() and (images[1, :, :, 3:] == 0).all()
    assert (targets[0, 4:] == 255).all() and (targets[1, :, 3:] == 255).all()
    assert (targets[0, :4, :5] == 2).all() and (targets[1, :6, :3] == 7).all()
    assert cat_list([torch.zeros(2, 2)]).shape == (1, 2, 2)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(FcnsegError, match="crop_size"):
        SegmentationPresetTrain(base_size=10, crop_size=0)
    with pytest.raises(FcnsegError, match="PIL image"):
        SegmentationPresetEval(base_size=10)(np.zeros((4, 4, 3), np.uint8), Image.new("L", (4, 4)))
