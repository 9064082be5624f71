"""`make bench-cpu` end to end on a small input: every row, the roofline and the summary, in one run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("openvino")

from fcnseg.benchmarks.cpu_speed import (BEFORE_AFTER, CPU_ROWS, before_after, cpu_speed_config, row_label,  # noqa: E402
                                         run_cpu_speed)


@pytest.mark.slow
def test_every_row_is_measured_and_set_against_this_cpus_peaks(tmp_path):
    out = tmp_path / "fcn8s_resnet18"
    report = run_cpu_speed(cpu_speed_config(out, arch="fcn8s_resnet18", size=64, iters=4, calib_images=2))
    assert report.exit_code == 0, [(s.name, s.status, s.message) for s in report.stages]
    assert [s.status for s in report.stages] == ["ok"] * len(report.stages)
    data = json.loads((out / "cpu_speed.json").read_text())["data"]
    labels = [row_label(*row) for row in CPU_ROWS]
    assert [r["label"] for r in data["bench"]] == labels
    roof = data["roofline"]
    assert list(roof["rows"]) == labels and roof["gmac"] > 0
    for label, row in roof["rows"].items():
        bench = next(r for r in data["bench"] if r["label"] == label)
        assert row["gmacs"] == pytest.approx(roof["gmac"] * 1e3 / bench["e2e"]["median"])   # MACs / time
        assert row["peak_share"] == pytest.approx(row["gmacs"] / roof["peaks_gmacs"][row["ran_in"]])
    assert roof["int8_ceiling_vs_first"] == pytest.approx(roof["peaks_gmacs"]["int8"] / roof["rows"][labels[0]]["gmacs"])
    assert data["summary"]["rows"][labels[0]]["speedup_vs_pytorch"] == 1.0
    assert "INT8 ceiling vs the first row" in (out / "cpu_speed.md").read_text()
    assert list(data["summary"]["before_after"]) == list(BEFORE_AFTER)   # every path, before and after, this run
    assert "FP32 graph, OpenVINO: after vs before x" in (out / "cpu_speed.md").read_text()


def _row(key, backend, mode, hint, ms, precision="fp32", ran_hint=""):
    e2e = SimpleNamespace(median=ms)
    return SimpleNamespace(label=row_label(key, backend, mode, hint), model=f"/m/{key}.onnx", backend=backend,
                           mode=mode, precision=precision, precision_hint=ran_hint, e2e=e2e)


def test_before_after_sets_each_default_path_against_pytorch_and_openvino_model_only():
    rows = [_row("pytorch", "pytorch", "model", None, 100.0),
            _row("fp32", "openvino", "e2e", "f32", 50.0, ran_hint="f32"),
            _row("fp32", "openvino", "e2e", None, 25.0, ran_hint="bf16"),
            _row("fp32", "openvino", "model", None, 30.0, ran_hint="bf16"),
            _row("int8_fp32", "openvino", "e2e", None, 20.0, "int8", "bf16"),
            _row("int8", "openvino", "e2e", None, 16.0, "int8", "bf16"),
            _row("int8", "openvino", "model", None, 20.0, "int8", "bf16")]
    got = before_after(rows)
    assert list(got) == ["FP32 graph, OpenVINO", "INT8 graph, OpenVINO"]   # no ONNX Runtime rows: no such pair
    fp32, int8 = got["FP32 graph, OpenVINO"], got["INT8 graph, OpenVINO"]
    assert (fp32["before"]["vs_pytorch"], fp32["after"]["vs_pytorch"], fp32["after_vs_before"]) == (2.0, 4.0, 2.0)
    assert (fp32["before"]["vs_openvino_model_only"], fp32["after"]["vs_openvino_model_only"]) == (0.6, 1.2)
    assert (fp32["before"]["precision_hint"], fp32["after"]["precision_hint"]) == ("f32", "bf16")
    assert int8["before"]["vs_openvino_model_only"] is None   # no model-only row of the old graph in this run
    assert (int8["after"]["vs_openvino_model_only"], int8["after_vs_before"]) == (1.25, 1.25)
