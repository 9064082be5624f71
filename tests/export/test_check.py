"""The TensorRT-readiness checker: passes our graphs, fails asymmetric / int32-bias / misplaced Q/DQ and bad ops."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnseg.export.check import TRT_ONNX_OPS, check_trt_ready
from fcnseg.core.errors import FcnsegError


class _RandomReader:
    """Two random inputs for onnxruntime's quantize_static."""

    def __init__(self):
        self.feeds = [{"input": np.random.default_rng(i).standard_normal((1, 3, 64, 64), dtype=np.float32)}
                      for i in range(2)]

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def _ort_quantize(src, dst, **extra):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(src), str(dst), _RandomReader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
                    extra_options={"ActivationSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": ["Conv"], **extra})
    return dst


def _rules(report):
    return {v.rule for v in report.violations}


def test_exported_graphs_pass(r18_onnx, r18_argmax_onnx, r18_int8):
    for path in (r18_onnx, r18_argmax_onnx, r18_int8.path):
        report = check_trt_ready(path)
        assert report, str(report)
        assert str(report).startswith("OK: ")


def test_asymmetric_quantization_fails(r18_onnx, tmp_path):
    model = _ort_quantize(r18_onnx, tmp_path / "asym.onnx", ActivationSymmetric=False)
    report = check_trt_ready(model)
    assert not report and "zero-point" in _rules(report)
    text = str(report)
    assert text.startswith("FAIL: ") and "expected zero point 0 (symmetric)" in text
    assert "QuantizeLinear" in text   # names the offending nodes


def test_int32_bias_dequantize_fails(r18_onnx, tmp_path):
    model = _ort_quantize(r18_onnx, tmp_path / "bias.onnx", QuantizeBias=True)
    report = check_trt_ready(model)
    assert _rules(report) == {"bias"}
    assert "int32 bias DequantizeLinear" in str(report)


def test_qdq_between_conv_and_add_fails(r18_onnx, tmp_path):
    model = _ort_quantize(r18_onnx, tmp_path / "out.onnx", OpTypesToExcludeOutputQuantization=[])
    report = check_trt_ready(model)
    assert _rules(report) == {"residual"}
    assert any("layer1.0/Add" in v.node for v in report.violations)


def _tiny(nodes, inits=(), opset=17, out_type=TensorProto.FLOAT, in_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", in_type, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", out_type, None)], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def test_per_tensor_weight_and_missing_zero_point_fail():
    w = _const("w", np.ones((3, 2, 1, 1), np.float32))
    nodes = [helper.make_node("QuantizeLinear", ["w", "s"], ["wq"], name="q_w"),   # no zero point: uint8
             helper.make_node("DequantizeLinear", ["wq", "s"], ["wd"], name="dq_w"),
             helper.make_node("Conv", ["x", "wd"], ["y"], name="conv")]
    report = check_trt_ready(_tiny(nodes, [w, _const("s", np.float32(0.1))]))
    rules = {(v.rule, v.node) for v in report.violations}
    assert ("zero-point", "q_w") in rules and ("per-channel", "dq_w") in rules


def test_weights_on_wrong_axis_and_per_channel_activation_fail():
    inits = [_const("w", np.ones((3, 2, 1, 1), np.float32)), _const("ws", np.full(3, 0.1, np.float32)),
             _const("xs", np.full(2, 0.1, np.float32)), _const("z3", np.zeros(3, np.int8)),
             _const("z2", np.zeros(2, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "z2"], ["xq"], name="q_x", axis=1),
             helper.make_node("DequantizeLinear", ["xq", "xs", "z2"], ["xd"], name="dq_x", axis=1),
             helper.make_node("QuantizeLinear", ["w", "ws", "z3"], ["wq"], name="q_w", axis=1),
             helper.make_node("DequantizeLinear", ["wq", "ws", "z3"], ["wd"], name="dq_w", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    report = check_trt_ready(_tiny(nodes, inits))
    rules = {(v.rule, v.node) for v in report.violations}
    assert rules == {("per-tensor", "q_x"), ("per-tensor", "dq_x"), ("per-channel", "q_w")}


def test_unsupported_op_resize_mode_opset_and_io_type_fail():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="resize", mode="cubic",
                              coordinate_transformation_mode="tf_crop_and_resize"),
             helper.make_node("Unique", ["r"], ["y"], name="unique")]
    scales = _const("scales", np.array([1, 1, 2, 2], np.float32))
    report = check_trt_ready(_tiny(nodes, [scales], out_type=TensorProto.DOUBLE))
    rules = {(v.rule, v.node) for v in report.violations}
    assert {("op", "unique"), ("resize", "resize"), ("io-type", "y")} <= rules
    assert any("sizes are preferred" in w for w in report.warnings)
    assert "Unique" not in TRT_ONNX_OPS and "Resize" in TRT_ONNX_OPS
    old = check_trt_ready(_tiny([helper.make_node("Relu", ["x"], ["y"])], opset=8))
    assert _rules(old) == {"opset"}


def test_high_opset_warns_for_trt8():
    report = check_trt_ready(_tiny([helper.make_node("Relu", ["x"], ["y"])], opset=19))
    assert report and any("TensorRT 8.x" in w for w in report.warnings)


def test_unreadable_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(FcnsegError, match="could not read .* as an ONNX model"):
        check_trt_ready(bad)
