import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fcnseg.benchmarks import gpu_env, report, torch_cuda
from fcnseg.benchmarks import gpu_report as gr
from fcnseg.benchmarks.bench import BenchResult, Stats
from fcnseg.eval.evaluate import ModelEval, parity_table
from fcnseg.benchmarks.pipeline import engine_profile
from fcnseg.core.errors import FcnsegError
from fcnseg.eval.parity import MiouComparison, ParityResult

def test_environment_report_keys_and_types_on_this_machine():
    env = gpu_env.environment_report()
    for key, kind in [("python", str), ("platform", str), ("packages", dict), ("nvml", dict), ("torch", dict),
                      ("tensorrt", dict), ("onnxruntime_providers", list)]:
        assert isinstance(env[key], kind), key
    assert env["torch"]["torch_version"] == torch.__version__ and env["packages"]["onnx"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert set(env["tensorrt"]) == {"tensorrt", "tensorrt_rtx"}
    for info in env["tensorrt"].values():
        assert isinstance(info["importable"], bool)
        if not info["importable"]:
            assert info["version"] is None and "TensorRT" in info["error"]
    if env["nvml"]["gpus"]:
        assert env["nvml"]["gpus"][0]["compute_capability"].count(".") == 1 and env["nvml"]["driver"]
    else:
        assert env["nvml"]["error"] or env["nvml"]["driver"]  # no GPU: NVML says why (or a driver without GPUs)
    if not torch.cuda.is_available():
        assert env["torch"]["cuda_available"] is False and env["torch"]["devices"] == []
    json.dumps(env, allow_nan=False)  # serialisable as it is
    table = gpu_env.environment_table(env)
    assert "onnxruntime" in table and "import tensorrt_rtx" in table and "driver (NVML)" in table


def test_torch_modes_parse_and_reject_unknown_names():
    m = torch_cuda.TorchMode.parse("cuda_graph_channels_last_fp16")
    assert (m.fp16, m.channels_last, m.cuda_graph) == (True, True, True)
    assert torch_cuda.TorchMode.parse("fp32") == torch_cuda.TorchMode("fp32", False, False, False)
    assert [torch_cuda.TorchMode.parse(n).cuda_graph for n in torch_cuda.TORCH_MODES] == [False, False, False, True]
    with pytest.raises(FcnsegError, match="expected a mode"):
        torch_cuda.TorchMode.parse("channels_last_bf16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_torch_benchmark_says_cuda_is_missing():
    with pytest.raises(FcnsegError, match="expected a CUDA GPU"):
        torch_cuda.bench_torch_cuda(torch.nn.Conv2d(3, 4, 3), shape=(32, 32), batch=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_benchmark_on_cuda_times_every_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 21, 1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = torch_cuda.bench_torch_cuda(model, shape=(64, 96), batch=2, warmup=2, iters=5)
    assert [r["mode"] for r in rows] == list(torch_cuda.TORCH_MODES)
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
    seconds = torch_cuda._time_with_events(fake_torch, step, warmup=3, iters=4)
    assert clock["calls"] == 7
    assert seconds == pytest.approx([0.006, 0.007, 0.008, 0.009])


def test_latency_summary_ratios_within_the_run():
    torch_rows = [{"arch": "a", "mode": "fp32", "precision": "fp32", "shape": [8, 8], "batch": 2, "median_ms": 10.0},
                  {"arch": "a", "mode": "fp16", "precision": "fp16", "shape": [8, 8], "batch": 2, "median_ms": 4.0},
                  {"arch": "a", "mode": "cuda_graph_fp16", "shape": [8, 8], "batch": 2, "error": "OOM"}]
    ort = _bench_result("model.onnx", infer_ms=100.0)
    rows = torch_cuda.latency_summary(torch_rows, [ort], "a")
    assert [r["variant"] for r in rows] == ["fp16", "fp32", "model.onnx"]
    assert [r["x_ort_cpu"] for r in rows] == pytest.approx([25.0, 10.0, 1.0])
    assert [r["x_torch_fp32"] for r in rows] == pytest.approx([2.5, 1.0, 0.1])
    assert rows[0]["images_per_s"] == pytest.approx(500.0)
    assert "model.onnx" in torch_cuda.summary_table(rows)


def test_report_writer_on_fake_rows(tmp_path):
    def parity(cfg, art, rep):
        rows = ParityResult([_model_eval("ckpt.pth", 0.5, None), _model_eval("model_int8.onnx", 0.46, 0.5)])
        rep.failures += [r.path for r in rows.failed]
        rep.add("parity", [r.to_dict() for r in rows], [("parity", parity_table(rows))])

    def no_cuda(cfg, art, rep):
        raise report.SkipStage("needs a CUDA GPU")

    def broken(cfg, art, rep):
        raise ValueError("calibration broke\nsecond line")

    rep = report.Report("gpu_report", "title", config={"out": str(tmp_path), "shapes": [(8, 8)]})
    report.run_steps([("parity", parity), ("bench pytorch cuda", no_cuda), ("export int8", broken)], None, None, rep,
                     tmp_path)
    md, js = report.write_report(rep, tmp_path)
    text = md.read_text()
    assert "model_int8.onnx" in text and "FAIL" in text and "ValueError: calibration broke" in text
    assert "second line" not in text and "needs a CUDA GPU" in text and "**Failed:** model_int8.onnx" in text
    doc = json.loads(js.read_text())
    assert doc["exit_code"] == rep.exit_code == 1
    assert [s["status"] for s in doc["stages"]] == ["ok", "skipped", "error"]
    assert "Traceback" in doc["stages"][2]["traceback"]
    assert doc["data"]["parity"][0]["miou"] == 0.5 and doc["data"]["parity"][1]["delta_points"] == pytest.approx(-4)
    assert doc["data"]["parity"][1]["verdict"] == "FAIL"   # a failed row keeps its delta
    assert doc["data"]["parity"][1]["iou"][1] is None  # NaN becomes null: the file is strict JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_report.json", "gpu_report.md"]  # no temp files


def test_jsonable_converts_numpy_paths_and_nan(tmp_path):
    out = report.to_jsonable({"p": tmp_path, "t": (1, np.float32(2.5)), "n": float("nan"), "a": np.arange(2),
                          "s": Stats.of([0.001])})
    assert out == {"p": str(tmp_path), "t": [1, 2.5], "n": None, "a": [0, 1], "s": {
        "mean": 1.0, "median": 1.0, "p90": 1.0, "p99": 1.0, "min": 1.0, "max": 1.0}}


def test_every_stage_runs_even_after_failures(tmp_path, monkeypatch):
    seen = []

    def ok(cfg, art, rep):
        seen.append("ok")
        rep.add("ok", {"value": math.inf})

    def broken(cfg, art, rep):
        seen.append("broken")
        raise FcnsegError("expected X, got Y")

    monkeypatch.setattr(gr, "STEPS", (("first", broken), ("second", ok)))
    rep = gr.run_gpu_report(gr.gpu_report_config(tmp_path / "out"))
    assert seen == ["broken", "ok"] and rep.exit_code == 1
    assert [(s.name, s.status, s.message) for s in rep.stages] == [("first", "error", "expected X, got Y"),
                                                                   ("second", "ok", "")]
    assert json.loads((tmp_path / "out" / "gpu_report.json").read_text())["data"]["ok"] == {"value": None}


def test_bad_options_give_one_line_errors(tmp_path):
    with pytest.raises(FcnsegError, match="batch sizes >= 1"):
        gr.gpu_report_config(tmp_path, batches=(0,)).check()
    with pytest.raises(FcnsegError, match="--checkpoint to be a file"):
        gr.gpu_report_config(tmp_path, checkpoint=tmp_path / "missing.pth").check()
    result = CliRunner().invoke(gr.main, ["--out", str(tmp_path / "o"), "--batches", "1,x"])
    assert result.exit_code == 2 and "expected a comma-separated list of batch sizes" in result.output
    assert not (tmp_path / "o").exists()  # nothing written before the options are valid


def test_engine_profile_covers_benchmark_and_parity_shapes():
    lo, opt, hi = engine_profile([(520, 520), (375, 1500)], [1, 8])
    assert lo == (1, 3, 64, 64) and opt == (1, 3, 520, 520) and hi == (8, 3, 1024, 1500)


@pytest.mark.slow
def test_whole_report_on_cpu_with_a_tiny_model(tmp_path, monkeypatch):
    from fcnseg.export import onnx_graph, torch_export
    from fcnseg.train.checkpoint import save_checkpoint
    from fcnseg.train.models import get_model

    for module in (onnx_graph, torch_export):   # the export tests cover the rest
        monkeypatch.setattr(module, "DEFAULT_VERIFY_SHAPES", ((1, 64, 80),))
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
    # INT8 with FP16 elsewhere (the default) and with FP32 elsewhere (for the GPU timing), both within tolerance
    assert [r["precision"] for r in doc["data"]["parity"]] == ["fp32", "fp32", "fp16", "int8", "int8"]
    assert [Path(r["path"]).name for r in doc["data"]["parity"]][-2:] == ["model_int8.onnx", "model_int8_fp32.onnx"]
    assert result.exit_code == doc["exit_code"] == (1 if doc["failures"] else 0)
    if doc["data"].get("engines") and not torch.cuda.is_available():   # built (TensorRT for RTX), not run here
        assert all(e["runnable"] is False for e in doc["data"]["engines"])
        # the FP32-elsewhere INT8 engine is only for timing: not built where nothing can run it
        assert [Path(e["path"]).name for e in doc["data"]["engines"]] == ["model_fp16.plan", "model_int8.plan"]
        assert "not executed here: no GPU" in (tmp_path / "out" / "gpu_report.md").read_text()
    assert {r["variant"] for r in doc["data"]["summary"]} >= {"model.onnx", "model_fp16.onnx", "model_int8.onnx"}
    if not torch.cuda.is_available():
        assert status["bench pytorch cuda"] == "skipped"


def _bench_result(path, *, infer_ms):
    s = Stats.of([infer_ms / 1e3])
    return BenchResult(model=path, backend="onnxruntime", precision="fp32", shape=(8, 8), batch=2, iters=1, e2e=s,
                       stages={k: s for k in ("preprocess", "h2d", "infer", "d2h", "postprocess")},
                       images_per_s=1.0, peak_host_mb=1.0)


def test_int8_engines_fp16_against_fp32_elsewhere_per_shape_and_batch():
    """The list the GPU report prints (issue 21): each shape and batch both INT8 engines ran at, side by side."""
    rows = [_bench_result("/o/model_int8.plan", infer_ms=4.0), _bench_result("/o/model_int8_fp32.plan", infer_ms=6.0),
            _bench_result("/o/model_fp16.plan", infer_ms=5.0)]
    rows.append(dataclasses.replace(_bench_result("/o/model_int8.plan", infer_ms=9.0), batch=8))   # no pair
    pairs = gr.int8_elsewhere(rows, "model_int8.plan", "model_int8_fp32.plan")
    assert pairs == [{"shape": "8x8", "batch": 2, "fp16_ms": pytest.approx(4.0), "fp32_ms": pytest.approx(6.0),
                      "x": pytest.approx(1.5)}]
    assert gr.int8_elsewhere(rows[2:], "model_int8.plan", "model_int8_fp32.plan") == []


def _model_eval(path, miou, tolerance):
    iou = [miou, float("nan")]
    row = ModelEval(path=path, format="ONNX", precision="int8", miou=miou, global_acc=0.9, iou=iou,
                    classes=["background", "aeroplane"])
    if tolerance is not None:
        row.comparison = MiouComparison(0.5, miou, np.array([(miou - 0.5) * 100, np.nan]), tolerance,
                                        ["background", "aeroplane"])
    return row


def test_write_json_is_strict_json_and_atomic(tmp_path):
    path = report.write_json(tmp_path / "out.json", {"e2e": Stats.of([float("nan")]), "shape": (1, 2)})
    doc = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert doc == {"e2e": dict.fromkeys(("mean", "median", "p90", "p99", "min", "max")), "shape": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]   # no temporary file left


def test_torch_model_reads_the_checkpoint_once(tmp_path, monkeypatch):
    from fcnseg.train import checkpoint
    from fcnseg.train.models import get_model

    ckpt = tmp_path / "ckpt.pth"
    torch.manual_seed(0)
    model = get_model("fcn8s_resnet18")
    checkpoint.save_checkpoint({"model": model.state_dict(), "arch": "fcn8s_resnet18", "num_classes": 21}, ckpt)
    reads = []
    real = checkpoint.read_checkpoint
    monkeypatch.setattr(checkpoint, "read_checkpoint", lambda path: reads.append(path) or real(path))
    loaded = torch_cuda.torch_model("fcn8s_resnet18", ckpt)
    assert len(reads) == 1
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
