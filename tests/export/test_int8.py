"""FP32 -> INT8 Q/DQ: TensorRT-ready placement as NVIDIA recommends, FP16 elsewhere (opset 19) or the TensorRT 8.x
graph, int8 weights from ONNX Runtime, calibration cache reuse, mIoU report, sensitive-layer fallback, parity on
ONNX Runtime and OpenVINO."""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from fcnseg.datasets import for_model
from fcnseg.eval.evaluate import TOLERANCES
from fcnseg.eval.parity import compare_miou, evaluate
from fcnseg.export import int8 as I
from fcnseg.export.check import check_trt_ready
from fcnseg.export.fp16 import ort_qdq_fp16_session
from fcnseg.export.onnx_graph import ort_session, read_metadata, run_session
from fcnseg.export.subpixel import subpixel_upsampling
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metrics import ConfusionMatrix
from fcnseg.runtime import Segmenter
from fcnseg.runtime.backends.base import BaseBackend

needs_rtx = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                               reason="needs TensorRT for RTX (pip install tensorrt-rtx)")


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _qdq_source(producers, name):
    """The tensor a DequantizeLinear <- QuantizeLinear pair carries into ``name``, or None."""
    dq = producers.get(name)
    q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


@pytest.fixture(scope="module")
def r18_trt8(r18_int8, r18_onnx, tiny_voc, tmp_path_factory):
    """The TensorRT 8.x graph of the same model and ranges (opset 17, FP32 elsewhere)."""
    return I.quantize_int8(r18_onnx, tmp_path_factory.mktemp("trt8") / "r18_int8_trt8.onnx", calib_root=tiny_voc,
                           num_images=4, method="minmax", cache=r18_int8.cache_path, eval_images=3, max_drop=100.0,
                           trt_version="8.5", progress=False)


def test_int8_graph_is_trt_ready(r18_int8):
    model = onnx.load(str(r18_int8.path))
    report = check_trt_ready(model)
    assert report and report.quantized, str(report)
    inits = _inits(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for n in qdq:   # symmetric int8 everywhere, read straight from the initializers
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    producers = _producers(model)
    kept_float = set(read_metadata(model)[1]["fcnseg.int8"]["subpixel_upsampling"])   # see test_subpixel.py
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept_float]
    for conv in convs:   # per-channel weights on axis 0
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        weight = inits[dq.input[0]]   # an int8 initializer, written so by ONNX Runtime (AddQDQPairToWeight=False)
        assert axis == 0 and weight.dtype == np.int8 and inits[dq.input[1]].shape == (weight.shape[0],)
        assert len(conv.input) < 3 or conv.input[2] in inits   # float bias, no int32 DQ


def test_residual_adds_take_qdq_on_the_residual_input_only(r18_int8):
    """NVIDIA's placement: each Add TensorRT fuses into a Conv reads that Conv's output as it is, and its other
    input through Q/DQ (the block input, a downsampling 1x1 Conv's output, FCN-8s's upsampled scores)."""
    model = onnx.load(str(r18_int8.path))
    producers = _producers(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 10   # 8 ResNet-18 blocks, 2 FCN-8s score fusions
    downsampled = []
    for add in adds:
        main = [name for name in add.input if producers[name].op_type == "Conv"]
        residual = [_qdq_source(producers, name) for name in add.input if name not in main]
        assert len(main) == 1 and len(residual) == 1 and residual[0] is not None, add.name
        source = producers[residual[0]]
        if source.op_type == "Conv":
            downsampled.append(source.name)
    assert sorted(downsampled) == [f"/model/backbone/layer{i}/layer{i}.0/downsample/downsample.0/Conv"
                                   for i in (2, 3, 4)]


def test_maxpool_between_quantized_layers_is_quantized(r18_int8):
    model = onnx.load(str(r18_int8.path))
    producers = _producers(model)
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert producers[_qdq_source(producers, pool.input[0])].op_type == "Relu"   # Conv -> Relu -> Q/DQ -> MaxPool
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == pool.output[0])
    assert q.input[1] == producers[pool.input[0]].input[1]   # its output shares its input's scale
    consumers = [n for n in model.graph.node if any(_qdq_source(producers, i) == pool.output[0] for i in n.input)]
    assert {n.op_type for n in consumers} == {"Conv", "Add"}   # layer1.0's conv1 and its residual Add


