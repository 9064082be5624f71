"""Everything a GPU machine can tell about the pipeline, in one run: ``python -m fcnseg.benchmarks.gpu_report``.

The steps of ``fcnseg.benchmarks.pipeline`` (data, model, ONNX FP32/FP16/INT8, engines, parity, latency)
between this machine's environment (``gpu_env``) and PyTorch on CUDA (``torch_cuda``):

1. the environment (NVML GPUs and driver, torch's collect_env, TensorRT / TensorRT-RTX, CUDA bindings, ONNX
   Runtime providers);
2. a dataset (synthetic VOC unless ``--data-path``) and a model (``--checkpoint``, or ``fcn8s_resnet18``
   trained for ``--epochs`` on CUDA with AMP);
3. ONNX FP32, FP16 and INT8 (calibrated on val; FP16 elsewhere, and FP32 elsewhere for timing), plus FP16 and
   INT8 TensorRT engines when TensorRT imports (the FP32-elsewhere INT8 engine only where a GPU runs it);
4. the parity table (checkpoint vs every exported model, same images, same runtime code path);
5. latency: TensorRT engines and ONNX Runtime (CPU) through the runtime, and PyTorch on CUDA (FP32, FP16,
   channels-last FP16, CUDA-graph FP16; CUDA events) for the trained model and an FCN-ResNet50; speed-ups
   are ratios measured within this run;
6. the INT8 engine with FP16 elsewhere against the one with FP32 elsewhere, per shape and batch.

``gpu_report.md`` and ``gpu_report.json`` are rewritten (atomically) after every step, so an interrupted
run still leaves a readable report. The exit code is 1 when a parity tolerance failed or a step raised;
skipped steps (no TensorRT, no CUDA) do not count. Without a GPU it is a dry run of the same steps.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from ..core.cli_args import packed
from ..core.errors import FcnsegError, cli_errors
from ..core.shapes import parse_hw
from ..eval.tables import format_table
from .gpu_env import environment_report, environment_table
from .pipeline import (Artifacts, BenchSettings, DataSettings, EngineSettings, ExportSettings, ModelSettings,
                       PipelineConfig)
from .report import Report, SkipStage, echo, need, optional_path, parse_list, run_steps, to_jsonable, write_json
from .steps import (bench_step, step_data, step_engines, step_export_fp16, step_export_int8, step_export_onnx,
                    step_model, step_parity)
from .torch_cuda import (TORCH_ARCHS, TORCH_MODES, TorchMode, bench_torch_cuda, latency_summary, require_cuda,
                         summary_table, torch_model, torch_table)
from .report import render_markdown

MODEL = ModelSettings(epochs=6, amp=True, workers=min(8, os.cpu_count() or 1))
# INT8 engines with FP16 elsewhere (the default graph) and with FP32 elsewhere, timed side by side where a GPU is.
ENGINES = EngineSettings(precisions=("fp16", "int8", "int8_fp32"), timing_only=("int8_fp32",))
BENCH = BenchSettings(models=("engines",), shapes=((520, 520), (375, 500)), batches=(1, 8), warmup=10, iters=100,
                      rounds=5)
ORT_ITERS = 10


@dataclass
class GpuReportConfig(PipelineConfig):
    """The pipeline's configuration plus the PyTorch-CUDA and ONNX Runtime (CPU) benchmark settings."""

    ort_iters: int = ORT_ITERS
    torch_archs: Tuple[str, ...] = TORCH_ARCHS
    torch_modes: Tuple[str, ...] = TORCH_MODES

    def check(self) -> "GpuReportConfig":
        super().check()
        if self.ort_iters < 1:
            raise FcnsegError(f"expected --ort-iters >= 1, got {self.ort_iters}")
        for m in self.torch_modes:
            TorchMode.parse(m)
        return self


