"""The roofline figures: MACs counted from a graph, the convolution probe, each row's share of its peak."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")

from fcnseg.benchmarks.roofline import PEAK_PRECISIONS, conv_peaks, graph_macs, probe_onnx, ran_in, roofline  # noqa: E402


def _three_kinds_of_conv(path):
    """x (N,3,H,W) -> 3x3 conv to 8 -> depthwise 3x3 (group 8) -> 2x2 stride-2 transposed conv to 4; H, W dynamic."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (8, 3, 3, 3)), ("w2", (8, 1, 3, 3)), ("w3", (8, 4, 2, 2)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=8),
             helper.make_node("ConvTranspose", ["b", "w3"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, None, None])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("h,w", [(16, 16), (20, 12)])
def test_graph_macs_counts_plain_grouped_and_transposed_convolutions(tmp_path, h, w):
    path = _three_kinds_of_conv(tmp_path / "g.onnx")
    expected = h * w * 8 * (3 * 9)      # 3x3 conv, 3 -> 8: each output sums 3 x 9 products
    expected += h * w * 8 * 9           # depthwise: each output sums 1 x 9
    expected += h * w * 8 * (4 * 4)     # transposed 2x2, 8 -> 4: each input element feeds 4 x 4 outputs
    assert graph_macs(path, (1, 3, h, w)) == expected


def test_probe_graphs_are_chained_convolutions_and_int8_agrees_with_fp32(tmp_path):
    import onnxruntime as ort

    c, s, depth = 16, 8, 3
    paths = {p: probe_onnx(tmp_path / f"{p}.onnx", p, channels=c, size=s, depth=depth) for p in ("fp32", "int8")}
    for p in paths.values():
        assert graph_macs(p, (1, c, s, s)) == depth * c * c * 9 * s * s
    x = np.random.default_rng(2).standard_normal((1, c, s, s)).astype(np.float32)
    y = {p: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
         for p, path in paths.items()}
    assert y["fp32"].shape == (1, c, s, s)
    err = np.abs(y["int8"] - y["fp32"]).max() / np.abs(y["fp32"]).max()
    assert 0 < err < 0.05, err   # quantized for real, and still the same convolution


def test_conv_peaks_measures_every_precision():
    peaks = conv_peaks(channels=16, size=8, depth=2, iters=1, rounds=1)
    assert list(peaks) == list(PEAK_PRECISIONS)
    assert all(math.isfinite(g) and g > 0 for g in peaks.values()), peaks


def _row(label, ms, precision="fp32", backend="onnxruntime", hint=""):
    return SimpleNamespace(label=label, e2e=SimpleNamespace(median=ms), precision=precision, backend=backend,
                           precision_hint=hint)


def test_each_row_is_set_against_the_peak_of_the_precision_it_ran_in():
    rows = [_row("pytorch", 1000.0, backend="pytorch"), _row("ov bf16", 250.0, backend="openvino", hint="bf16"),
            _row("ov f32", 500.0, backend="openvino", hint="f32"), _row("ov int8", 125.0, "int8", "openvino", "bf16")]
    assert [ran_in(r) for r in rows] == ["fp32", "bf16", "fp32", "int8"]
    summary = roofline(rows, macs=100 * 10**9, peaks={"fp32": 200.0, "bf16": 400.0, "int8": 1000.0})
    got = {label: (round(r["gmacs"]), round(100 * r["peak_share"])) for label, r in summary["rows"].items()}
    assert got == {"pytorch": (100, 50), "ov bf16": (400, 100), "ov f32": (200, 100), "ov int8": (800, 80)}
    assert summary["int8_ceiling_vs_first"] == pytest.approx(10.0)   # 1000 GMAC/s INT8 peak / PyTorch's 100
    assert summary["gmac"] == 100.0
