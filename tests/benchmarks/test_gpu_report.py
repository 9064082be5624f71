import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fcnseg.benchmarks import gpu_report as gr
from fcnseg.benchmarks.bench import BenchResult, Stats
from fcnseg.benchmarks.evaluate import ModelEval, parity_table
from fcnseg.runtime.errors import FcnsegError
from fcnseg.runtime.parity import MiouComparison

LDCONFIG = """\
1234 libs found in cache `/etc/ld.so.cache'
\tlibnvinfer_plugin.so.10 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvinfer_plugin.so.10
\tlibnvinfer.so.10 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvinfer.so.10
\tlibnvinfer.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvinfer.so
\tlibnvonnxparser.so.10 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvonnxparser.so.10
\tlibcudart.so.12 (libc6,x86-64) => /usr/local/cuda/lib64/libcudart.so.12
\tlibnvinfer.so.8 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libnvinfer.so.8
"""


def test_environment_report_keys_and_types_on_this_machine():
    env = gr.environment_report()
    for key, kind in [("python", str), ("platform", str), ("packages", dict), ("cuda_available", bool),
                      ("gpus", list), ("nvidia_smi", list), ("tensorrt_libs", list), ("tensorrt_wheel_libs", list),
                      ("tensorrt", dict), ("onnxruntime_providers", list), ("tf32", dict)]:
        assert isinstance(env[key], kind), key
    assert env["torch"] == torch.__version__ and env["packages"]["onnx"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert isinstance(env["tensorrt"]["importable"], bool)
    if not env["tensorrt"]["importable"]:
        assert env["tensorrt"]["version"] is None and "TensorRT" in env["tensorrt"]["error"]
    if not torch.cuda.is_available():
        assert env["cuda_available"] is False and env["gpus"] == []
    else:
        assert env["gpus"][0]["compute_capability"].count(".") == 1
    json.dumps(env, allow_nan=False)  # serialisable as it is
    table = gr.environment_table(env)
    assert "onnxruntime" in table and "import tensorrt" in table


def test_ldconfig_parser_keeps_tensorrt_libraries_only():
    libs = gr.parse_ldconfig(LDCONFIG)
    assert [lib["soname"] for lib in libs] == ["libnvinfer_plugin.so.10", "libnvinfer.so.10", "libnvinfer.so",
                                               "libnvinfer.so.8"]
    assert [lib["name"] for lib in libs] == ["libnvinfer_plugin", "libnvinfer", "libnvinfer", "libnvinfer"]
    assert [lib["version"] for lib in libs] == ["10", "10", None, "8"]
    assert libs[3]["arch"] == "libc6,AArch64" and libs[1]["path"].endswith("libnvinfer.so.10")
    assert [lib["soname"] for lib in gr.parse_ldconfig(LDCONFIG, "nvonnxparser")] == ["libnvonnxparser.so.10"]
    assert gr.parse_ldconfig("") == []


def test_full_library_version_is_read_through_the_link(tmp_path):
    real = tmp_path / "libnvinfer.so.10.3.0"
    real.write_bytes(b"")
    (tmp_path / "libnvinfer.so.10").symlink_to(real)
    assert gr._file_version(str(tmp_path / "libnvinfer.so.10")) == "10.3.0"
    assert gr._file_version(None) is None


def test_nvidia_smi_parser():
    gpus = gr.parse_nvidia_smi("NVIDIA H200, 570.124.06, 143771 MiB\nNVIDIA H100 80GB HBM3, 570.124.06, 81559 MiB\n")
    assert gpus[1] == {"name": "NVIDIA H100 80GB HBM3", "driver_version": "570.124.06", "memory_total": "81559 MiB"}
    assert gr.parse_nvidia_smi("No devices were found\n") == []


def test_torch_modes_parse_and_reject_unknown_names():
    m = gr.TorchMode.parse("cuda_graph_channels_last_fp16")
    assert (m.fp16, m.channels_last, m.cuda_graph) == (True, True, True)
    assert gr.TorchMode.parse("fp32") == gr.TorchMode("fp32", False, False, False)
    assert [gr.TorchMode.parse(n).cuda_graph for n in gr.TORCH_MODES] == [False, False, False, True]
    with pytest.raises(FcnsegError, match="expected a mode"):
        gr.TorchMode.parse("channels_last_bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_torch_benchmark_says_cuda_is_missing():
    with pytest.raises(FcnsegError, match="expected a CUDA GPU"):
        gr.bench_torch_cuda(torch.nn.Conv2d(3, 4, 3), shape=(32, 32), batch=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_benchmark_on_cuda_times_every_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 21, 1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = gr.bench_torch_cuda(model, shape=(64, 96), batch=2, warmup=2, iters=5)
    assert [r["mode"] for r in rows] == list(gr.TORCH_MODES)
    for r in rows:
        assert "error" not in r, r
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["iters"] == 5
        assert r["images_per_s"] == pytest.approx(2e3 / r["median_ms"]) and r["max_memory_mb"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model untouched
    assert next(model.parameters()).device.type == "cpu"


def test_event_timing_gives_one_gpu_time_per_iteration_after_warmup():
    clock = {"ms": 0.0, "calls": 0}

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock["ms"]

        def elapsed_time(self, end):
            return end.at - self.at

    def step():
        clock["calls"] += 1
        clock["ms"] += 2.0 + clock["calls"]

    fake_torch = SimpleNamespace(cuda=SimpleNamespace(Event=FakeEvent, synchronize=lambda: None))
    seconds = gr._time_with_events(fake_torch, step, warmup=3, iters=4)
    assert clock["calls"] == 7
    assert seconds == pytest.approx([0.006, 0.007, 0.008, 0.009])


def test_latency_summary_ratios_within_the_run():
    torch_rows = [{"arch": "a", "mode": "fp32", "precision": "fp32", "shape": [8, 8], "batch": 2, "median_ms": 10.0},
                  {"arch": "a", "mode": "fp16", "precision": "fp16", "shape": [8, 8], "batch": 2, "median_ms": 4.0},
                  {"arch": "a", "mode": "cuda_graph_fp16", "shape": [8, 8], "batch": 2, "error": "OOM"}]
    ort = _bench_result("model.onnx", infer_ms=100.0)
    rows = gr.latency_summary(torch_rows, [ort], "a")
    assert [r["variant"] for r in rows] == ["fp16", "fp32", "model.onnx"]
    assert [r["x_ort_cpu"] for r in rows] == pytest.approx([25.0, 10.0, 1.0])
    assert [r["x_torch_fp32"] for r in rows] == pytest.approx([2.5, 1.0, 0.1])
    assert rows[0]["images_per_s"] == pytest.approx(500.0)
    assert "model.onnx" in gr.summary_table(rows)


def test_report_writer_on_fake_rows(tmp_path):
    report = gr.GpuReport(config={"out": str(tmp_path), "shapes": [(8, 8)]})
    with gr.stage(report, "parity", tmp_path, index=1, total=3):
        rows = [_model_eval("ckpt.pth", 0.5, None), _model_eval("model_int8.onnx", 0.46, 0.5)]
        report.parity_failures = [r.path for r in rows if not r.ok]
        report.add("parity", [r.to_dict() for r in rows], [("parity", parity_table(rows))])
    with gr.stage(report, "bench pytorch cuda", tmp_path, index=2, total=3):
        raise gr.SkipStage("needs a CUDA GPU")
    with gr.stage(report, "export int8", tmp_path, index=3, total=3):
        raise ValueError("calibration broke\nsecond line")
    md, js = gr.write_report(report, tmp_path)
    text = md.read_text()
    assert "model_int8.onnx" in text and "FAIL" in text and "ValueError: calibration broke" in text
    assert "second line" not in text and "needs a CUDA GPU" in text and "**Parity failed:**" in text
    doc = json.loads(js.read_text())
    assert doc["exit_code"] == report.exit_code == 1
    assert [s["status"] for s in doc["stages"]] == ["ok", "skipped", "error"]
    assert "Traceback" in doc["stages"][2]["traceback"]
    assert doc["data"]["parity"][0]["miou"] == 0.5 and doc["data"]["parity"][1]["delta_points"] == pytest.approx(-4)
    assert doc["data"]["parity"][1]["iou"][1] is None  # NaN becomes null: the file is strict JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_report.json", "gpu_report.md"]  # no temp files


def test_jsonable_converts_numpy_paths_and_nan(tmp_path):
    out = gr.to_jsonable({"p": tmp_path, "t": (1, np.float32(2.5)), "n": float("nan"), "a": np.arange(2),
                          "s": Stats.of([0.001])})
    assert out == {"p": str(tmp_path), "t": [1, 2.5], "n": None, "a": [0, 1], "s": {
        "mean": 1.0, "median": 1.0, "p90": 1.0, "p99": 1.0, "min": 1.0, "max": 1.0}}


def test_every_stage_runs_even_after_failures(tmp_path, monkeypatch):
    seen = []

    def ok(cfg, art, report):
        seen.append("ok")
        report.add("ok", {"value": math.inf})

    def broken(cfg, art, report):
        seen.append("broken")
        raise FcnsegError("expected X, got Y")

    monkeypatch.setattr(gr, "STEPS", (("first", broken), ("second", ok)))
    report = gr.run_gpu_report(gr.GpuReportConfig(out=tmp_path / "out"))
    assert seen == ["broken", "ok"] and report.exit_code == 1
    assert [(s.name, s.status, s.message) for s in report.stages] == [("first", "error", "expected X, got Y"),
                                                                      ("second", "ok", "")]
    assert json.loads((tmp_path / "out" / "gpu_report.json").read_text())["data"]["ok"] == {"value": None}


def test_bad_options_give_one_line_errors(tmp_path):
    with pytest.raises(FcnsegError, match="batch sizes >= 1"):
        gr.GpuReportConfig(out=tmp_path, batches=(0,)).check()
    with pytest.raises(FcnsegError, match="--checkpoint to be a file"):
        gr.GpuReportConfig(out=tmp_path, checkpoint=tmp_path / "missing.pth").check()
    result = CliRunner().invoke(gr.main, ["--out", str(tmp_path / "o"), "--batches", "1,x"])
    assert result.exit_code == 2 and "expected a comma-separated list of batch sizes" in result.output
    assert not (tmp_path / "o").exists()  # nothing written before the options are valid


def test_engine_profile_covers_benchmark_and_parity_shapes():
    lo, opt, hi = gr.engine_profile([(520, 520), (375, 1500)], [1, 8])
    assert lo == (1, 3, 64, 64) and opt == (1, 3, 520, 520) and hi == (8, 3, 1024, 1500)


@pytest.mark.slow
def test_whole_report_on_cpu_with_a_tiny_model(tmp_path, monkeypatch):
    from fcnseg.export import onnx_export
    from fcnseg.train.checkpoint import save_checkpoint
    from fcnseg.train.models import get_model

    monkeypatch.setattr(onnx_export, "DEFAULT_VERIFY_SHAPES", ((1, 64, 80),))  # the export tests cover the rest
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint({"model": get_model("fcn8s_resnet18").state_dict(), "arch": "fcn8s_resnet18",
                     "num_classes": 21, "base_size": 64}, ckpt)
    result = CliRunner().invoke(gr.main, ["--out", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--limit", "2",
                                          "--iters", "2", "--ort-iters", "1", "--warmup", "1", "--shapes", "64x80",
                                          "--batches", "1", "--num-train", "2", "--num-val", "3", "--image-size", "64"])
    doc = json.loads((tmp_path / "out" / "gpu_report.json").read_text())
    status = {s["name"]: s["status"] for s in doc["stages"]}
    assert all(v in ("ok", "skipped") for v in status.values()), [s for s in doc["stages"] if s["status"] == "error"]
    assert status["parity"] == status["bench onnxruntime"] == status["summary"] == "ok"
    assert [r["precision"] for r in doc["data"]["parity"]] == ["fp32", "fp32", "fp16", "int8"]
    assert result.exit_code == doc["exit_code"] == (1 if doc["parity_failures"] else 0)
    assert {r["variant"] for r in doc["data"]["summary"]} >= {"model.onnx", "model_fp16.onnx", "model_int8.onnx"}
    if not torch.cuda.is_available():
        assert status["bench pytorch cuda"] == "skipped"


def _bench_result(path, *, infer_ms):
    s = Stats.of([infer_ms / 1e3])
    return BenchResult(model=path, backend="onnxruntime", precision="fp32", shape=(8, 8), batch=2, iters=1, e2e=s,
                       stages={k: s for k in ("preprocess", "h2d", "infer", "d2h", "postprocess")},
                       images_per_s=1.0, peak_host_mb=1.0)


def _model_eval(path, miou, tolerance):
    iou = [miou, float("nan")]
    row = ModelEval(path=path, format="ONNX", precision="int8", miou=miou, global_acc=0.9, iou=iou,
                    classes=["background", "aeroplane"])
    if tolerance is not None:
        row.comparison = MiouComparison(0.5, miou, np.array([(miou - 0.5) * 100, np.nan]), tolerance,
                                        ["background", "aeroplane"])
    return row