def test_default_graph_is_fp16_elsewhere_with_float32_io(r18_int8, r18_trt8):
    model = onnx.load(str(r18_int8.path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == 19 and r18_int8.high_precision == "fp16"
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io == {"input": TensorProto.FLOAT, "logits": TensorProto.FLOAT}   # as fcn-export fp16 keeps them
    inits = {t.name: t for t in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in dqs)   # FP16 scales
    assert read_metadata(model)[1]["fcnseg.int8"]["high_precision"] == "fp16"
    old = onnx.load(str(r18_trt8.path))   # TensorRT 8.x: opset 17, FP32 scales, the same INT8 layers
    assert next(o.version for o in old.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert r18_trt8.high_precision == "fp32" and check_trt_ready(old)
    old_inits = {t.name: t for t in old.graph.initializer}
    assert all(old_inits[n.input[1]].data_type == TensorProto.FLOAT for n in old.graph.node
               if n.op_type == "DequantizeLinear")
    assert sorted(n.name for n in old.graph.node if n.op_type == "DequantizeLinear") == sorted(n.name for n in dqs)


@needs_rtx
def test_tensorrt_for_rtx_runs_every_conv_in_int8_and_the_rest_in_fp16(r18_int8, r18_trt8):
    """As TensorRT for RTX parses the graphs: every quantized Conv INT8, FP32 only in the output's Cast (the graph
    output stays float32); the sub-pixel Conv (float by design, see test_subpixel.py) runs in FP16."""
    from fcnseg.export.inspection import inspect_onnx

    report = inspect_onnx(r18_int8.path, library="tensorrt_rtx")
    assert report.errors == []
    convs = {layer.name: layer.precision for layer in report.layers if layer.type in ("CONVOLUTION", "DECONVOLUTION")}
    assert len(convs) == 27 and convs.pop("/model/upscore8/up/Conv_subpixel") == "fp16"
    assert set(convs.values()) == {"int8"}
    assert [layer.type for layer in report.layers if layer.precision == "fp32"] == ["CAST"]
    pools = [layer.precision for layer in report.layers if layer.type == "POOLING"]
    assert pools == ["int8"]
    counts, old = report.counts(), inspect_onnx(r18_trt8.path, library="tensorrt_rtx").counts()
    assert counts["fp16"] > 40 and old["fp16"] == 0 and old["fp32"] > 40 and old["int8"] == counts["int8"]


def test_int8_result_and_metadata(r18_int8):
    r = r18_int8
    assert 0.0 <= r.miou_fp32 <= 1.0 and 0.0 <= r.miou_int8 <= 1.0
    assert r.drop == pytest.approx((r.miou_fp32 - r.miou_int8) * 100)
    assert len(r.class_deltas) == 21 and "person" in r.class_deltas
    # 4 asked, but calibration takes at most half of the 6 val images: the other 3 measure (issue 9)
    assert r.excluded == [] and r.reverted == [] and r.calibrated and r.num_calib_images == 3 and r.method == "minmax"
    assert r.float_by_design == ["/model/upscore8/up/Conv_subpixel"]   # reported as such, never as reverted
    assert len(r.evaluation_ids) == 3 and not set(r.calibration_ids) & set(r.evaluation_ids)
    meta, props = read_metadata(onnx.load(str(r.path)))
    assert meta.precision == "int8" and meta.arch == "fcn8s_resnet18" and meta.input_size == 64
    assert props["fcnseg.int8"]["method"] == "minmax" and props["fcnseg.int8"]["num_images"] == 3
    assert props["fcnseg.max_size"] == 2048


def test_cache_is_reused_without_calibrating(r18_int8, r18_onnx, tiny_voc, tmp_path, monkeypatch):
    doc = json.loads(r18_int8.cache_path.read_text())
    assert doc["method"] == "minmax" and doc["num_images"] == 4 and len(doc["model_sha256"]) == 64
    lo, hi = next(iter(doc["ranges"].values()))
    assert lo <= hi
    monkeypatch.setattr(I, "calibrate", lambda *a, **k: pytest.fail("calibration ran despite a matching cache"))
    again = I.quantize_int8(r18_onnx, tmp_path / "again.onnx", calib_root=tiny_voc, num_images=4,
                            method="minmax", cache=r18_int8.cache_path, eval_images=1, max_drop=100.0,
                            progress=False)
    assert not again.calibrated and check_trt_ready(again.path)
    first, second = _inits(onnx.load(str(r18_int8.path))), _inits(onnx.load(str(again.path)))
    scales = [k for k in first if k.endswith("_scale")]
    assert scales and all(np.array_equal(first[k], second[k]) for k in scales)


def test_cache_mismatch_recalibrates(r18_int8, r18_onnx, tiny_voc, tmp_path, caplog):
    cache = tmp_path / "calib.json"
    cache.write_text(r18_int8.cache_path.read_text())
    with caplog.at_level(logging.WARNING, logger="fcnseg"):
        r = I.quantize_int8(r18_onnx, tmp_path / "entropy.onnx", calib_root=tiny_voc, num_images=2,
                            method="entropy", cache=cache, eval_images=1, max_drop=100.0, progress=False)
    assert r.calibrated and "recalibrating" in caplog.text and "method" in caplog.text
    doc = json.loads(cache.read_text())
    assert doc["method"] == "entropy" and doc["num_images"] == 2
    assert check_trt_ready(r.path)


def test_empty_calibration_set_writes_nothing(r18_onnx, tiny_voc, tmp_path):
    out = tmp_path / "empty.onnx"
    with pytest.raises(FcnsegError, match="got an empty list"):
        I.quantize_int8(r18_onnx, out, calib_root=tiny_voc, calib_split="empty", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "kl"}, "calibration method"), ({"num_images": 0}, "--num-images"), ({"max_drop": -1}, "--max-drop"),
])
def test_bad_arguments(r18_onnx, tiny_voc, tmp_path, kwargs, match):
    with pytest.raises(FcnsegError, match=match):
        I.quantize_int8(r18_onnx, tmp_path / "x.onnx", calib_root=tiny_voc, progress=False, **kwargs)


