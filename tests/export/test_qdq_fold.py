"""Weight QuantizeLinear folding (export/qdq.py): int8 weight initializers, same outputs, ~4x smaller file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.export.check import check_trt_ready
from fcnseg.export.qdq import fold_weight_quantizers


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _unfold(model):
    """The layout ONNX Runtime's quantizer writes: float weights -> QuantizeLinear -> DequantizeLinear."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == TensorProto.INT8]:
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[dq.input[1]])
        shape = [1] * q.ndim
        shape[0] = scale.size
        w = (q * scale.reshape(shape) * 1.003).astype(np.float32)   # off-grid: rounding is exercised
        model.graph.initializer.remove(inits[dq.input[0]])
        model.graph.initializer.append(numpy_helper.from_array(w, dq.input[0] + "_float"))
        q_node = helper.make_node("QuantizeLinear", [dq.input[0] + "_float", dq.input[1], dq.input[2]],
                                  [dq.input[0] + "_q"], axis=0, name=dq.name + "_q")
        model.graph.node.insert(list(model.graph.node).index(dq), q_node)
        dq.input[0] = dq.input[0] + "_q"
    return model


def test_fold_on_the_int8_graph_keeps_outputs_and_shrinks_the_file(r18_int8):
    folded = onnx.load(str(r18_int8.path))   # quantize_int8 already folds: unfold it, then fold again
    unfolded = _unfold(folded)
    assert sum(n.op_type == "QuantizeLinear" for n in unfolded.graph.node) > \
        sum(n.op_type == "QuantizeLinear" for n in folded.graph.node)
    refolded = onnx.ModelProto.FromString(unfolded.SerializeToString())
    count = fold_weight_quantizers(refolded)
    int8_weights = {n.input[0] for n in folded.graph.node if n.op_type == "DequantizeLinear"} & \
        {t.name for t in folded.graph.initializer if t.data_type == TensorProto.INT8}
    assert count == len(int8_weights) > 10
    assert not any(t.name.endswith("_float") for t in refolded.graph.initializer)   # float weights dropped
    assert refolded.ByteSize() < unfolded.ByteSize() / 3
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 80), dtype=np.float32)
    np.testing.assert_array_equal(_run(refolded, x), _run(unfolded, x))
    assert check_trt_ready(refolded), str(check_trt_ready(refolded))


def test_activation_quantizers_and_shared_weights_are_left_alone():
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3, 1, 1), "w")
    s = numpy_helper.from_array(np.full(4, 0.01, np.float32), "s")
    z = numpy_helper.from_array(np.zeros(4, np.int8), "z")
    sa = numpy_helper.from_array(np.array(0.05, np.float32), "sa")
    za = numpy_helper.from_array(np.array(0, np.int8), "za")
    nodes = [helper.make_node("QuantizeLinear", ["input", "sa", "za"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
             helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], axis=0),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("Conv", ["input", "w"], ["y2"]),   # reads the float weight too: it must stay
             helper.make_node("Add", ["y", "y2"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [w, s, z, sa, za])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8   # readable by the installed ONNX Runtime
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4), dtype=np.float32)
    before = _run(model, x)
    assert fold_weight_quantizers(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and "w" in {t.name for t in model.graph.initializer}
    wq = next(t for t in model.graph.initializer if t.name == "wq")
    assert wq.data_type == TensorProto.INT8
    np.testing.assert_array_equal(numpy_helper.to_array(wq).ravel(),
                                  np.clip(np.rint(np.linspace(-1, 1, 12) / 0.01), -128, 127).astype(np.int8))
    np.testing.assert_allclose(_run(model, x), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("runtime", ["openvino"])
def test_folded_graph_runs_on_openvino(r18_int8, runtime):
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(str(r18_int8.path), "CPU")
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64), dtype=np.float32)
    out = compiled([x])[compiled.output(0)]
    ref = _run(onnx.load(str(r18_int8.path)), x)
    assert out.shape == ref.shape == (1, 21, 64, 64)
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.9
