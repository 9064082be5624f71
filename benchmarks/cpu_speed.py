"""FCN-ResNet50 and FCN-8s/ResNet-18 at 520x520 on this CPU, side by side in one run per model: PyTorch FP32
eager (the baseline), and the FP32 and INT8 graphs on ONNX Runtime and OpenVINO, end to end through the
``Segmenter`` and model only (the library alone on a preprocessed input; OpenVINO compiled with its own
defaults). The summary gives each row's speed-up over PyTorch and, per graph, fcnseg end to end vs
OpenVINO's own model-only inference of the same graph (> 1: fcnseg is ahead). The roofline step puts each
row against this CPU's measured convolution peak (``fcnseg.benchmarks.roofline``).

Speed does not depend on the weights, so the model is randomly initialised (no download here); INT8 is
calibrated on a few synthetic images only to get realistic activation ranges. Accuracy is measured
elsewhere (the parity table on a trained model). ``python -m fcnseg.benchmarks.cpu_speed --out bench_out``

The models are prepared by ``fcnseg.benchmarks.pipeline`` (data -> random-init model -> ONNX -> INT8); the
rows benchmarked are ``CPU_ROWS`` (model key, backend, mode, precision hint), so another runtime's rows are one
entry more.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

import click

from ..core.cli_args import OneLineCommand, size_option, threads_option
from ..core.errors import cli_errors
from .pipeline import Artifacts, BenchSettings, DataSettings, ExportSettings, ModelSettings, PipelineConfig
from .report import Report, SkipStage, need, run_steps, to_jsonable, write_chart
from .steps import step_data, step_export_int8, step_export_onnx, step_model
from ..runtime.backends.openvino import INSTALL_HINT, openvino_available
from .bench import ModelSpec, backend_note, bench_models, bench_table, latency_png
from .roofline import conv_peaks, graph_macs, roofline, roofline_chart, roofline_table

DEFAULTS = dict(arch="fcn_resnet50", size=520, iters=20, calib_images=8)
ARCHS = ("fcn_resnet50", "fcn8s_resnet18")   # what `make bench-cpu` measures
# (model key, backend, mode, OpenVINO precision hint): the rows of one run, PyTorch FP32 eager first (the baseline).
# A hint of None is the default fcnseg (e2e) or OpenVINO itself (model) picks: bf16 where the CPU has it.
CPU_ROWS = (("pytorch", "pytorch", "model", None),
            ("fp32", "onnxruntime", "e2e", None), ("fp32", "onnxruntime", "model", None),
            ("fp32", "openvino", "e2e", None), ("fp32", "openvino", "e2e", "f32"), ("fp32", "openvino", "model", None),
            ("int8", "onnxruntime", "e2e", None), ("int8", "onnxruntime", "model", None),
            ("int8", "openvino", "e2e", None), ("int8", "openvino", "model", None),
            ("int8_fp32", "onnxruntime", "e2e", None), ("int8_fp32", "openvino", "e2e", None),
            ("int8_fp32", "openvino", "model", None),
            ("int8_cpu", "onnxruntime", "e2e", None), ("int8_cpu", "openvino", "model", None))
GRAPHS = {"pytorch": "PyTorch FP32 eager", "fp32": "FP32 graph", "int8": "INT8 graph (fcn-export int8, FP16 elsewhere)",
          "int8_fp32": "INT8 graph, FP32 elsewhere (opset 17)", "int8_cpu": "INT8 CPU-layout graph"}
BACKEND_TITLES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "pytorch": "PyTorch"}
# The default paths before and after issue 21, side by side in one run: (before row, after row) of CPU_ROWS.
# FP32 graphs ran in f32 on OpenVINO and now take its own default (bf16 where the CPU has it); `fcn-export int8`
# wrote FP32 elsewhere and now writes FP16 elsewhere.
BEFORE_AFTER = {
    "FP32 graph, OpenVINO": (("fp32", "openvino", "e2e", "f32"), ("fp32", "openvino", "e2e", None)),
    "INT8 graph, OpenVINO": (("int8_fp32", "openvino", "e2e", None), ("int8", "openvino", "e2e", None)),
    "INT8 graph, ONNX Runtime": (("int8_fp32", "onnxruntime", "e2e", None), ("int8", "onnxruntime", "e2e", None)),
}


def cpu_speed_config(out: Path, *, arch: str = DEFAULTS["arch"], size: int = DEFAULTS["size"],
                     iters: int = DEFAULTS["iters"], calib_images: int = DEFAULTS["calib_images"],
                     threads: "int | None" = None) -> PipelineConfig:
    """Random-init ``arch``; INT8 calibrated (min-max) on ``calib_images`` synthetic images, any drop accepted."""
    return PipelineConfig(
        out, data=DataSettings(num_train=1, num_val=calib_images, size=size),
        model=ModelSettings(arch=arch, random_init=True),
        # Random weights have no meaningful mIoU: evaluate on one image and accept any drop.
        export=ExportSettings(models=("fp32", "int8", "int8_fp32", "int8_cpu"), stem=arch,
                              verify_shapes=[(1, size, size)],
                              calib_images=calib_images, calib_method="minmax", int8_eval_images=1, max_drop=100.0),
        bench=BenchSettings(models=tuple(dict.fromkeys(row[0] for row in CPU_ROWS)), warmup=2, iters=iters,
                            rounds=4, threads=threads))


def row_label(key: str, backend: str, mode: str, hint: "str | None") -> str:
    if key == "pytorch":
        return "PyTorch FP32 eager (model only)"
    who = "fcnseg end to end" if mode == "e2e" else "model only" + (", own defaults" if backend == "openvino" else "")
    return f"{GRAPHS[key]}, {BACKEND_TITLES[backend]}{' ' + hint if hint else ''}, {who}"


def cpu_specs(art: Artifacts, rows: Sequence[tuple] = CPU_ROWS) -> list:
    """``ModelSpec`` per row whose model exists (OpenVINO rows only when it is installed)."""
    have_ov = openvino_available()
    specs = []
    for key, backend, mode, hint in rows:
        path = art.checkpoint if key == "pytorch" else art.models.get(key)
        if path and (backend != "openvino" or have_ov):
            specs.append(ModelSpec(str(path), backend, hint, mode, row_label(key, backend, mode, hint)))
    return specs


def summarize(results: list) -> dict:
    """Speed-up of each row over the first (PyTorch FP32 eager), per graph fcnseg end to end vs OpenVINO, and the
    default paths before and after (``BEFORE_AFTER``).

    ``ahead_of_openvino``: OpenVINO's own model-only median / the Segmenter's end-to-end median (default backend
    and precision) on the same graph; above 1.0 the whole fcnseg path is faster than OpenVINO's model alone.
    """
    base = results[0].e2e.median
    rows = {r.label: {"ms": r.e2e.median, "speedup_vs_pytorch": base / r.e2e.median, "backend": r.backend,
                      "precision_hint": r.precision_hint, "mode": r.mode,
                      "pre_post_share": (r.stages["preprocess"].median + r.stages["postprocess"].median)
                      / r.e2e.median} for r in results}
    ahead = {}
    for r in results:
        if r.backend == "openvino" and r.mode == "e2e" and not r.extra.get("hint_requested"):   # the defaults
            own = _openvino_model_only(results, r.model)
            if own:
                ahead[Path(r.model).name] = own.e2e.median / r.e2e.median
    return {"rows": rows, "ahead_of_openvino": ahead, "before_after": before_after(results)}


def _openvino_model_only(results: list, model: str) -> "object | None":
    return next((o for o in results if o.model == model and o.backend == "openvino" and o.mode == "model"), None)


def before_after(results: list) -> dict:
    """Each ``BEFORE_AFTER`` path measured in this run: ms, ratio to PyTorch (the first row) and to OpenVINO's
    own model-only run of the same graph (> 1: faster), the precision it ran in, and after/before (> 1: faster)."""
    by_label, base, out = {r.label: r for r in results}, results[0].e2e.median, {}
    for name, pair in BEFORE_AFTER.items():
        got = [by_label.get(row_label(*row)) for row in pair]
        if None in got:
            continue
        sides = {}
        for side, r in zip(("before", "after"), got):
            own = _openvino_model_only(results, r.model)
            sides[side] = {"label": r.label, "ms": r.e2e.median, "precision": r.precision,
                           "precision_hint": r.precision_hint, "vs_pytorch": base / r.e2e.median,
                           "vs_openvino_model_only": own.e2e.median / r.e2e.median if own else None}
        out[name] = {**sides, "after_vs_before": got[0].e2e.median / got[1].e2e.median}
    return out


def before_after_lines(summary: dict) -> list:
    """One line per path and side: ms, precision, the two ratios; then after vs before."""
    lines = []
    for name, pair in summary["before_after"].items():
        for side in ("before", "after"):
            s = pair[side]
            ov = f"x{s['vs_openvino_model_only']:.2f}" if s["vs_openvino_model_only"] else "-"
            hint = f"/{s['precision_hint']}" if s["precision_hint"] else ""
            lines.append(f"{name} {side} ({s['precision']}{hint}): {s['ms']:.1f} ms, x{s['vs_pytorch']:.2f} vs "
                         f"PyTorch, {ov} vs OpenVINO model only (same graph)")
        lines.append(f"{name}: after vs before x{pair['after_vs_before']:.2f} (> 1: faster)")
    return lines


def step_cpu_bench(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    """Every ``CPU_ROWS`` row at size x size, batch 1, interleaved in one run."""
    b, size = cfg.bench, cfg.data.size
    specs = need(cpu_specs(art), "models to benchmark")
    results = bench_models(specs, [(size, size)], [1], warmup=b.warmup, iters=b.iters, rounds=b.rounds,
                           num_threads=b.threads)
    art.bench += results
    note = backend_note(specs) or ("note: OpenVINO is not installed: no OpenVINO rows"
                                   if not any(s.backend == "openvino" for s in specs) else "")
    report.add("bench", [r.to_dict() for r in results],
               [("ms, medians; speed-up vs PyTorch FP32 eager, same run", bench_table(results) + "\n" + note)])
    report.add("bench", images=[("latency per stage", write_chart(cfg.out, "latency.png", latency_png(results)))])


def step_roofline(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    """Each row's GMAC/s against this CPU's measured convolution peaks, and the INT8 ceiling over PyTorch."""
    if not openvino_available():
        raise SkipStage(f"needs OpenVINO to count the MACs and measure the peaks: {INSTALL_HINT}")
    size = cfg.data.size
    summary = roofline(need(art.bench, "benchmark results"), graph_macs(art.models["fp32"], (1, 3, size, size)),
                       conv_peaks(num_threads=cfg.bench.threads))
    report.add("roofline", summary, [("GMAC/s per row and its share of the peak of the precision it ran in",
                                      roofline_table(summary))])
    report.add("roofline", images=[("GMAC/s per row against each precision's peak",
                                    write_chart(cfg.out, "roofline.png", roofline_chart(summary)))])


def step_summary(cfg: PipelineConfig, art: Artifacts, report: Report) -> None:
    summary = summarize(need(art.bench, "benchmark results"))
    lines = [f"{name}: {s['ms']:.0f} ms, x{s['speedup_vs_pytorch']:.2f} vs PyTorch FP32 eager"
             for name, s in summary["rows"].items()]
    lines += [f"{name}: fcnseg end to end vs OpenVINO model only (own defaults), same graph: x{ratio:.2f}"
              for name, ratio in summary["ahead_of_openvino"].items()]
    lines += before_after_lines(summary)
    report.add("summary", summary, [(f"{cfg.model.arch} {cfg.data.size}x{cfg.data.size}, batch 1",
                                     "\n".join(lines))])


STEPS = (("data", step_data), ("model", step_model), ("export onnx", step_export_onnx),
         ("export int8", step_export_int8), ("bench", step_cpu_bench), ("roofline", step_roofline),
         ("summary", step_summary))


def run_cpu_speed(cfg: PipelineConfig) -> Report:
    """Prepare the models and benchmark them; ``cpu_speed.md`` / ``cpu_speed.json`` in ``cfg.out``."""
    cfg.check()
    report = Report("cpu_speed", "fcnseg CPU speed", config=to_jsonable(dataclasses.asdict(cfg)))
    return run_steps(STEPS, cfg, Artifacts(), report, cfg.out)


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", default="bench_out", type=click.Path(file_okay=False),
              help="results go to OUT/ARCH/cpu_speed.md and .json")
@click.option("--arch", "archs", multiple=True, default=ARCHS, help="model(s) to measure; repeatable")
@size_option(f"image side to measure at [default: {DEFAULTS['size']}]")
@click.option("--iters", default=DEFAULTS["iters"], help="timed runs per model (checked with the other counts)")
@click.option("--calib-images", default=DEFAULTS["calib_images"])
@threads_option("CPU threads for every runtime [default: theirs]")
@cli_errors
def main(out: str, archs: Sequence[str], size: Optional[int], iters: int, calib_images: int,
         threads: Optional[int]) -> None:
    """PyTorch FP32 eager vs ONNX Runtime and OpenVINO (FP32 and INT8 graphs), end to end and model only."""
    size = size or DEFAULTS["size"]
    code = 0
    for arch in archs:
        report = run_cpu_speed(cpu_speed_config(Path(out) / arch, arch=arch, size=size, iters=iters,
                                                calib_images=calib_images, threads=threads))
        for _, title, text in report.tables:
            click.echo(f"{title}:\n{text}\n")
        code = code or report.exit_code
    sys.exit(code)


if __name__ == "__main__":
    main()