def test_refuses_static_graph(r18_ckpt, tiny_voc, tmp_path):
    from fcnseg.export.torch_export import export_onnx

    static = export_onnx(r18_ckpt, tmp_path / "static.onnx", static_hw=(64, 64), verify=False).path
    with pytest.raises(FcnsegError, match="without --static"):
        I.quantize_int8(static, tmp_path / "q.onnx", calib_root=tiny_voc, progress=False)


class _CostEvaluator:
    """mIoU 1.0 minus the known ``costs`` (mIoU points) of every Conv whose weights are quantized; records which
    layers were float in each graph it evaluated."""

    def __init__(self, meta, costs):
        self.meta, self.costs, self.progress, self.seen = meta, dict(costs), False, []

    def confusion(self, model, desc):
        producers = {o: n for n in model.graph.node for o in n.output}
        convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
        self.seen.append({n.name for n in convs if producers.get(n.input[1]) is None})
        miou = 1.0 - sum(self.costs.get(n.name, 0.0) for n in convs if n.name not in self.seen[-1]) / 100
        right = int(round(miou * 1_000_000))   # both classes' IoU = right / 1e6: mIoU to 1e-6
        cm = ConfusionMatrix(2)
        cm.mat[:] = [[right, 1_000_000 - right], [0, right]]
        return cm

    def inputs(self, count):
        return [np.zeros((1, 3, 32, 32), np.float32)] * count


