"""`make bench-cpu` end to end on a small input: every row, the roofline and the summary, in one run."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")

from fcnseg.benchmarks.cpu_speed import CPU_ROWS, cpu_speed_config, row_label, run_cpu_speed  # noqa: E402


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
