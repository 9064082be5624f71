"""How close each CPU benchmark row gets to this CPU's convolution peak, and so how fast any runtime could be.

FCN's time is almost all convolution. ``graph_macs`` counts a graph's multiply-accumulates (MACs) from
OpenVINO's static shapes at one input size; ``conv_peaks`` measures the rate this CPU runs a stack of 3x3
convolutions at (``PROBE``; OpenVINO, FP32 / BF16 / INT8 Q/DQ), in the same run as the benchmark: a practical
peak, what the CPU sustains on convolutions chained as in a network. A row's rate is MACs / its median time;
its share of the peak of the precision it ran in says how much any runtime could still gain. The INT8 ceiling
(INT8 peak / PyTorch FP32 eager's rate) is the most an INT8 path can be ahead of PyTorch on this machine.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from ..runtime.backends.openvino import import_openvino

# 8 chained 3x3 convolutions, 512 channels at 65x65 (FCN-ResNet50's feature size at 520), 80 GMAC. Measured here
# (OpenVINO, INT8 / FP32 GMAC/s): one convolution alone 807-849 / 238 (its input quantization and float output
# are not amortized; FCN-ResNet50 itself reached 868 INT8), 4 chained 932 / 230, 8 chained 972 / 237.
PROBE = {"channels": 512, "size": 65, "depth": 8}
# peak precision -> (probe graph, OpenVINO precision hint); INT8 convolutions ignore the hint
_PROBES = {"fp32": ("fp32", "f32"), "bf16": ("fp32", "bf16"), "int8": ("int8", "bf16")}
PEAK_PRECISIONS = tuple(_PROBES)


def graph_macs(onnx_path: "str | Path", input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the graph's convolutions for one input of ``input_shape`` (NCHW)."""
    ov = import_openvino()
    model = ov.Core().read_model(str(onnx_path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(input_shape))})
    return sum(_op_macs(op) for op in model.get_ordered_ops())


def _op_macs(op) -> int:
    kind = op.get_type_name()
    if kind not in ("Convolution", "GroupConvolution", "ConvolutionBackpropData"):
        return 0
    weights = list(op.input(1).get_shape())
    if kind == "Convolution":          # [O, I, k...]: each output element sums I * k
        return math.prod(op.get_output_shape(0)) * math.prod(weights[1:])
    if kind == "GroupConvolution":     # [G, O/G, I/G, k...]
        return math.prod(op.get_output_shape(0)) * math.prod(weights[2:])
    return math.prod(op.get_input_shape(0)) * math.prod(weights[1:])   # transposed, [I, O, k...]: per input


def probe_onnx(path: "str | Path", precision: str, *, channels: int = PROBE["channels"],
               size: int = PROBE["size"], depth: int = PROBE["depth"]) -> Path:
    """``depth`` x (3x3 convolution ``channels`` -> ``channels`` at ``size`` x ``size``, ReLU), as in a network;
    INT8: each convolution's input and weights behind Q/DQ (the ``fcn-export int8`` layout)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.float32(0.03), "x_scale"), numpy_helper.from_array(np.int8(0), "x_zp")]
    nodes, x = [], "x"
    for i in range(depth):
        w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        inits.append(numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), f"b{i}"))
        if precision == "int8":
            scale = (np.abs(w).reshape(channels, -1).max(axis=1) / 127).astype(np.float32)
            inits += [numpy_helper.from_array(np.round(w / scale[:, None, None, None]).astype(np.int8), f"wq{i}"),
                      numpy_helper.from_array(scale, f"ws{i}")]
            nodes += [helper.make_node("QuantizeLinear", [x, "x_scale", "x_zp"], [f"xq{i}"]),
                      helper.make_node("DequantizeLinear", [f"xq{i}", "x_scale", "x_zp"], [f"xdq{i}"]),
                      helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}"], [f"w{i}"], axis=0)]
            x = f"xdq{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "conv_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return Path(path)


def conv_peaks(*, channels: int = PROBE["channels"], size: int = PROBE["size"], depth: int = PROBE["depth"],
               iters: int = 4, rounds: int = 3, num_threads: Optional[int] = None) -> Dict[str, float]:
    """GMAC/s of the probe per precision (OpenVINO, latency hint), medians of interleaved rounds."""
    ov = import_openvino()
    core = ov.Core()
    x = np.random.default_rng(1).standard_normal((1, channels, size, size)).astype(np.float32)
    requests, times = {}, {p: [] for p in PEAK_PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for p, (graph_precision, hint) in _PROBES.items():
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
            if num_threads:
                config["INFERENCE_NUM_THREADS"] = int(num_threads)
            graph = probe_onnx(Path(tmp) / f"{p}.onnx", graph_precision, channels=channels, size=size, depth=depth)
            model = core.read_model(str(graph))
            requests[p] = core.compile_model(model, "CPU", config).create_infer_request()
            requests[p].infer({0: x})   # warm-up
    for _ in range(rounds):
        for p, request in requests.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                request.infer({0: x})
                times[p].append(time.perf_counter() - t0)
    macs = depth * channels * channels * 9 * size * size
    return {p: macs / float(np.median(t)) / 1e9 for p, t in times.items()}


def ran_in(result) -> str:
    """The precision a benchmark row's convolutions ran in: the graph's, or for FP32 graphs OpenVINO's hint."""
    if result.precision == "int8":
        return "int8"
    return "bf16" if result.backend == "openvino" and result.precision_hint == "bf16" else "fp32"


def roofline(results: Sequence, macs: int, peaks: Dict[str, float]) -> dict:
    """Per row: GMAC/s achieved and its share of the peak it ran in; the INT8 ceiling over the first row."""
    rows = {}
    for r in results:
        rate, precision = macs / (r.e2e.median / 1e3) / 1e9, ran_in(r)
        rows[r.label] = {"gmacs": rate, "ran_in": precision, "peak_share": rate / peaks[precision]}
    base = rows[results[0].label]["gmacs"] if results else float("nan")
    return {"gmac": macs / 1e9, "peaks_gmacs": peaks, "rows": rows, "int8_ceiling_vs_first": peaks["int8"] / base}


def roofline_chart(summary: dict) -> bytes:
    """``roofline()``'s summary as a PNG: each row's GMAC/s against each precision's peak (``eval.plots``)."""
    from ..eval.plots import roofline_png

    return roofline_png(summary["rows"], summary["peaks_gmacs"], gmac=summary["gmac"])


def roofline_table(summary: dict) -> str:
    peaks = ", ".join(f"{p.upper()} {g:.0f}" for p, g in summary["peaks_gmacs"].items())
    lines = [f"convolutions: {summary['gmac']:.1f} GMAC per image; peak of chained 3x3 convolutions here (OpenVINO): "
             f"{peaks} GMAC/s",
             f"INT8 ceiling vs the first row: x{summary['int8_ceiling_vs_first']:.2f} (the INT8 peak / its rate)", "",
             f"{'row':<66} {'GMAC/s':>7}  {'ran in':<6} {'% of peak':>9}"]
    lines += [f"{label:<66} {r['gmacs']:7.0f}  {r['ran_in']:<6} {100 * r['peak_share']:9.0f}"
              for label, r in summary["rows"].items()]
    return "\n".join(lines)