def _conv_chain(layers=5):
    """input -> (Conv 3x3 -> Relu) x layers -> logits: a graph the real quantizer handles in milliseconds."""
    from onnx import helper

    from fcnseg.core.metadata import ModelMetadata

    rng = np.random.default_rng(0)
    nodes, inits, ranges, x = [], [], {"input": (-2.0, 2.0)}, "input"
    for i in range(layers):
        out = "logits" if i == layers - 1 else f"r{i}"
        cout = 2 if i == layers - 1 else 4
        weight = rng.standard_normal((cout, 3 if i == 0 else 4, 3, 3), np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}" if out != "logits" else out], name=f"conv{i}",
                                      pads=[1, 1, 1, 1]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"c{i}"], [out], name=f"relu{i}"))
            ranges.update({f"c{i}": (-3.0, 3.0), out: (0.0, 3.0)})
        x = out
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelMetadata(arch="tiny", input_size=32, num_classes=2).to_props())
    return onnx.shape_inference.infer_shapes(model), ranges


def test_fallback_reverts_the_fewest_layers_by_measured_cost(caplog):
    """Measured costs, not graph order or an output-error proxy, decide: conv3 (0.6 points) then conv1 (0.5) bring a
    1.4-point drop within 0.5; conv2 (0.3) stays INT8. conv4 is float by design: never measured, never reverted."""
    base, ranges = _conv_chain()
    ev = _CostEvaluator(read_metadata(base)[0], {"conv1": 0.5, "conv2": 0.3, "conv3": 0.6, "conv4": 9.0})
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        q, cmp, reverted, costs = I._quantize_within_budget(base, ranges, ev, 0.5, 1, keep_float=["conv4"])
    assert [(r.node, round(r.cost, 3)) for r in reverted] == [("conv3", 0.6), ("conv1", 0.5)]
    assert {k: round(v, 3) for k, v in costs.items()} == {"conv0": 0.0, "conv1": 0.5, "conv2": 0.3, "conv3": 0.6}
    assert cmp.delta == pytest.approx(-0.3, abs=1e-3) and -cmp.delta <= 0.5
    # fp32, all INT8, one graph per measured layer (conv4 never among them), then the greedy steps: 2 of them
    assert len(ev.seen) == 2 + 4 + 2 and all("conv4" in s for s in ev.seen)
    assert [s - {"conv4"} for s in ev.seen[2:6]] == [{"conv0"}, {"conv1"}, {"conv2"}, {"conv3"}]
    producers = {o: n for n in q.graph.node for o in n.output}
    float_convs = {n.name for n in q.graph.node if n.op_type == "Conv" and producers.get(n.input[1]) is None}
    assert float_convs == {"conv1", "conv3", "conv4"}
    assert "float by design: conv4" in caplog.text and "reverted to float" in caplog.text
    assert "conv3 (+0.60)" in caplog.text
    # at INFO: all INT8, then each greedy step; the 4 single-layer measurements are DEBUG (the bar shows the loop)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    steps = [m.split(":")[1].split(")")[0].strip() for m in said if "layers reverted to float (latest" in m]
    assert steps == ["none", "conv3", "conv1"]


def test_fallback_within_budget_measures_nothing():
    base, ranges = _conv_chain(3)
    ev = _CostEvaluator(read_metadata(base)[0], {"conv1": 0.2})
    _, cmp, reverted, costs = I._quantize_within_budget(base, ranges, ev, 0.5, 1)
    assert reverted == [] and costs == {} and len(ev.seen) == 2 and cmp.delta == pytest.approx(-0.2, abs=1e-3)


