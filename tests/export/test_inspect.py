"""``fcn-export inspect``: the parsed TensorRT network of an ONNX graph (TensorRT for RTX on this CPU), and engines."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from fcnseg.export.cli import main
from fcnseg.export.inspection import inspect_engine, inspect_onnx

pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX (pip install tensorrt-rtx)")


def convs(path, *, quantized=True):
    """Conv/ConvTranspose nodes whose weight comes from a DequantizeLinear (``quantized=False``: the others, e.g.
    the float Conv of FCN-8s's sub-pixel upsampling)."""
    graph = onnx.load(str(path)).graph
    dq = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return sum(n.op_type in ("Conv", "ConvTranspose") and (n.input[1] in dq) == quantized for n in graph.node)


def int8_layers(path):
    """Layers running in INT8: the quantized Conv/ConvTranspose and each MaxPool reading a DequantizeLinear (NVIDIA's
    placement quantizes the MaxPool between two quantized layers: ResNet's stem)."""
    graph = onnx.load(str(path)).graph
    dq = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return convs(path) + sum(n.op_type == "MaxPool" and n.input[0] in dq for n in graph.node)


def test_int8_graph_runs_every_quantized_conv_in_int8(r18_int8):
    assert r18_int8.excluded == []   # every conv was quantized (but the sub-pixel one, float by design)
    report = inspect_onnx(r18_int8.path, library="tensorrt_rtx")
    counts = report.counts()
    assert report.errors == [] and report.library.startswith("tensorrt_rtx ")
    assert counts["int8"] == int8_layers(r18_int8.path) and counts["q/dq"] > 0
    assert counts["fp16"] > 0 and counts["fp32"] == 1   # FP16 elsewhere; FP32: the Cast to the float32 output
    conv_layers = [layer for layer in report.layers if layer.type in ("CONVOLUTION", "DECONVOLUTION")]
    precisions = [layer.precision for layer in conv_layers]
    assert precisions.count("int8") == convs(r18_int8.path)
    assert precisions.count("fp16") == convs(r18_int8.path, quantized=False) == 1   # the sub-pixel Conv
    assert sum(counts.values()) == len(report.layers)


def test_fp16_and_fp32_graphs(r18_onnx, tmp_path):
    from fcnseg.export.fp16 import convert_fp16

    fp32 = inspect_onnx(r18_onnx).counts()
    assert fp32["int8"] == fp32["fp16"] == fp32["q/dq"] == 0 and fp32["fp32"] >= convs(r18_onnx)
    fp16 = inspect_onnx(convert_fp16(r18_onnx, tmp_path / "m_fp16.onnx", verify=False).path).counts()
    assert fp16["int8"] == 0 and fp16["fp16"] >= convs(r18_onnx)


def test_cli_text_and_json(r18_int8):
    text = CliRunner().invoke(main, ["inspect", str(r18_int8.path)])
    assert text.exit_code == 0, text.output
    first = text.stdout.splitlines()[0]
    assert "0 parser error(s)" in first and f"int8 {int8_layers(r18_int8.path)}," in first
    as_json = CliRunner().invoke(main, ["inspect", str(r18_int8.path), "--json"])
    doc = json.loads(as_json.stdout)
    assert doc["counts"]["int8"] == int8_layers(r18_int8.path) and len(doc["layers"]) == sum(doc["counts"].values())


def test_engine_shows_its_sidecar(r18_onnx, tmp_path):
    from fcnseg.export.tensorrt import build_engine
    from fcnseg.runtime.backends.tensorrt import probe_gpu

    built = build_engine(r18_onnx, output=tmp_path / "m.plan", library="tensorrt_rtx", min_shape=(1, 3, 64, 64),
                         opt_shape=(1, 3, 64, 64), max_shape=(1, 3, 64, 64))
    result = inspect_engine(built.path)
    assert result["sidecar"] == built.sidecar.to_dict() and result["size_bytes"] == built.size_bytes
    if probe_gpu()[0] is None:
        assert result["layers"] is None and result["layers_note"].startswith("per-layer information needs a GPU")
    text = CliRunner().invoke(main, ["inspect", str(built.path)])
    assert text.exit_code == 0 and "tensorrt_rtx" in text.stdout and "sm_86/sm_89/sm_120" in text.stdout


def test_missing_engine_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope.plan")])
    assert result.exit_code == 2 and "Traceback" not in result.output
