"""FP32 -> INT8 Q/DQ: TensorRT-ready placement, calibration cache reuse, mIoU report, sensitive-layer fallback."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fcnseg.datasets import open_dataset as VOCLayout
from fcnseg.export import calibration as C
from fcnseg.export import int8 as I
from fcnseg.export.check import check_trt_ready
from fcnseg.export.onnx_graph import read_metadata
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metrics import ConfusionMatrix


def _inits(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


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
    producers = {o: n for n in model.graph.node for o in n.output}
    kept_float = set(read_metadata(model)[1]["fcnseg.int8"]["subpixel_upsampling"])   # see test_subpixel.py
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept_float]
    for conv in convs:   # per-channel weights on axis 0
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        weight = inits[dq.input[0]]   # int8 initializer: the weight QuantizeLinear is folded (export/qdq.py)
        assert axis == 0 and weight.dtype == np.int8 and inits[dq.input[1]].shape == (weight.shape[0],)
        assert len(conv.input) < 3 or conv.input[2] in inits   # float bias, no int32 DQ
    for add in (n for n in model.graph.node if n.op_type == "Add"):   # nothing between a Conv and its Add
        for name in add.input:
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                assert producers[producers[dq.input[0]].input[0]].op_type not in ("Conv", "ConvTranspose")


def test_int8_result_and_metadata(r18_int8):
    r = r18_int8
    assert 0.0 <= r.miou_fp32 <= 1.0 and 0.0 <= r.miou_int8 <= 1.0
    assert r.drop == pytest.approx((r.miou_fp32 - r.miou_int8) * 100)
    assert len(r.class_deltas) == 21 and "person" in r.class_deltas
    # 4 asked, but calibration takes at most half of the 6 val images: the other 3 measure (issue 9)
    assert r.excluded == [] and r.calibrated and r.num_calib_images == 3 and r.method == "minmax"
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


class _FakeEvaluator:
    """mIoU 1.0 unless one of ``harmful`` Conv nodes has quantized weights (then 0.5): a known budget breaker."""

    def __init__(self, real, harmful):
        self.real, self.harmful, self.meta, self.calls = real, set(harmful), real.meta, 0

    def confusion(self, model, desc):
        self.calls += 1
        producers = {o: n for n in model.graph.node for o in n.output}
        hurt = any(n.name in self.harmful and producers.get(n.input[1]) is not None for n in model.graph.node)
        cm = ConfusionMatrix(2)
        target = np.array([0, 0, 1, 1], dtype=np.uint8)
        cm.update(target, np.array([0, 1, 1, 1] if hurt else [0, 0, 1, 1], dtype=np.uint8))
        return cm

    def inputs(self, count):
        return self.real.inputs(count)


def test_sensitive_layers_stay_float_until_budget_met(r18_onnx, tiny_voc, caplog, monkeypatch):
    base = onnx.shape_inference.infer_shapes(onnx.load(str(r18_onnx)))
    meta, _ = read_metadata(base)
    ranges = C.calibrate(base, C.VOCCalibrationReader(VOCLayout(tiny_voc, "val"), meta, num_images=2, progress=False),
                         "minmax")
    convs = [n.name for n in base.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    order = I.rank_sensitivity(base, ranges, I._Evaluator(VOCLayout(tiny_voc, "val"), 1, meta, False).inputs(1))
    assert sorted(order) == sorted(convs)
    harmful = order[:2]   # the two layers the ranking itself calls most sensitive
    ev = _FakeEvaluator(I._Evaluator(VOCLayout(tiny_voc, "val"), 1, meta, False), harmful)
    monkeypatch.setattr(I, "rank_sensitivity", lambda *a, **k: order)   # measured above; not twice
    with caplog.at_level(logging.INFO, logger="fcnseg"):
        q, cmp, excluded = I._quantize_within_budget(base, ranges, ev, 1.0, 1)
    assert excluded == harmful                      # the bisection finds exactly the prefix that is needed
    assert cmp.delta == 0 and ev.calls <= 2 + int(np.ceil(np.log2(len(order)))) + 1
    assert "kept in float" in caplog.text and harmful[0] in caplog.text
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            quantized = producers.get(node.input[1]) is not None
            assert quantized == (node.name not in harmful), node.name
    assert check_trt_ready(q)


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
