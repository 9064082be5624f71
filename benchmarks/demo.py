"""``make demo``: the whole pipeline on the embedded synthetic VOC, into one output folder.

synthesise data -> train FCN-8s/ResNet-18 on the CPU -> export ONNX FP32 / FP16 / INT8 -> TensorRT engines
(when a TensorRT library imports; listed, and run only where a GPU is) -> parity -> benchmark -> overlays
-> video (with PyAV) -> ``report.md``, through ``fcnseg.benchmarks.pipeline``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click

from ..core.errors import cli_errors
from .pipeline import Artifacts, DataSettings, EngineSettings, ModelSettings, PipelineConfig
from .report import Report, optional_path, run_steps, to_jsonable, write_report
from .steps import (bench_step, step_data, step_engines, step_export_fp16, step_export_int8, step_export_onnx,
                    step_model, step_overlays, step_parity, step_video)

STEPS = (("data", step_data), ("model", step_model), ("export onnx", step_export_onnx),
         ("export fp16", step_export_fp16), ("export int8", step_export_int8), ("engines", step_engines),
         ("parity", step_parity), ("bench", bench_step("bench")), ("overlays", step_overlays), ("video", step_video))


def run_demo(cfg: PipelineConfig) -> Report:
    """Run every step into ``cfg.out``; returns the report (``report.md`` / ``report.json`` written)."""
    cfg.check()
    t0 = time.perf_counter()
    report = Report("report", "fcnseg demo report", config=to_jsonable(dataclasses.asdict(cfg)))
    run_steps(STEPS, cfg, Artifacts(), report, cfg.out)
    d, m = cfg.data, cfg.model
    report.intro = [f"Model `{m.arch}` trained {m.epochs} epochs on {d.num_train} synthetic VOC images ({d.size} px), "
                    f"evaluated on {d.num_val} val images; whole demo {(time.perf_counter() - t0) / 60:.1f} min.", ""]
    write_report(report, cfg.out)
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="demo_out", type=click.Path(file_okay=False), help="output folder")
@click.option("--epochs", default=ModelSettings.epochs)
@click.option("--num-train", default=DataSettings.num_train)
@click.option("--num-val", default=DataSettings.num_val)
@click.option("--data-path", default=None, type=click.Path(file_okay=False),
              help="a VOC root to use instead of the synthetic one")
@click.option("--engine-library", default=EngineSettings.library,
              type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]), help="TensorRT library for the engines")
@cli_errors
def main(out: str, epochs: int, num_train: int, num_val: int, data_path: str, engine_library: str) -> None:
    """Run the whole pipeline on a synthetic VOC dataset and write a report."""
    cfg = PipelineConfig(Path(out), data=DataSettings(root=optional_path(data_path), num_train=num_train,
                                                      num_val=num_val),
                         model=ModelSettings(epochs=epochs), engines=EngineSettings(library=engine_library),
                         parity_backends=("onnxruntime", "openvino"))   # both CPU backends side by side
    report = run_demo(cfg)
    click.secho(f"\nreport: {cfg.out / 'report.md'}", bold=True)
    if report.exit_code:
        failed = report.failures + [s.name for s in report.stages if s.status == "error"]
        click.echo(f"error: failed: {', '.join(failed)}; see {cfg.out / 'report.md'}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
