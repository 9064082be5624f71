"""Every image/label pair of both splits is checked before the first epoch, in one line naming the first problem."""

import numpy as np
import pytest
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.datasets import open_dataset as VOCLayout
from fcnseg.train.config import TrainConfig
from fcnseg.datasets.check import scan_splits
from fcnseg.train.engine import train
from fcnseg.datasets.synth import synthesize


@pytest.fixture
def voc(tmp_path):
    return synthesize(tmp_path / "voc", num_train=4, num_val=3, size=48, seed=4, progress=False)


def _ids(root, split):
    return (root / "VOCdevkit/VOC2012/ImageSets/Segmentation" / f"{split}.txt").read_text().split()


def test_an_rgb_val_label_is_found_before_the_first_epoch(voc, tmp_path):
    base = voc / "VOCdevkit/VOC2012"
    last = _ids(voc, "val")[-1]
    with Image.open(base / "SegmentationClass" / f"{last}.png") as label:
        label.convert("RGB").save(base / "SegmentationClass" / f"{last}.png")
    cfg = TrainConfig(data_path=str(voc), model="fcn8s_resnet18", epochs=1, batch_size=2, workers=0, device="cpu",
                      output_dir=str(tmp_path / "run"), base_size=48, crop_size=40)
    with pytest.raises(FcnsegError, match=rf"got mode 'RGB' in 1 file of the val split \(.*{last}.png\); "
                                          r".*--skip-data-check$"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # not even the output folder: nothing ran


def test_every_bad_pair_is_counted_and_the_first_named(voc):
    base = voc / "VOCdevkit/VOC2012"
    train_ids, val_ids = _ids(voc, "train"), _ids(voc, "val")
    layouts = [VOCLayout(voc, "train"), VOCLayout(voc, "val")]
    assert scan_splits(layouts, show=False) == 7
    (base / "JPEGImages" / f"{train_ids[0]}.jpg").unlink()
    (base / "JPEGImages" / f"{train_ids[1]}.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.full((9, 9), 3, np.uint8), mode="L").save(base / "SegmentationClass" / f"{val_ids[0]}.png")
    Image.fromarray(np.full((48, 48), 30, np.uint8), mode="L").save(base / "SegmentationClass" / f"{val_ids[1]}.png")
    with pytest.raises(FcnsegError, match=rf"expected the files the split lists, got 1 file of the train split "
                                          rf"\(.*{train_ids[0]}.jpg\) missing; .* \(and 3 more problems\); "
                                          r"fix the dataset before training, or skip this check with "
                                          r"--skip-data-check$"):
        scan_splits(layouts, threads=2, show=False)
    with pytest.raises(FcnsegError, match="could not read"):
        layouts[0].check_pair(1)
    with pytest.raises(FcnsegError, match="expected image and label of the same size"):
        layouts[1].check_pair(0)
    with pytest.raises(FcnsegError, match=r"got \[30\]"):
        layouts[1].check_pair(1)
