"""One pipeline: the demo, the GPU report and the CPU benchmark list the same steps; configs, engine rows, CLIs."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcnseg.benchmarks import cpu_speed, demo, gpu_report, steps
from fcnseg.benchmarks.pipeline import Artifacts, EngineRow, PipelineConfig, engine_row, engine_table
from fcnseg.benchmarks.report import Report, SkipStage
from fcnseg.core.errors import FcnsegError

SHARED = ("data", "model", "export onnx", "export int8")


def test_demo_gpu_report_and_cpu_benchmark_run_the_same_steps():
    tables = {m.__name__: dict(m.STEPS) for m in (demo, gpu_report, cpu_speed)}
    for name in SHARED:
        assert len({id(t[name]) for t in tables.values()}) == 1, name   # the very same step function
    assert tables["fcnseg.benchmarks.demo"]["engines"] is tables["fcnseg.benchmarks.gpu_report"]["engines"]
    assert tables["fcnseg.benchmarks.demo"]["parity"] is steps.step_parity is tables[
        "fcnseg.benchmarks.gpu_report"]["parity"]
    assert "video" in tables["fcnseg.benchmarks.demo"]   # the video hook has its slot


def test_bench_rows_name_models_by_key_and_skip_engines_that_cannot_run(tmp_path):
    art = Artifacts(checkpoint=tmp_path / "m.pth", models={"fp32": tmp_path / "m.onnx", "int8": tmp_path / "q.onnx"})
    art.engines = [EngineRow(tmp_path / "a.plan", 1.0, "tensorrt_rtx", "1.7", "sm_86", "fp16", runnable=False),
                   EngineRow(tmp_path / "b.plan", 1.0, "tensorrt", "10.3", "A10", "int8", runnable=True)]
    paths = steps.bench_paths(art, ("pytorch", "fp32", "fp16", "engines"))
    assert [Path(p).name for p in paths] == ["m.pth", "m.onnx", "b.plan"]   # no fp16 was made; a.plan needs a GPU


def test_engine_without_sidecar_is_listed_honestly(tmp_path):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"\0" * 2_000_000)
    row = engine_row(plan, runnable=False)
    assert row.size_mb == pytest.approx(2.0) and row.library == "?"
    table = engine_table([row])
    assert "x.plan" in table and "not executed here: no GPU" in table


def test_config_is_checked_before_anything_runs(tmp_path):
    cfg = PipelineConfig(tmp_path / "out")
    cfg.bench.iters = 0
    with pytest.raises(FcnsegError, match="expected positive counts"):
        cfg.check()
    assert cfg.shapes == ((cfg.data.size, cfg.data.size),)   # the bench shape defaults to the data size


@pytest.mark.parametrize("module", [demo, cpu_speed])
def test_clis_give_one_line_errors_and_tracebacks_with_debug(module, tmp_path):
    args = ["--out", str(tmp_path / "o"), "--epochs" if module is demo else "--iters", "0"]
    result = CliRunner().invoke(module.main, args)
    assert result.exit_code == 2 and "expected positive counts" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    debug = CliRunner().invoke(module.main, args + ["--debug"])
    assert isinstance(debug.exception, FcnsegError)
    assert not (tmp_path / "o").exists()


def test_split_sizes_from_the_data_root_and_from_its_voc2012_folder(tmp_path):
    from fcnseg.datasets.synth import synthesize

    root = synthesize(tmp_path / "voc", num_train=2, num_val=1, size=32, progress=False)
    assert steps.split_sizes(root) == steps.split_sizes(root / "VOCdevkit" / "VOC2012") == {"train": 2, "val": 1}
    assert steps.split_sizes(tmp_path / "nothing-here") == {}


def test_overlays_and_video_pick_the_int8_cpu_model_first(tmp_path):
    art = Artifacts(models={"fp32": tmp_path / "m.onnx", "int8": tmp_path / "q.onnx"})
    assert art.showcase_model() == ("int8", tmp_path / "q.onnx")
    art.models["int8_cpu"] = tmp_path / "c.onnx"
    assert art.showcase_model() == ("int8_cpu", tmp_path / "c.onnx")
    with pytest.raises(SkipStage, match="an ONNX model"):
        Artifacts().showcase_model()


def test_bench_step_times_every_shape_and_batch_in_one_interleaved_run(tmp_path, monkeypatch):
    from fcnseg.benchmarks import bench

    calls = []
    monkeypatch.setattr(bench, "bench_models", lambda paths, shapes, batches, **kw: calls.append((shapes, batches))
                        or [])
    cfg = PipelineConfig(tmp_path)
    cfg.bench.shapes, cfg.bench.batches = ((32, 32), (24, 40)), (1, 2)
    art = Artifacts(models={"fp32": tmp_path / "m.onnx"})
    rep = Report("r", "t")
    steps.bench_step("bench", ("fp32",))(cfg, art, rep)
    assert calls == [([(32, 32), (24, 40)], [1, 2])]
    assert json.loads((tmp_path / "bench.json").read_text()) == []


def test_training_table_reads_the_metrics_log_as_training_writes_it(tmp_path):
    from fcnseg.train.rundir import append_metrics

    log = tmp_path / "metrics.jsonl"
    for epoch in (0, 1):
        append_metrics(log, {"epoch": epoch, "train_loss": 1.5 - epoch, "lr": 0.01, "miou": 0.25, "global_acc": 0.5,
                             "epoch_s": 3.0, "train_img_s": 4.0})
    lines = steps._training_table(log).splitlines()
    assert len(lines) == 2 + 2 and lines[0].split()[:2] == ["epoch", "loss"]
