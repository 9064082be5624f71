"""fcn-bench --triton against a real Triton server (bundled tritonserver, .venv-triton) on 127.0.0.1.

The served model is a 1x1-conv ONNX graph with fcnseg metadata (tiny on purpose: this checks the load
client's counting, percentiles, in-process ratio and JSON, not the speed of a network).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fcnseg.benchmarks.cli import bench_main
from fcnseg.benchmarks.triton_bench import run_load, synthetic_images
from fcnseg.runtime import FcnsegError, ModelMetadata


def tiny_onnx(path, classes: int = 4):
    """1x1 conv 3 -> ``classes`` with dynamic N/H/W and fcnseg metadata (input size 16)."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(classes, 3, 1, 1)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "W"], ["logits"], kernel_shape=[1, 1])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "H", "W"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, ModelMetadata(arch="tiny", num_classes=classes, input_size=16).to_props())
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fcnseg.serve import TritonInstall, serve_model

    try:
        install = TritonInstall.find()
    except FcnsegError as e:
        pytest.skip(f"needs the tritonserver bundled by nvidia-pytriton in .venv-triton (make test creates it): {e}")
    model = tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    with serve_model(model, install=install, max_queue_delay_us=2000) as server:
        server.wait_ready(timeout=90)
        yield server, model


def test_fcn_bench_triton_table_and_json(served, tmp_path):
    server, model = served
    out = tmp_path / "triton.json"
    args = ["--triton", server.http_url, "--model", str(model), "--shape", "24x32", "--concurrency", "1",
            "--concurrency", "4", "--requests", "5", "--json", str(out)]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("| ") for line in result.stdout.splitlines()) == 2 + 2     # header, rule, 2 rows
    rows = json.loads(out.read_text())
    assert [(r["concurrency"], r["requests"], r["failed"]) for r in rows] == [(1, 5, 0), (4, 20, 0)]
    for r in rows:
        assert r["e2e"]["median"] <= r["e2e"]["p90"] <= r["e2e"]["p99"] <= r["e2e"]["max"]
        assert r["inprocess"] > 0 and r["ratio"] == pytest.approx(r["throughput"] / r["inprocess"])
    again = CliRunner().invoke(bench_main, args)          # its own JSON may be replaced
    assert again.exit_code == 0, again.output


def test_grpc_load_and_unknown_model(served):
    server, _ = served
    images = synthetic_images([(20, 30), (31, 17)], count=2)
    result = run_load(server.grpc_url, "fcnseg", images, concurrency=2, requests=3, protocol="grpc")
    assert (result.requests, result.failed, result.first_error) == (6, 0, "")
    missing = CliRunner().invoke(bench_main, ["--triton", server.http_url, "--triton-model", "nope"])
    assert missing.exit_code == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "'nope'" in missing.stderr
