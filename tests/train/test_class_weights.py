"""fcn-train --class-weights: median-frequency balancing computed independently here, and weight files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fcnseg.core.class_map import ClassMap
from fcnseg.core.data_source import DataSource
from fcnseg.core.errors import FcnsegError
from fcnseg.datasets import open_dataset
from fcnseg.datasets.synth import synthesize
from fcnseg.train.class_weights import class_weights, read_weights


def test_auto_is_median_frequency_balancing(tmp_path):
    root = synthesize(tmp_path / "d", num_train=6, num_val=2, size=48, seed=3, layout="folder", classes=4,
                      progress=False)
    dataset = open_dataset(root, "train")
    labels = [dataset.decode(i) for i in range(len(dataset))]
    pixels = np.array([[int((lb == c).sum()) for c in range(4)] for lb in labels], dtype=np.float64)
    class_px = pixels.sum(axis=1, keepdims=True)          # each image's labelled (non-ignored) pixels
    freq = pixels.sum(0) / (class_px * (pixels > 0)).sum(0)
    expected = np.median(freq) / freq
    said = []
    got = class_weights("auto", DataSource(str(root)), dataset.class_map, torch.device("cpu"), say=said.append)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    assert said[0].startswith("class weights (auto, median frequency over the train split): background ")


def test_weight_files(tmp_path):
    cmap = ClassMap(("bg", "road", "crack"))
    (tmp_path / "list.json").write_text("[1, 2.5, 10]")
    (tmp_path / "named.json").write_text(json.dumps({"crack": 8}))
    assert read_weights(tmp_path / "list.json", cmap) == [1.0, 2.5, 10.0]
    assert read_weights(tmp_path / "named.json", cmap) == [1.0, 1.0, 8.0]
    assert class_weights("none", DataSource(str(tmp_path)), cmap, torch.device("cpu")) is None
    for text, match in (("[1, 2]", "expected 3 class weights"), ('{"wire": 2}', "got \\['wire'\\]"),
                        ("[1, -1, 2]", "non-negative numbers"), ("{", "unreadable")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(FcnsegError, match=match):
            read_weights(tmp_path / "bad.json", cmap)
