"""One pipeline: the demo, the GPU report and the CPU benchmark list the same steps; configs, engine rows, CLIs."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from fcnseg.benchmarks import cpu_speed, demo, gpu_report, steps
from fcnseg.benchmarks.pipeline import Artifacts, EngineRow, PipelineConfig, engine_row, engine_table
from fcnseg.runtime.errors import FcnsegError

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
