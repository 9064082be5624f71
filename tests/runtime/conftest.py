"""Shared runtime fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def conv3(conv_onnx_factory, tmp_path_factory):
    """The shared 2-conv net (a 3x3 conv first: context across tile borders), 4 classes, declared 16..256."""
    from fcnseg.core.metadata import ModelMetadata

    meta = ModelMetadata(arch="conv3", num_classes=4, input_size=32, min_size=16, max_size=256)
    return conv_onnx_factory(tmp_path_factory.mktemp("conv3") / "conv3.onnx", meta)