def gpu_report_config(out: Path, *, checkpoint: Optional[Path] = None, data: DataSettings = DataSettings(),
                      epochs: int = MODEL.epochs, iters: int = BENCH.iters, ort_iters: int = ORT_ITERS,
                      warmup: int = BENCH.warmup, shapes: Any = BENCH.shapes, batches: Any = BENCH.batches,
                      limit: Optional[int] = None) -> GpuReportConfig:
    """The GPU report's configuration from its command-line options."""
    return GpuReportConfig(
        out, data=data,
        model=dataclasses.replace(MODEL, checkpoint=checkpoint, epochs=epochs),
        export=ExportSettings(models=("fp32", "fp16", "int8", "int8_fp32"), int8_eval_images=limit), engines=ENGINES,
        bench=dataclasses.replace(BENCH, shapes=tuple(shapes), batches=tuple(batches), warmup=warmup, iters=iters),
        parity_limit=limit, ort_iters=ort_iters)


def step_environment(cfg: GpuReportConfig, art: Artifacts, report: Report) -> None:
    env = environment_report()
    write_json(cfg.out / "environment.json", env)
    report.add("environment", env, [("environment", environment_table(env))])
    echo(environment_table(env))


def step_bench_onnx(cfg: GpuReportConfig, art: Artifacts, report: Report) -> None:
    # CPU explicitly: with onnxruntime-gpu installed, the default would pick CUDA/TensorRT providers.
    bench_step("bench onnxruntime", ("fp32", "fp16", "int8"), iters=cfg.ort_iters,
               providers=["CPUExecutionProvider"])(cfg, art, report)


def step_bench_torch(cfg: GpuReportConfig, art: Artifacts, report: Report) -> None:
    from tqdm import tqdm

    try:
        require_cuda()
    except FcnsegError as e:
        raise SkipStage(str(e)) from None
    archs = dict.fromkeys([art.arch or cfg.model.arch, *cfg.torch_archs])  # the exported model's first
    combos = [(a, hw, b) for a in archs for hw in cfg.shapes for b in cfg.bench.batches]
    models: Dict[str, Any] = {}
    rows = report.data.setdefault("bench pytorch cuda", [])
    for arch, hw, b in tqdm(combos, desc="bench pytorch cuda", file=sys.stderr, dynamic_ncols=True):
        if arch not in models:
            models[arch] = torch_model(arch, art.checkpoint)
        rows += [{"arch": arch, **r} for r in bench_torch_cuda(models[arch], shape=hw, batch=b, modes=cfg.torch_modes,
                                                               warmup=cfg.bench.warmup, iters=cfg.bench.iters)]
    report.add("bench pytorch cuda", rows, [("PyTorch on CUDA, ms per batch (CUDA events)", torch_table(rows))])


def step_summary(cfg: GpuReportConfig, art: Artifacts, report: Report) -> None:
    rows = latency_summary(report.data.get("bench pytorch cuda", []), art.bench, art.arch or cfg.model.arch)
    need(rows, "latency results")
    report.add("summary", rows, [("model-only latency of every runtime (ms per batch; ratios within this run)",
                                  summary_table(rows))])
    pairs = int8_elsewhere(art.bench, f"{cfg.export.stem}_int8.plan", f"{cfg.export.stem}_int8_fp32.plan")
    if pairs:
        report.add("summary", {"int8_fp16_vs_fp32_elsewhere": pairs}, [(
            "INT8 engines: FP16 elsewhere vs FP32 elsewhere (ms per batch, TensorRT infer stage; > 1: FP16 faster)",
            format_table(["shape", "batch", "FP16 elsewhere", "FP32 elsewhere", "x"],
                         [[p["shape"], p["batch"], p["fp16_ms"], p["fp32_ms"], p["x"]] for p in pairs]))])


