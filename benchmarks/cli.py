"""``fcn-bench``: latency of models side by side in one run, or the load of a Triton server, thin over the library."""

from __future__ import annotations


import click

from ..core import output_guard as outputs
from ..core.cli_args import BackendChoice, OneLineCommand, backend_options, force_option, shape_option
from ..core.errors import FcnsegError, cli_errors
from .bench import BENCH_CSV, BENCH_JSON, backend_note, bench_models, bench_table, model_specs, write_csv
from .power import open_power_monitor, power_table
from .triton_bench import run_triton_cli
from .report import write_json

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}
FORCE_HELP = "replace an existing --json/--csv even when it is not an fcnseg report of the same kind"


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--engine", "engines", multiple=True, help="TensorRT engine (.plan/.engine); repeatable")
@click.option("--model", "models", multiple=True, help=".onnx or .pth model; repeatable")
@shape_option("--shape", "shapes", multiple=True, default=["520x520"], help="HxW; repeatable")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=[1], help="repeatable")
@click.option("--warmup", type=click.IntRange(min=0), default=5)
@click.option("--iters", type=click.IntRange(min=1), default=50)
@click.option("--rounds", type=click.IntRange(min=1), default=5, help="interleave the models in this many blocks")
@backend_options(multiple=True, hint_default="f32 for FP32/FP16 graphs, OpenVINO's own for INT8 graphs")
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
@force_option(FORCE_HELP)
@cli_errors
def bench_main(triton_url, triton_model, concurrency, requests, protocol, engines, models, shapes, batches, warmup,
               iters, rounds, backend: BackendChoice, model_only, power, power_interval, json_path, csv_path,
               force) -> None:
    """Latency per stage and end to end, for one or several models in one run (ratios side by side)."""
    if triton_url:
        check_triton_options(click.get_current_context())

        return run_triton_cli(triton_url, triton_model, models, shapes, concurrency, requests, protocol, json_path,
                              force)

    paths = list(models) + list(engines)
    if not paths:
        raise FcnsegError("expected --engine PATH or --model PATH, got neither; try fcn-bench -h")
    for path, kind, option in ((json_path, BENCH_JSON, "--json"), (csv_path, BENCH_CSV, "--csv")):
        if path:
            outputs.check_output(path, kind, inputs=paths, force=force, option=option)
    prov = backend.providers
    specs = model_specs(paths, backend.backends, precision_hint=backend.precision_hint, providers=prov,
                        modes=("e2e", "model") if model_only else ("e2e",))

    monitor = open_power_monitor(power_interval) if power else None   # one error line off a Jetson, before loading
    try:
        hws = list(shapes)
        check_fits_in_memory(hws, batches)
        results = bench_models(specs, hws, list(batches), warmup=warmup, iters=iters,
                               rounds=rounds, providers=prov, num_threads=backend.threads, power=monitor)
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
        write_json(json_path, [r.to_dict() for r in results])
    if csv_path:
        write_csv(results, csv_path)


# fcn-bench options that only the in-process benchmark reads: refused next to --triton rather than ignored.
NOT_WITH_TRITON = ("engines", "batches", "warmup", "iters", "rounds", "threads", "providers", "backend_names",
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
