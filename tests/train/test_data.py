from __future__ import annotations

import numpy as np
import pytest

from fcnseg.core.data_source import DataSource
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fcnseg.core.errors import FcnsegError
from fcnseg.train.data import VOCSegmentationDataset, collate_fn, get_dataset
from fcnseg.datasets.synth import synthesize


@pytest.fixture()
def voc(tmp_path):
    synthesize(tmp_path, num_train=3, num_val=3, size=64, seed=5, progress=False)
    return tmp_path


def _read(path):
    with Image.open(path) as image:
        image.load()
        return image


def _base(root):
    return root / "VOCdevkit" / "VOC2012"


def test_dataset_reads_the_split_without_transforms(voc):
    ds = VOCSegmentationDataset(voc, "val")
    assert len(ds) == 3 and ds.ids == (_base(voc) / "ImageSets/Segmentation/val.txt").read_text().split()
    image, mask = ds[0]
    assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size
    png = np.asarray(_read(_base(voc) / "SegmentationClass" / f"{ds.ids[0]}.png"))
    assert np.array_equal(np.asarray(mask), png)
    assert ds[-1][0].size == ds[2][0].size
    with pytest.raises(IndexError):
        ds[3]


def test_get_dataset_attaches_the_presets(voc):
    torch.manual_seed(0)
    train, num_classes = get_dataset(voc, "train", train=True, base_size=64, crop_size=48)
    assert num_classes == 21
    img, target = train[1]
    assert img.shape == (3, 48, 48) and target.shape == (48, 48) and target.dtype == torch.int64
    val, _ = get_dataset(voc, "val", train=False, base_size=40, crop_size=48)
    img, target = val[0]
    assert min(img.shape[1:]) == 40 and target.shape == img.shape[1:]
    assert set(torch.unique(target).tolist()) <= set(range(21)) | {255}


def test_eval_loader_batches_variable_sizes(voc):
    val, _ = get_dataset(voc, "val", train=False, base_size=40, crop_size=48)
    images, targets = next(iter(DataLoader(val, batch_size=3, collate_fn=collate_fn)))
    sizes = [val[i][0].shape[1:] for i in range(3)]
    assert images.shape == (3, 3, max(s[0] for s in sizes), max(s[1] for s in sizes))
    assert targets.shape == (3, *images.shape[2:])


def test_missing_layout_names_the_folder(tmp_path):
    with pytest.raises(FcnsegError, match=str(tmp_path / "nowhere")):
        VOCSegmentationDataset(tmp_path / "nowhere", "train")


def test_missing_split_list_is_a_clear_error(voc):
    with pytest.raises(FcnsegError, match="test.txt"):
        VOCSegmentationDataset(voc, "test")


def test_missing_listed_image_names_the_file(voc):
    ds = VOCSegmentationDataset(voc, "train")
    path = _base(voc) / "JPEGImages" / f"{ds.ids[1]}.jpg"
    path.unlink()
    ds[0]
    with pytest.raises(FcnsegError, match=str(path)):
        ds[1]


def test_label_value_out_of_range_names_the_file(voc):
    ds = VOCSegmentationDataset(voc, "train")
    path = _base(voc) / "SegmentationClass" / f"{ds.ids[0]}.png"
    label = _read(path)
    arr = np.asarray(label).copy()
    arr[0, 0] = 37
    bad = Image.fromarray(arr)
    bad.putpalette(label.getpalette())
    bad.save(path)
    with pytest.raises(FcnsegError, match=rf"37.*{path.name}"):
        ds[0]


def test_rgb_label_names_the_file(voc):
    ds = VOCSegmentationDataset(voc, "val")
    path = _base(voc) / "SegmentationClass" / f"{ds.ids[2]}.png"
    _read(path).convert("RGB").save(path)
    with pytest.raises(FcnsegError, match=rf"'RGB'.*{path.name}"):
        ds[2]


def test_num_classes_is_checked_against_the_class_map(voc):
    with pytest.raises(FcnsegError, match="expected --num-classes to match the dataset's 21 classes .*got 2"):
        VOCSegmentationDataset(voc, "val", num_classes=2)


def test_labels_are_checked_against_a_class_file(voc, tmp_path):
    names = tmp_path / "two.txt"
    names.write_text("background\naeroplane\n")
    ds = VOCSegmentationDataset(DataSource(str(voc), classes=str(names)), "val", num_classes=2)
    labels = [set(np.unique(np.asarray(_read(ds.layout.mask_path(i)))).tolist()) for i in range(len(ds))]
    bad = next(i for i, values in enumerate(labels) if values - {0, 1, 255})
    with pytest.raises(FcnsegError, match="expected label values in 0..1"):
        ds[bad]
