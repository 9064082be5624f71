"""FP32 -> FP16 ONNX: float32 I/O kept, FP16 body, agreement with FP32 on ONNX Runtime CPU, metadata."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fcnseg.export.check import check_trt_ready
from fcnseg.export.fp16 import convert_fp16
from fcnseg.export.onnx_graph import read_metadata
from fcnseg.core.errors import FcnsegError
from fcnseg.eval.parity import compare_logits

SHAPES = [(1, 64, 80), (2, 67, 93)]


def _io_types(path):
    m = onnx.load(str(path))
    return {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}


@pytest.fixture(scope="module")
def r18_fp16(r18_onnx, tmp_path_factory):
    return convert_fp16(r18_onnx, tmp_path_factory.mktemp("fp16") / "r18_fp16.onnx", verify_shapes=SHAPES)


def test_fp16_keeps_float32_io_and_agrees_with_fp32(r18_fp16, r18_onnx, random_input):
    assert _io_types(r18_fp16.path) == {"input": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT}
    model = onnx.load(str(r18_fp16.path))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    fp16_weights = [i for i in model.graph.initializer if i.name in conv_weights]
    assert fp16_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16_weights)
    assert [c.shape for c in r18_fp16.comparisons] == [(1, 21, 64, 80), (2, 21, 67, 93)]
    assert all(c.argmax_agreement >= 0.99 for c in r18_fp16.comparisons)
    # independently of convert_fp16's own check: fresh sessions on both files
    x = random_input(1, 75, 101, seed=7)
    ref = ort.InferenceSession(str(r18_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(r18_fp16.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    cmp = compare_logits(ref, got, atol=0.05, min_agreement=0.99)
    assert cmp, str(cmp)
    assert cmp.max_abs > 0, "an FP16 body cannot reproduce FP32 bit for bit"


def test_fp16_metadata_and_trt_check(r18_fp16):
    model = onnx.load(str(r18_fp16.path))
    meta, props = read_metadata(model)
    assert meta.precision == "fp16" and meta.arch == "fcn8s_resnet18" and meta.input_size == 64
    assert props["fcnseg.min_size"] == 64
    assert check_trt_ready(model), str(check_trt_ready(model))


def test_fp16_argmax_graph_keeps_uint8_mask(r18_argmax_onnx, tmp_path, random_input):
    result = convert_fp16(r18_argmax_onnx, tmp_path / "mask_fp16.onnx", verify_shapes=[(1, 64, 80)])
    assert _io_types(result.path) == {"input": onnx.TensorProto.FLOAT, "mask": onnx.TensorProto.UINT8}
    mask = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": random_input(1, 64, 80)})[0]
    assert mask.dtype == np.uint8 and mask.shape == (1, 64, 80)
    assert read_metadata(onnx.load(str(result.path)))[0].argmax is True
    assert check_trt_ready(result.path)


def test_fp16_default_output_name(r18_onnx, tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(r18_onnx.read_bytes())
    assert convert_fp16(src, verify=False).path == tmp_path / "model_fp16.onnx"


def test_fp16_refuses_fp16_and_int8_inputs(r18_fp16, r18_int8, tmp_path):
    for src in (r18_fp16.path, r18_int8.path):
        with pytest.raises(FcnsegError, match="expected an FP32 ONNX model"):
            convert_fp16(src, tmp_path / "again.onnx", verify=False)
    assert not (tmp_path / "again.onnx").exists()


def test_fp16_disagreement_writes_nothing(r18_onnx, tmp_path):
    with pytest.raises(FcnsegError, match="expected the FP16 graph to match FP32"):
        convert_fp16(r18_onnx, tmp_path / "strict.onnx", verify_shapes=[(1, 64, 80)], rtol=1e-9)
    assert list(tmp_path.iterdir()) == []


# --- INT8 Q/DQ graphs with FP16 elsewhere (issue 21) ------------------------------------------------------------

def _qdq_conv(scale=0.02):
    """input -> Q/DQ -> Conv (int8 per-channel weights, float bias) -> Relu -> logits, opset 17 FP32."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    ws = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(np.clip(np.rint(w / ws.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8), "wq"),
             numpy_helper.from_array(ws, "ws"), numpy_helper.from_array(np.zeros(4, np.int8), "wz"),
             numpy_helper.from_array(np.array(scale, np.float32), "xs"), numpy_helper.from_array(np.int8(0), "xz"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["logits"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                           ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4, "H", "W"])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_qdq_to_fp16_types_scales_fp16_at_opset_19_and_keeps_io(random_input):
    from fcnseg.export.fp16 import has_fp16_qdq, ort_qdq_fp16_session, qdq_to_fp16, verify_qdq_fp16

    src = _qdq_conv()
    fp16 = qdq_to_fp16(src)
    assert next(o.version for o in fp16.opset_import if o.domain in ("", "ai.onnx")) == 19 and fp16.ir_version >= 9
    inits = {t.name: t.data_type for t in fp16.graph.initializer}
    assert inits["xs"] == inits["ws"] == inits["b"] == onnx.TensorProto.FLOAT16 and inits["wq"] == onnx.TensorProto.INT8
    assert has_fp16_qdq(fp16) and not has_fp16_qdq(src)
    io = {v.name: v.type.tensor_type.elem_type for v in list(fp16.graph.input) + list(fp16.graph.output)}
    assert io == {"input": onnx.TensorProto.FLOAT, "logits": onnx.TensorProto.FLOAT}
    onnx.checker.check_model(fp16, full_check=True)
    x = random_input(1, 9, 11)
    got = ort_qdq_fp16_session(fp16).run(None, {"input": x})[0]
    ref = ort.InferenceSession(src.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert len(verify_qdq_fp16(src, fp16, [x, random_input(2, 8, 8, seed=1)])) == 2


def test_verify_qdq_fp16_refuses_a_wrong_lowering(random_input):
    from fcnseg.export.fp16 import qdq_to_fp16, verify_qdq_fp16

    wrong = qdq_to_fp16(_qdq_conv())
    for t in wrong.graph.initializer:
        if t.name == "ws":   # weight scales off by 4x: what a broken rewrite looks like
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 4, "ws"))
    with pytest.raises(FcnsegError, match="expected the FP16 Q/DQ graph to match its FP32-elsewhere source"):
        verify_qdq_fp16(_qdq_conv(), wrong, [random_input(1, 9, 11)])


def test_qdq_to_fp16_says_when_the_opset_cannot_be_upgraded(monkeypatch):
    from fcnseg.export import fp16 as F

    def refuse(model, version):
        raise RuntimeError("no adapter for Foo\nC++ trace")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(FcnsegError, match=r"from opset 17 to 19 .* RuntimeError: no adapter for Foo.*--high-precision fp32"):
        F.qdq_to_fp16(_qdq_conv())