def test_fallback_past_the_measured_limit_takes_the_proxy_suspects(monkeypatch):
    """More layers than MEASURED_LAYERS: the proxy picks which to measure; those past it follow in proxy order,
    each reported with what reverting it added."""
    base, ranges = _conv_chain()
    monkeypatch.setattr(I, "MEASURED_LAYERS", 2)
    monkeypatch.setattr(I, "rank_sensitivity", lambda *a, keep_float=(), **k: ["conv4", "conv0", "conv2", "conv1"])
    ev = _CostEvaluator(read_metadata(base)[0], {"conv4": 0.1, "conv0": 0.2, "conv2": 0.7, "conv1": 0.05})
    _, cmp, reverted, costs = I._quantize_within_budget(base, ranges, ev, 0.2, 1, keep_float=["conv3"])
    assert set(costs) == {"conv4", "conv0"}
    assert [(r.node, round(r.cost, 3)) for r in reverted] == [("conv0", 0.2), ("conv4", 0.1), ("conv2", 0.7)]
    assert -cmp.delta == pytest.approx(0.05, abs=1e-3)


def test_report_and_summary_name_each_reverted_layer_with_its_cost(r18_int8, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from fcnseg.export import chain
    from fcnseg.export.cli import main

    result = replace(r18_int8, excluded=["/a/Conv"], reverted=[I.RevertedLayer("/a/Conv", 0.4321)])
    report = I.int8_report(result, "val", "val", "tensorrt")
    assert report["reverted"] == [{"node": "/a/Conv", "cost_points": 0.4321}] and report["kept_in_float"] == ["/a/Conv"]
    assert report["float_by_design"] == ["/model/upscore8/up/Conv_subpixel"]
    monkeypatch.setattr(chain, "lower", lambda *a, **k: result)
    out = CliRunner().invoke(main, ["-q", "int8", str(tmp_path / "m.onnx"), "--calib-data", str(tmp_path),
                                    "-o", str(tmp_path / "q.onnx")])
    assert out.exit_code == 0, out.output
    assert "1 layers reverted to float for accuracy (cost in mIoU points: /a/Conv 0.43)" in out.output
    assert "float by design: /model/upscore8/up/Conv_subpixel, fp16 elsewhere" in out.output


def test_cpu_target_uses_onnxruntime_int8_kernels_and_is_not_trt_ready(tmp_path, tiny_voc, r18_onnx):
    """The CPU layout must turn into QLinearConv in ONNX Runtime (that is its whole point) and keep mIoU."""
    import collections

    import onnxruntime as ort

    res = I.quantize_int8(r18_onnx, tmp_path / "cpu.onnx", calib_root=tiny_voc, num_images=2, method="minmax",
                          eval_images=2, max_drop=100.0, target="cpu", progress=False)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearConv"] >= 10 and ops["FusedConv"] == 0
    assert not check_trt_ready(res.path)  # asymmetric activations: a CPU graph, and the checker says so
    meta, extra = read_metadata(onnx.load(str(res.path)))
    assert meta.precision == "int8" and extra["fcnseg.int8"]["target"] == "cpu"


def test_unknown_target_is_refused(tmp_path, tiny_voc, r18_onnx):
    with pytest.raises(FcnsegError, match="expected an INT8 target in tensorrt, cpu"):
        I.quantize_int8(r18_onnx, tmp_path / "x.onnx", calib_root=tiny_voc, target="gpu", progress=False)
    assert not (tmp_path / "x.onnx").exists()


def test_report_never_evaluates_where_it_calibrated(tiny_voc, tmp_path):
    """fcn-export int8 --report on a 1x1-conv graph: disjoint, deterministic calibration/evaluation ids (issue 9)."""
    import json

    from click.testing import CliRunner
    from onnx import TensorProto, helper, numpy_helper

    from fcnseg.export.cli import main
    from fcnseg.core.metadata import ModelMetadata

    w = np.random.default_rng(0).standard_normal((21, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[1, 1])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 21, "H", "W"])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelMetadata(arch="tiny", input_size=32).to_props())
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    reports = []
    for name in ("a", "b"):
        args = ["-q", "int8", str(tmp_path / "tiny.onnx"), "--calib-data", str(tiny_voc), "--num-images", "2",
                "--method", "minmax", "--no-progress", "-o", str(tmp_path / f"{name}.onnx"),
                "--report", str(tmp_path / f"{name}.json")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    r = reports[0]
    assert len(r["calibration_ids"]) == 2 and len(r["evaluation_ids"]) == 4
    assert not set(r["calibration_ids"]) & set(r["evaluation_ids"])
    assert r["calibration_ids"] == reports[1]["calibration_ids"]           # deterministic
    assert 0.0 <= r["miou_fp32"] <= 1.0 and 0.0 <= r["miou_int8"] <= 1.0 and r["kept_in_float"] == []
    assert r["reverted"] == [] and r["float_by_design"] == []


# --- high precision and TensorRT generation --------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"trt_version": "8.5", "high_precision": "fp16"}, "expected --high-precision fp32 for TensorRT 8.5"),
    ({"target": "cpu", "high_precision": "fp16"}, "expected --high-precision fp32 with --target cpu"),
    ({"high_precision": "bf16"}, "expected --high-precision fp16 or fp32, got 'bf16'"),
    ({"trt_version": "ten"}, "expected --trt-version like 8.5, 8.6, 10, 11, rtx"),
])
def test_impossible_precisions_are_refused_before_calibrating(r18_onnx, tiny_voc, tmp_path, monkeypatch, kwargs,
                                                              match):
    monkeypatch.setattr(I, "calibrate", lambda *a, **k: pytest.fail("calibrated before refusing"))
    with pytest.raises(FcnsegError, match=match):
        I.quantize_int8(r18_onnx, tmp_path / "x.onnx", calib_root=tiny_voc, progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, version, strongly_typed, also_for, want", [
    ({}, "10.13.0", True, None, (None, None)),            # strongly typed: the default graph (fp16 elsewhere)
    ({}, "8.6.1", False, None, ("8.6.1", "fp32")),        # 8.x: opset 17, its INT8 + FP16 flags mix precisions
    ({"high_precision": "fp16"}, "8.5.2", False, None, ("8.5.2", "fp32")),   # trt --int8 --fp16 on JetPack 5
    ({}, "10.13.0", True, "8.5", ("8.5", "fp32")),        # the engine must parse on 8.5 too
    ({"trt_version": "11"}, "8.6.1", False, None, ("11", None)),   # asked for: kept
])
def test_for_builder_picks_the_graph_the_tensorrt_at_hand_builds(options, version, strongly_typed, also_for, want):
    flags = SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed else SimpleNamespace(EXPLICIT_BATCH=0)
    trt = SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags)
    got = I.for_builder(I.Int8Options(**options), trt, also_for)
    assert (got.trt_version, got.high_precision) == want


