"""Shared runtime fixtures."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest


@pytest.fixture(scope="session")
def conv3(tmp_path_factory):
    """A 3x3 conv (3 -> 4 classes, dynamic N/H/W, declared 16..256): context across tile borders."""
    from onnx import TensorProto, helper, numpy_helper

    from fcnseg.core.metadata import ModelMetadata

    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "conv3",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = ModelMetadata(arch="conv3", num_classes=4, input_size=32).to_props()
    props.update({"fcnseg.min_size": json.dumps(16), "fcnseg.max_size": json.dumps(256)})
    helper.set_model_props(model, props)
    path = tmp_path_factory.mktemp("conv3") / "conv3.onnx"
    onnx.save(model, str(path))
    return path
