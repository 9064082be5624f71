"""``fcn-eval`` (mIoU and the cross-backend parity table) and ``fcn-bench`` (latency), thin over the library."""

from __future__ import annotations

import sys

import click

from ..runtime import outputs
from ..runtime.cliutil import OneLineCommand
from ..runtime.backends.openvino import PARITY_PRECISION_HINT, PRECISION_HINTS
from ..runtime.errors import FcnsegError, cli_errors
from ..runtime.segmenter import BACKEND_NAMES
from .evaluate import TOLERANCES

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}
FORCE_HELP = "replace an existing --json/--csv even when it is not an fcnseg report of the same kind"


def _backend_options(fn):
    """``--providers``, ``--backend`` (repeatable: one row per backend) and ``--precision-hint``, as one decorator."""
    fn = click.option("--precision-hint", type=click.Choice(PRECISION_HINTS), default=None,
                      help="OpenVINO precision for non-INT8 layers (bf16: faster on CPUs with BF16) [default: "
                           "fcn-eval f32, for parity; fcn-bench f32 for FP32/FP16 graphs, OpenVINO's own for INT8]")(fn)
    fn = click.option("--backend", "backends", multiple=True, type=click.Choice(BACKEND_NAMES),
                      help="run each .onnx with this backend; repeat for one row per backend [default: the fastest "
                           "installed]")(fn)
    return click.option("--providers", default=None, help="ONNX Runtime providers, comma-separated")(fn)


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--model", "model", default=None, help="one model: .pth, .onnx or .plan/.engine")
@click.option("--compare", "compare", multiple=True, help="models to compare; the first is the reference "
              "(repeat, or list them after --compare)")
@click.argument("more", nargs=-1)
@click.option("--data-path", required=True, type=click.Path(), help="folder containing VOCdevkit/VOC2012")
@click.option("--split", default="val")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="evaluate only the first N images")
@click.option("--size", type=int, default=None, help="shorter side at inference (default: the model's)")
@_backend_options
@click.option("--tol-fp32", default=TOLERANCES["fp32"], help="allowed |mIoU delta| in points")
@click.option("--tol-fp16", default=TOLERANCES["fp16"])
@click.option("--tol-int8", default=TOLERANCES["int8"])
@click.option("--json", "json_path", default=None, type=click.Path(), help="write all results as JSON")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@cli_errors
def eval_main(model, compare, more, data_path, split, limit, size, providers, backends, precision_hint, tol_fp32,
              tol_fp16, tol_int8, json_path, force) -> None:
    """Evaluate a model's mIoU on a VOC split, or compare several models on the same images.

    \b
    fcn-eval --model runs/fcn/model_best.pth --data-path data/voc
    fcn-eval --data-path data/voc --compare ckpt.pth model.onnx model_fp16.onnx model_int8.onnx
    """
    from .evaluate import class_delta_table, compare_models, parity_table

    paths = list(compare) + list(more)
    if model:
        paths.insert(0, model)
    if not paths:
        raise FcnsegError("expected --model PATH or --compare PATH..., got no model; try fcn-eval -h")
    if json_path:
        outputs.check_output(json_path, outputs.EVAL_JSON, inputs=paths, force=force, option="--json")
    from ..runtime.backends.onnxruntime import parse_providers

    prov = parse_providers(providers)
    tol = {"fp32": tol_fp32, "fp16": tol_fp16, "int8": tol_int8}
    result = compare_models(paths, data_path, split, limit=limit, size=size, tolerances=tol, providers=prov,
                            backends=list(backends) or [None], precision_hint=precision_hint or PARITY_PRECISION_HINT)
    click.echo(parity_table(result))
    click.echo("\nper-class IoU (%) and deltas (points):")
    click.echo(class_delta_table(result))
    if json_path:
        from .report import write_json

        write_json(json_path, {"split": split, **result.to_dict()})
    if not result:
        click.echo(f"error: {result.summary()}", err=True)
        sys.exit(1)


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--engine", "engines", multiple=True, help="TensorRT engine (.plan/.engine); repeatable")
@click.option("--model", "models", multiple=True, help=".onnx or .pth model; repeatable")
@click.option("--shape", "shapes", multiple=True, default=["520x520"], help="HxW; repeatable")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=[1], help="repeatable")
@click.option("--warmup", type=click.IntRange(min=0), default=5)
@click.option("--iters", type=click.IntRange(min=1), default=50)
@click.option("--rounds", type=click.IntRange(min=1), default=5, help="interleave the models in this many blocks")
@click.option("--threads", type=int, default=None, help="CPU threads (OpenVINO, ONNX Runtime intra-op, PyTorch)")
@_backend_options
@click.option("--model-only", is_flag=True, help="also time each library alone on a preprocessed input "
              "(OpenVINO compiled with its own defaults)")
