"""Sub-pixel rewrite of FCN-8s's large-stride upsampling (export/subpixel.py): same outputs, Conv + DepthToSpace."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.export.onnx_graph import read_metadata
from fcnseg.export.subpixel import subpixel_upsampling


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _strides(model: onnx.ModelProto) -> list:
    return sorted(next(a.ints[0] for a in n.attribute if a.name == "strides")
                  for n in model.graph.node if n.op_type == "ConvTranspose")


@pytest.mark.parametrize("min_stride", [4, 2])
def test_rewrite_keeps_outputs_at_any_size(r18_onnx, min_stride):
    original = onnx.load(str(r18_onnx))
    model = onnx.load(str(r18_onnx))
    done = subpixel_upsampling(model, min_stride=min_stride)
    assert len(done) == (1 if min_stride == 4 else 3)   # x8 only by default; x2, x2 and x8 from stride 2
    assert _strides(model) == ([2, 2] if min_stride == 4 else [])
    assert sum(n.op_type == "DepthToSpace" for n in model.graph.node) == len(done)
    onnx.checker.check_model(model)
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 64, 80), (2, 3, 57, 99), (1, 3, 71, 64)]:   # crops of 1 to 8 rows/columns
        x = rng.standard_normal(shape).astype(np.float32)
        ref, out = _run(original, x), _run(model, x)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_int8_export_keeps_the_subpixel_conv_in_float(r18_int8):
    model = onnx.load(str(r18_int8.path))
    _, props = read_metadata(model)
    assert props["fcnseg.int8"]["subpixel_upsampling"] == ["/model/upscore8/up/Conv_subpixel"]
    assert _strides(model) == [2, 2]
    producers = {o: n for n in model.graph.node for o in n.output}
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1
    conv = producers[d2s[0].input[0]]
    assert conv.op_type == "Conv" and conv.name == "/model/upscore8/up/Conv_subpixel"
    # kept in float (see export/subpixel.py): a float weight, and no DequantizeLinear on its input
    assert conv.input[1] in {t.name for t in model.graph.initializer} and conv.input[0] not in {
        o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}


def test_other_conv_transpose_is_left_alone():
    """Without BilinearUpsample's replicated edge and crop, dropping the last row would change the output."""
    w = numpy_helper.from_array(np.ones((2, 2, 15, 15), np.float32), "w")
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[8, 8], pads=[7, 7, 7, 7],
                            kernel_shape=[15, 15])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph)
    assert subpixel_upsampling(model) == [] and [n.op_type for n in model.graph.node] == ["ConvTranspose"]
