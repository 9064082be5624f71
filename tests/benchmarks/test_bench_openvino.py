"""fcn-bench with OpenVINO: one row per backend and mode with the backend and precision recorded, the note when
OpenVINO is missing, and the CPU benchmark's "ahead of OpenVINO" ratio."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fcnseg.benchmarks.bench import ModelSpec, bench_models
from fcnseg.benchmarks.cli import bench_main
from fcnseg.core.metadata import ModelMetadata

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3x3 conv net (3 -> 21 classes) with logits output and fcnseg metadata."""
    w = np.random.default_rng(0).normal(size=(21, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 21, "H", "W"])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelMetadata(arch="tiny").to_props())
    path = tmp_path_factory.mktemp("bench_ov") / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_fcn_bench_rows_per_backend_and_mode_record_backend_and_hint(tiny, tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(bench_main, ["--model", tiny, "--shape", "24x40", "--iters", "2", "--warmup", "2",
                                        "--rounds", "1", "--backend", "openvino", "--backend", "onnxruntime",
                                        "--precision-hint", "bf16", "--model-only", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rows = [(d["backend"], d["mode"], d["precision_hint"]) for d in json.loads(out.read_text())]
    assert rows == [("openvino", "e2e", "bf16"), ("openvino", "model", "bf16"), ("onnxruntime", "e2e", ""),
                    ("onnxruntime", "model", "")]
    assert "model only" in r.output and "OpenVINO is not installed" not in r.output


def test_fcn_bench_says_when_openvino_is_missing(tiny):
    code = ("import sys; sys.modules['openvino'] = None; from fcnseg.benchmarks.cli import bench_main; "
            "bench_main()")
    r = subprocess.run([sys.executable, "-c", code, "--model", tiny, "--shape", "16x16", "--iters", "1",
                        "--warmup", "0", "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout and "note: OpenVINO is not installed" in r.stdout


def test_cpu_speed_summary_compares_fcnseg_with_openvino_model_only(tiny):
    from fcnseg.benchmarks.cpu_speed import summarize

    specs = [ModelSpec(tiny, "onnxruntime", mode="model", label="baseline"), ModelSpec(tiny, "openvino"),
             ModelSpec(tiny, "openvino", mode="model")]
    results = bench_models(specs, [(20, 20)], [1], warmup=2, iters=2, rounds=1)
    summary = summarize(results)
    assert list(summary["rows"])[0] == "baseline" and summary["rows"]["baseline"]["speedup_vs_pytorch"] == 1.0
    ratio = summary["ahead_of_openvino"]["tiny.onnx"]
    assert ratio == pytest.approx(results[2].e2e.median / results[1].e2e.median)
