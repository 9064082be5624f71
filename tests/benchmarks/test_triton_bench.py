"""fcn-bench --triton against a real Triton server (bundled tritonserver, .venv-triton) on 127.0.0.1.

The served model is the 1x1-conv ONNX graph with fcnseg metadata of tests/conftest.py (tiny on purpose: this
checks the load client's counting, percentiles, in-process ratio and JSON, not the speed of a network).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fcnseg.benchmarks import triton_bench
from fcnseg.benchmarks.bench import Stats
from fcnseg.benchmarks.cli import bench_main
from fcnseg.benchmarks.triton_bench import LoadResult, run_load, synthetic_images


@pytest.fixture(scope="module")
def served(triton_install, tiny_conv_onnx):
    from fcnseg.serve import serve_model

    with serve_model(tiny_conv_onnx, install=triton_install, max_queue_delay_us=2000) as server:
        server.wait_ready(timeout=90)
        yield server, tiny_conv_onnx


def test_fcn_bench_triton_table_and_json(served, tmp_path, monkeypatch):
    from fcnseg.runtime import Segmenter

    server, model = served
    loads = []
    real_load = Segmenter.load.__func__
    monkeypatch.setattr(Segmenter, "load",
                        classmethod(lambda cls, *a, **kw: loads.append(a) or real_load(cls, *a, **kw)))
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
    assert len(loads) == 1                                # the in-process model is loaded once, not per level
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


def test_options_that_do_not_apply_to_triton_are_refused_in_one_line(tmp_path):
    args = ["--triton", "127.0.0.1:1", "--csv", str(tmp_path / "b.csv"), "--batch", "2", "--model-only",
            "--engine", "m.plan", "--backend", "onnxruntime", "--power"]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    for option in ("--csv", "--batch", "--model-only", "--engine", "--backend", "--power"):
        assert option in result.stderr.split("; try")[0]
    assert "--json," not in result.stderr.split("; try")[0] and not list(tmp_path.iterdir())


def test_triton_json_stays_strict_when_every_request_of_a_level_failed(tmp_path, monkeypatch):
    failed = LoadResult("127.0.0.1:1/fcnseg", 1, 3, 3, 0.5, 0.0, Stats.of([float("nan")]), first_error="refused")
    monkeypatch.setattr(triton_bench, "bench_triton", lambda *a, **kw: [failed])
    out = tmp_path / "triton.json"
    triton_bench.run_triton_cli(triton_bench.TritonLoad("127.0.0.1:1", concurrency=[1], requests=3), [], [(24, 32)],
                                str(out))
    (row,) = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert (row["failed"], row["e2e"]["median"], row["first_error"]) == (3, None, "refused")