@click.option("--triton", "triton_url", default=None, metavar="HOST:PORT", help="load a Triton server at "
              "--concurrency clients instead (throughput, p50/p90/p99); --model is timed in-process alongside")
@click.option("--triton-model", default="fcnseg", help="the model the Triton server serves (with --triton)")
@click.option("--concurrency", multiple=True, type=click.IntRange(min=1), default=[1, 4, 16],
              help="concurrent clients (with --triton); repeatable")
@click.option("--requests", type=click.IntRange(min=1), default=20, help="requests per client (with --triton)")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http", help="with --triton")
@click.option("--power", is_flag=True, help="on a Jetson: sample tegrastats (or the INA3221 rails) and report "
              "average board power (W) and energy per image (mJ) next to img/s")
@click.option("--power-interval", type=click.IntRange(min=1), default=100, help="ms between power samples")
@click.option("--json", "json_path", default=None, type=click.Path())
@click.option("--csv", "csv_path", default=None, type=click.Path())
@click.option("--force", is_flag=True, help=FORCE_HELP)
@cli_errors
def bench_main(triton_url, triton_model, concurrency, requests, protocol, engines, models, shapes, batches, warmup,
               iters, rounds, threads, providers, backends, precision_hint, model_only, power, power_interval,
               json_path, csv_path, force) -> None:
    """Latency per stage and end to end, for one or several models in one run (ratios side by side)."""
    if triton_url:
        from .triton_bench import run_triton_cli

        check_triton_options(click.get_current_context())

        return run_triton_cli(triton_url, triton_model, models, shapes, concurrency, requests, protocol, json_path,
                              force)
    from .bench import backend_note, bench_models, bench_table, model_specs, parse_hw, write_csv

    paths = list(models) + list(engines)
    if not paths:
        raise FcnsegError("expected --engine PATH or --model PATH, got neither; try fcn-bench -h")
    for path, kind, option in ((json_path, outputs.BENCH_JSON, "--json"), (csv_path, outputs.BENCH_CSV, "--csv")):
        if path:
            outputs.check_output(path, kind, inputs=paths, force=force, option=option)
    from ..runtime.backends.onnxruntime import parse_providers

    prov = parse_providers(providers)
    specs = model_specs(paths, list(backends) or [None], precision_hint=precision_hint, providers=prov,
                        modes=("e2e", "model") if model_only else ("e2e",))
    from .power import open_power_monitor, power_table

    monitor = open_power_monitor(power_interval) if power else None   # one error line off a Jetson, before loading
    try:
        hws = [parse_hw(s) for s in shapes]
        check_fits_in_memory(hws, batches)
        results = bench_models(specs, hws, list(batches), warmup=warmup, iters=iters,
                               rounds=rounds, providers=prov, num_threads=threads, power=monitor)
    finally:
        if monitor is not None:
            monitor.close()
    click.echo(bench_table(results))
    if monitor is not None:
        click.echo(power_table(results, monitor))
    note = backend_note(specs)
    if note:
        click.echo(note)
    if json_path:
        from .report import write_json

        write_json(json_path, [r.to_dict() for r in results])
    if csv_path:
        write_csv(results, csv_path)


# fcn-bench options that only the in-process benchmark reads: refused next to --triton rather than ignored.
NOT_WITH_TRITON = ("engines", "batches", "warmup", "iters", "rounds", "threads", "providers", "backends",
                   "precision_hint", "model_only", "power", "power_interval", "csv_path")


def check_triton_options(ctx: click.Context) -> None:
    """Refuse, in one error, every option given with ``--triton`` that a Triton load does not read."""
    from click.core import ParameterSource

    given = [p.opts[0] for p in ctx.command.params
             if p.name in NOT_WITH_TRITON and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise FcnsegError(f"expected only options that apply to --triton, got {', '.join(given)}, which "
                          f"{'does' if len(given) == 1 else 'do'} not apply to a Triton load; try without "
                          f"{'it' if len(given) == 1 else 'them'} (--triton reads --triton-model, --model, --shape, "
                          "--concurrency, --requests, --protocol, --json)")


def check_fits_in_memory(shapes, batches) -> None:
    """Refuse a --shape/--batch whose images and network input would not fit in memory (instead of an OOM kill)."""
    import os

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    for h, w in shapes:
        for b in batches:
            need = b * h * w * 3 * (1 + 4 + 4)   # uint8 images, float32 input, float32 logits of >= 3 classes
            if need > total // 2:
                raise FcnsegError(f"expected --shape and --batch that fit in half of this machine's "
                                  f"{total / 2**30:.0f} GiB, got {h}x{w} x {b} needing about {need / 2**30:.0f} GiB; "
                                  "try --shape 520x520")