def int8_elsewhere(results: Sequence[Any], fp16_plan: str, fp32_plan: str) -> List[Dict[str, Any]]:
    """Per (shape, batch) measured for both engines: the INT8 engine with FP16 elsewhere against the one with FP32
    elsewhere, in this run (issue 21: NVIDIA builds INT8 with FP16 elsewhere; this says what it gains)."""
    infer = {(Path(r.model).name, tuple(r.shape), r.batch): r.stages["infer"].median for r in results}
    out = []
    for (name, shape, batch), ms in infer.items():
        other = infer.get((fp32_plan, shape, batch))
        if name == fp16_plan and other:
            out.append({"shape": "x".join(map(str, shape)), "batch": batch, "fp16_ms": ms, "fp32_ms": other,
                        "x": other / ms})
    return out


STEPS = (("environment", step_environment), ("data", step_data), ("model", step_model),
         ("export onnx", step_export_onnx), ("export fp16", step_export_fp16), ("export int8", step_export_int8),
         ("engines", step_engines), ("parity", step_parity), ("bench tensorrt", bench_step("bench tensorrt")),
         ("bench onnxruntime", step_bench_onnx), ("bench pytorch cuda", step_bench_torch), ("summary", step_summary))


def run_gpu_report(cfg: GpuReportConfig) -> Report:
    """Run every step in order, writing ``gpu_report.md`` / ``.json`` into ``cfg.out`` after each.

    Returns:
        The report; ``report.exit_code`` is 1 when a parity tolerance failed or a step raised.

    Raises:
        FcnsegError: invalid options (before anything runs).
    """
    cfg.check()
    report = Report("gpu_report", "fcnseg GPU report", config=to_jsonable(dataclasses.asdict(cfg)))
    return run_steps(STEPS, cfg, Artifacts(), report, cfg.out)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for every artifact")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="use this instead of training")
@click.option("--data-path", default=None, type=click.Path(), help="VOC root (default: synthesize one in OUT/data)")
@click.option("--epochs", default=MODEL.epochs)
@click.option("--iters", default=BENCH.iters, help="timed iterations (GPU runtimes)")
@click.option("--ort-iters", default=ORT_ITERS, help="timed iterations for ONNX Runtime on the CPU")
@click.option("--warmup", default=BENCH.warmup)
@click.option("--shapes", default=",".join(f"{h}x{w}" for h, w in BENCH.shapes or ()), help="HxW list")
@click.option("--batches", default=",".join(map(str, BENCH.batches)))
@click.option("--limit", type=int, default=None, help="parity on the first N val images")
@click.option("--num-train", default=DataSettings.num_train, help="synthetic train images")
@click.option("--num-val", default=DataSettings.num_val, help="synthetic val images")
@click.option("--image-size", default=DataSettings.size, help="synthetic image size (also the training base size)")
@packed("data", lambda data_path, num_train, num_val, image_size: DataSettings(
    root=optional_path(data_path), num_train=num_train, num_val=num_val, size=image_size),
    ("data_path", "num_train", "num_val", "image_size"))
@cli_errors
def main(out, checkpoint, data: DataSettings, epochs, iters, ort_iters, warmup, shapes, batches, limit) -> None:
    """Environment, model, FP32/FP16/INT8 ONNX (+ TensorRT engines), parity and latency in one go.

    \b
    python -m fcnseg.benchmarks.gpu_report --out gpu_out
    python -m fcnseg.benchmarks.gpu_report --out gpu_out --checkpoint runs/r18/model_best.pth --batches 1
    """
    cfg = gpu_report_config(Path(out), checkpoint=optional_path(checkpoint), data=data, epochs=epochs, iters=iters,
                            ort_iters=ort_iters, warmup=warmup, shapes=parse_list(shapes, parse_hw, "HxW"),
                            batches=parse_list(batches, int, "batch sizes"), limit=limit)
    report = run_gpu_report(cfg)
    click.echo(render_markdown(report))
    click.echo(f"wrote {cfg.out / 'gpu_report.md'} and {cfg.out / 'gpu_report.json'}; exit code "
               f"{report.exit_code}", err=True)
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
