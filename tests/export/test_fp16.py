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
