"""Charts of the benchmarks: fcn-bench's beside its JSON (or CSV), the demo's and the CPU benchmark's beside their
report, linked from the Markdown; and the progress bars of fcn-bench's timed rounds."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcnseg.benchmarks import cpu_speed, steps
from fcnseg.benchmarks.bench import STAGES, BenchResult, Stats, bench_shape, latency_png
from fcnseg.benchmarks.cli import bench_main
from fcnseg.benchmarks.pipeline import Artifacts, PipelineConfig
from fcnseg.benchmarks.report import Report, run_steps
from fcnseg.benchmarks.roofline import roofline, roofline_chart
from fcnseg.core.metrics import ConfusionMatrix
from fcnseg.eval.evaluate import ModelEval
from fcnseg.eval.parity import ParityResult, compare_miou
from fcnseg.eval.plots import CHART_TITLE

FAST = ["--iters", "2", "--warmup", "0", "--rounds", "1", "--shape", "16x24"]


def chart_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert img.info["Software"] == "fcnseg" and img.info["Title"].startswith(CHART_TITLE)
        return np.asarray(img.convert("RGB"))


def result(label: str, infer_ms: float, shape=(16, 24), backend="onnxruntime", precision="fp32") -> BenchResult:
    stage = {s: Stats.of([(infer_ms if s == "infer" else 0.5) / 1e3]) for s in STAGES}
    return BenchResult(model=f"{label}.onnx", backend=backend, precision=precision, shape=shape, batch=1, iters=1,
                       e2e=Stats.of([(infer_ms + 2) / 1e3]), stages=stage, images_per_s=1.0, peak_host_mb=1.0,
                       label=label)


def test_latency_chart_follows_the_stage_medians():
    a = chart_pixels(latency_png([result("a", 4.0), result("b", 8.0)]))
    b = chart_pixels(latency_png([result("a", 4.0), result("b", 16.0)]))
    assert a.shape != b.shape or (a != b).any()


def test_roofline_chart_of_a_roofline_summary():
    rows = [result("pytorch", 100.0), result("int8", 20.0, precision="int8")]
    summary = roofline(rows, macs=10**9, peaks={"fp32": 20.0, "bf16": 40.0, "int8": 100.0})
    faster = roofline([result("pytorch", 50.0), rows[1]], macs=10**9, peaks=summary["peaks_gmacs"])
    a, b = chart_pixels(roofline_chart(summary)), chart_pixels(roofline_chart(faster))
    assert a.shape != b.shape or (a != b).any()


def test_fcn_bench_writes_its_latency_chart_beside_the_json(tiny_conv_onnx, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(bench_main, ["--model", str(tiny_conv_onnx), *FAST, "--json", str(out)])
    assert r.exit_code == 0, r.output
    chart_pixels((tmp_path / "b_latency.png").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b_latency.png"]
    r = CliRunner().invoke(bench_main, ["--model", str(tiny_conv_onnx), *FAST, "--csv", str(tmp_path / "c.csv")])
    assert r.exit_code == 0, r.output
    chart_pixels((tmp_path / "c_latency.png").read_bytes())   # beside --csv when there is no --json


def test_fcn_bench_refuses_a_foreign_file_where_its_chart_goes_before_timing(tiny_conv_onnx, tmp_path):
    (tmp_path / "b_latency.png").write_bytes(b"not ours")
    r = CliRunner().invoke(bench_main, ["--model", str(tiny_conv_onnx), *FAST, "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 2 and "b_latency.png exists" in r.output and "--force" in r.output
    assert not (tmp_path / "b.json").exists() and (tmp_path / "b_latency.png").read_bytes() == b"not ours"
    r = CliRunner().invoke(bench_main, ["--model", str(tiny_conv_onnx), *FAST, "--json", str(tmp_path / "b.json"),
                                        "--force"])
    assert r.exit_code == 0, r.output
    chart_pixels((tmp_path / "b_latency.png").read_bytes())


def run_and_read(steps_: list, cfg: PipelineConfig, art: Artifacts, names: list) -> None:
    """Run the steps as the demo does; each chart is a PNG beside report.md, which links it in its step."""
    report = run_steps(steps_, cfg, art, Report("report", "t"), cfg.out)
    assert [s.status for s in report.stages] == ["ok"] * len(steps_), report.stages
    md = (cfg.out / "report.md").read_text()
    for name in names:
        chart_pixels((cfg.out / name).read_bytes())
        assert f"]({name})" in md


def test_demo_bench_step_writes_and_links_its_latency_chart(tmp_path, monkeypatch):
    from fcnseg.benchmarks import bench

    monkeypatch.setattr(bench, "bench_models", lambda *a, **kw: [result("a", 3.0), result("b", 6.0)])
    run_and_read([("bench tensorrt", steps.bench_step("bench tensorrt", ("fp32",)))], PipelineConfig(tmp_path),
                 Artifacts(models={"fp32": "a.onnx"}), ["bench_tensorrt_latency.png"])


def evaluated(path: str, pred, backend: str) -> ModelEval:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 2]), np.array(pred))
    r = cm.compute()
    return ModelEval(path=path, format="ONNX", precision="fp32", miou=r["miou"], iou=list(r["iou"]),
                     classes=["background", "cat", "dog"], backend=backend, cm=cm)


def test_demo_parity_step_writes_and_links_the_iou_and_confusion_charts(tmp_path, monkeypatch):
    ref, other = evaluated("ckpt.pth", [0, 0, 1, 2], "pytorch"), evaluated("m.onnx", [0, 1, 1, 1], "openvino")
    other.comparison = compare_miou(ref.cm, other.cm, tolerance=100.0, classes=ref.classes)
    monkeypatch.setattr(steps, "compare_models", lambda *a, **kw: ParityResult([ref, other]))
    monkeypatch.setattr(steps, "_true_fp32", contextlib.nullcontext)   # no PyTorch reference runs here
    run_and_read([("parity", steps.step_parity)], PipelineConfig(tmp_path),
                 Artifacts(data=tmp_path, checkpoint=tmp_path / "ckpt.pth"), ["parity_iou.png", "parity_confusion.png"])


def test_cpu_benchmark_writes_and_links_latency_and_roofline_charts(tmp_path, monkeypatch):
    from fcnseg.benchmarks.bench import ModelSpec

    rows = [result("pytorch", 40.0, backend="pytorch"), result("int8", 10.0, backend="openvino", precision="int8")]
    monkeypatch.setattr(cpu_speed, "cpu_specs", lambda art: [ModelSpec("a.onnx", "onnxruntime")])
    monkeypatch.setattr(cpu_speed, "bench_models", lambda *a, **kw: rows)
    monkeypatch.setattr(cpu_speed, "openvino_available", lambda: True)
    monkeypatch.setattr(cpu_speed, "graph_macs", lambda path, shape: 2 * 10**9)
    monkeypatch.setattr(cpu_speed, "conv_peaks", lambda **kw: {"fp32": 100.0, "bf16": 200.0, "int8": 400.0})
    run_and_read([("bench", cpu_speed.step_cpu_bench), ("roofline", cpu_speed.step_roofline)],
                 PipelineConfig(tmp_path), Artifacts(models={"fp32": tmp_path / "a.onnx"}),
                 ["latency.png", "roofline.png"])


class RecordingBar:
    """Stands in for tqdm: records each bar's options and updates."""

    bars: list = []

    def __init__(self, iterable=None, **kw):
        self.kw, self.n, self.closed = kw, 0, False
        RecordingBar.bars.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_each_model_gets_a_bar_over_its_timed_rounds(tiny_conv_onnx, monkeypatch):
    import tqdm

    from fcnseg.benchmarks.bench import ModelSpec

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    RecordingBar.bars = []
    specs = [ModelSpec(str(tiny_conv_onnx), "onnxruntime", label="first"), ModelSpec(str(tiny_conv_onnx),
                                                                                      "onnxruntime", label="second")]
    bench_shape(specs, (16, 16), 1, warmup=0, iters=3, rounds=3, settle_s=0.0)
    bars = RecordingBar.bars
    assert [(b.kw["desc"], b.kw["total"], b.kw["position"], b.n) for b in bars] == [("first", 3, 0, 3),
                                                                                    ("second", 3, 1, 3)]
    assert all(b.closed and b.kw["disable"] is None and b.kw["unit"] == "round" for b in bars)


@pytest.mark.parametrize("command", ["fcnseg.eval.cli", "fcnseg.benchmarks.cli"])
def test_help_does_not_import_matplotlib(command):
    import subprocess
    import sys

    code = f"import sys, {command}; print('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