def test_trt8_graph_needs_opset_17(r18_ckpt, tiny_voc, tmp_path):
    from fcnseg.export.torch_export import export_onnx

    opset18 = export_onnx(r18_ckpt, tmp_path / "m18.onnx", opset=18, verify=False).path
    with pytest.raises(FcnsegError, match="expected opset <= 17 for TensorRT 8.x, got 18"):
        I.quantize_int8(opset18, tmp_path / "q.onnx", calib_root=tiny_voc, trt_version="8.6", progress=False)
    assert not (tmp_path / "q.onnx").exists()


# --- parity: ONNX Runtime and OpenVINO run the one artifact ------------------------------------------------

class _FixedOrt(BaseBackend):
    """ONNX Runtime as the runtime must run an FP16 Q/DQ graph (``fcnseg.export.fp16.ORT_DISABLED_FOR_FP16_QDQ``)."""

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path):
        super().__init__()
        model = onnx.load(str(path))
        self.metadata = read_metadata(model)[0]
        self.session = ort_qdq_fp16_session(model)

    def _infer(self, batch):
        return {"logits": self.session.run(["logits"], {"input": batch})[0]}


def _miou_delta(fp32, int8, predictor, tiny_voc, ids):
    meta = read_metadata(onnx.load(str(int8)))[0]
    layout = for_model(tiny_voc, "val", meta.num_classes).subset(ids)
    ref = evaluate(Segmenter.load(fp32, backend="onnxruntime"), layout, meta.num_classes)
    return compare_miou(ref, evaluate(predictor(int8), layout, meta.num_classes), tolerance=TOLERANCES["int8"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_fp16_elsewhere_graph_keeps_int8_parity(r18_int8, r18_trt8, r18_onnx, tiny_voc, runtime):
    """mIoU vs the FP32 graph on the images calibration did not see, within fcn-eval's INT8 tolerance; and (the
    random-weight model's mIoU is near 0, so this is what can fail) the masks of the INT8 graph with FP32 elsewhere."""
    if runtime == "openvino":
        pytest.importorskip("openvino")
        predictor = lambda p: Segmenter.load(p, backend="openvino", precision_hint="f32")  # noqa: E731
    else:
        predictor = lambda p: Segmenter(_FixedOrt(p))  # noqa: E731
    cmp = _miou_delta(r18_onnx, r18_int8.path, predictor, tiny_voc, r18_int8.evaluation_ids)
    assert cmp, f"{runtime}: {cmp.delta:+.2f} mIoU points"
    meta = read_metadata(onnx.load(str(r18_int8.path)))[0]
    images = [img for img, _ in for_model(tiny_voc, "val", meta.num_classes).subset(r18_int8.evaluation_ids)]
    ref, got = Segmenter.load(r18_trt8.path, backend="onnxruntime"), predictor(r18_int8.path)
    assert np.mean([np.mean(ref(img) == got(img)) for img in images]) > 0.9


def test_onnxruntime_breaks_fp16_qdq_unless_weight_bias_quantization_is_off(r18_int8, r18_trt8, random_input):
    """The reason for ``ORT_DISABLED_FOR_FP16_QDQ``: ONNX Runtime's int32 bias rewrite overflows in FP16."""
    x = random_input(1, 64, 80)
    ref = run_session(ort_session(onnx.load(str(r18_trt8.path))), x)["logits"]   # same Q/DQ, FP32 elsewhere
    model = onnx.load(str(r18_int8.path))
    fixed = run_session(ort_qdq_fp16_session(model), x)["logits"]
    assert (fixed.argmax(1) == ref.argmax(1)).mean() > 0.95
    plain = run_session(ort_session(model), x)["logits"]
    if (plain.argmax(1) == ref.argmax(1)).mean() > 0.95:
        pytest.skip("this ONNX Runtime runs FP16 Q/DQ correctly with every optimizer on")


def test_the_runtime_runs_fp16_qdq_graphs_on_onnxruntime(r18_int8, random_input):
    """The runtime's ONNX Runtime backend turns off FP16_QDQ_BROKEN for such graphs (read from their metadata)."""
    from fcnseg.runtime.backends.onnxruntime import FP16_QDQ_BROKEN

    from fcnseg.export.fp16 import ORT_DISABLED_FOR_FP16_QDQ

    assert tuple(FP16_QDQ_BROKEN) == tuple(ORT_DISABLED_FOR_FP16_QDQ)   # the runtime keeps its own copy
    x = random_input(1, 64, 80)
    fixed = run_session(ort_qdq_fp16_session(onnx.load(str(r18_int8.path))), x)["logits"]
    with Segmenter.load(r18_int8.path, backend="onnxruntime") as seg:
        got = seg.backend.infer(x)["logits"]
    assert (got.argmax(1) == fixed.argmax(1)).mean() > 0.99


# --- int8 weights from ONNX Runtime (AddQDQPairToWeight=False) -------------------------------------------------

def test_int8_weights_are_what_the_qdq_pairs_compute(r18_int8, r18_onnx, random_input):
    """ONNX Runtime's int8 weight initializers (``AddQDQPairToWeight=False``) equal QuantizeLinear applied to the float
    weights (the layout with a Q/DQ pair on each weight, computed by ONNX's reference implementation): same bytes,
    same outputs, same checker verdict, a quarter of the file size."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(r18_onnx))
    keep = subpixel_upsampling(model)
    base = onnx.shape_inference.infer_shapes(model)
    ranges = {k: tuple(v) for k, v in json.loads(r18_int8.cache_path.read_text())["ranges"].items()}
    pairs = replace(I.TARGETS["tensorrt"], extra_options={**I.TRT_EXTRA_OPTIONS, "AddQDQPairToWeight": True})
    paired, ours = (I.quantize_qdq(base, ranges, exclude=keep, target=t) for t in (pairs, I.TARGETS["tensorrt"]))
    pinits, oinits = {t.name: t for t in paired.graph.initializer}, {t.name: t for t in ours.graph.initializer}
    pprod, oprod = _producers(paired), _producers(ours)
    compared = 0
    for conv in (n for n in ours.graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in keep):
        weight = oinits[oprod[conv.input[1]].input[0]]
        q = pprod[pprod[conv.input[1]].input[0]]   # Conv <- DQ <- Q(float weight) in the paired layout
        assert q.op_type == "QuantizeLinear" and weight.data_type == TensorProto.INT8
        axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
        node = onnx.helper.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], axis=axis)
        graph = onnx.helper.make_graph([node], "q", [], [onnx.helper.make_tensor_value_info("q", TensorProto.INT8, None)],
                                       [numpy_helper.from_array(numpy_helper.to_array(pinits[n]), k)
                                        for k, n in zip("wsz", q.input)])
        want = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])).run(
            None, {})[0]
        assert numpy_helper.to_array(weight).tobytes() == want.astype(np.int8).tobytes(), conv.name
        compared += 1
    assert compared == 26
    x = random_input(1, 64, 80)
    np.testing.assert_array_equal(run_session(ort_session(paired), x)["logits"],
                                  run_session(ort_session(ours), x)["logits"])
    a, b = check_trt_ready(paired), check_trt_ready(ours)
    assert bool(a) == bool(b) is True and a.violations == b.violations and a.warnings == b.warnings
    assert ours.ByteSize() < paired.ByteSize() / 3


# --- the CLI ---------------------------------------------------------------------------------------------------

def test_cli_int8_precision_options(r18_int8, r18_onnx, tiny_voc, tmp_path):
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    common = ["-q", "int8", str(r18_onnx), "--calib-data", str(tiny_voc), "--num-images", "4", "--method", "minmax",
              "--cache", str(r18_int8.cache_path), "--eval-images", "2", "--max-drop", "100", "--no-progress"]
    bad = CliRunner().invoke(main, common + ["--trt-version", "8.6", "--high-precision", "fp16", "-o",
                                             str(tmp_path / "bad.onnx")])
    assert bad.exit_code == 2 and "expected --high-precision fp32 for TensorRT 8.6" in bad.output
    ok = CliRunner().invoke(main, common + ["--trt-version", "8.6", "-o", str(tmp_path / "old.onnx")])
    assert ok.exit_code == 0, ok.output
    assert ok.output.rstrip().endswith("fp32 elsewhere")
    model = onnx.load(str(tmp_path / "old.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17


def test_cli_trt_int8_with_fp16_is_int8_with_fp16_elsewhere(r18_onnx, tmp_path, monkeypatch):
    """``fcn-export trt --int8 --fp16`` is no longer refused: it lowers with high_precision fp16."""
    from click.testing import CliRunner

    from fcnseg.export import chain
    from fcnseg.export.cli import main

    seen = {}
    monkeypatch.setattr(chain, "engine", lambda model, output, engine, *, int8, save_onnx: seen.update(
        precision=engine.precision, high_precision=int8.high_precision) or output)
    result = CliRunner().invoke(main, ["trt", str(r18_onnx), "--int8", "--fp16", "-o", str(tmp_path / "m.plan")])
    assert result.exit_code == 0, result.output
    assert seen == {"precision": "int8", "high_precision": "fp16"}
