"""``fcn-bench``: latency of models side by side in one run, or the load of a Triton server, thin over the library."""

from __future__ import annotations


import click

from ..core import output_guard as outputs
from typing import Callable, Optional, Sequence

from ..core.cli_args import (BackendChoice, OneLineCommand, backend_options, force_option, mode_options, packed,
                             shape_option)
from ..core.errors import FcnsegError, cli_errors
from .bench import BENCH_CSV, BENCH_JSON, Timing, bench_table, latency_png, run_benchmark, write_csv
from ..eval import plots
from .triton_bench import TritonLoad, run_triton_cli
from .report import write_json

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}
FORCE_HELP = "replace an existing --json/--csv even when it is not an fcnseg report of the same kind"


def _timing(warmup: int, iters: int, rounds: int) -> Timing:
    return Timing(warmup, iters, rounds)


def _triton(triton_url: Optional[str], triton_model: str, concurrency: Sequence[int], requests: int,
            protocol: str) -> Optional[TritonLoad]:
    return TritonLoad(triton_url, triton_model, tuple(concurrency), requests, protocol) if triton_url else None


def _power(power: bool, power_interval: int) -> Optional[int]:
    return power_interval if power else None


def timing_options(fn: Callable) -> Callable:
    """``--warmup``, ``--iters`` and ``--rounds``, passed as one ``timing: Timing``."""
    fn = packed("timing", _timing, ("warmup", "iters", "rounds"))(fn)
    fn = click.option("--rounds", type=click.IntRange(min=1), default=Timing.rounds,
                      help="interleave the models in this many blocks")(fn)
    fn = click.option("--iters", type=click.IntRange(min=1), default=Timing.iters)(fn)
    return click.option("--warmup", type=click.IntRange(min=0), default=Timing.warmup)(fn)


def triton_options(fn: Callable) -> Callable:
    """``--triton`` and the options of a Triton load, passed as one ``triton: Optional[TritonLoad]``."""
    fn = packed("triton", _triton, ("triton_url", "triton_model", "concurrency", "requests", "protocol"))(fn)
    fn = click.option("--protocol", type=click.Choice(["http", "grpc"]), default=TritonLoad.protocol,
                      help="with --triton")(fn)
    fn = click.option("--requests", type=click.IntRange(min=1), default=TritonLoad.requests,
                      help="requests per client (with --triton)")(fn)
    fn = click.option("--concurrency", multiple=True, type=click.IntRange(min=1),
                      default=list(TritonLoad.concurrency), help="concurrent clients (with --triton); repeatable")(fn)
    fn = click.option("--triton-model", default=TritonLoad.model,
                      help="the model the Triton server serves (with --triton)")(fn)
    return click.option("--triton", "triton_url", default=None, metavar="HOST:PORT", help="load a Triton server at "
                        "--concurrency clients instead (throughput, p50/p90/p99); --model is timed in-process "
                        "alongside")(fn)


def power_options(fn: Callable) -> Callable:
    """``--power`` and ``--power-interval``, passed as ``power_interval_ms`` (None without ``--power``)."""
    fn = packed("power_interval_ms", _power, ("power", "power_interval"))(fn)
    fn = click.option("--power-interval", type=click.IntRange(min=1), default=100,
                      help="ms between power samples")(fn)
    return click.option("--power", is_flag=True, help="on a Jetson: sample tegrastats (or the INA3221 rails) and "
                        "report average board power (W) and energy per image (mJ) next to img/s")(fn)


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--engine", "engines", multiple=True, help="TensorRT engine (.plan/.engine); repeatable")
@click.option("--model", "models", multiple=True, help=".onnx or .pth model; repeatable")
@shape_option("--shape", "shapes", multiple=True, default=["520x520"], help="HxW; repeatable")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(min=1), default=[1], help="repeatable")
@timing_options
@backend_options(multiple=True)
@mode_options
@click.option("--model-only", is_flag=True, help="also time each library alone on a preprocessed input "
              "(OpenVINO compiled with its own defaults)")
@triton_options
@power_options
@click.option("--json", "json_path", default=None, type=click.Path(),
              help="write the rows as JSON; runs in this process also chart their stages in <stem>_latency.png "
              "beside it")
@click.option("--csv", "csv_path", default=None, type=click.Path(),
              help="write the rows as CSV (and the chart beside it when there is no --json)")
@force_option(FORCE_HELP)
@cli_errors
def bench_main(engines, models, shapes, batches, timing: Timing, backend: BackendChoice, mode: dict, model_only: bool,
               triton: Optional[TritonLoad], power_interval_ms: Optional[int], json_path, csv_path, force) -> None:
    """Latency per stage and end to end, for one or several models in one run (ratios side by side)."""
    if triton is not None:
        check_triton_options(click.get_current_context())
        return run_triton_cli(triton, models, shapes, json_path, force)
    paths = list(models) + list(engines)
    for path, kind, option in ((json_path, BENCH_JSON, "--json"), (csv_path, BENCH_CSV, "--csv")):
        if path:
            outputs.check_output(path, kind, inputs=paths, force=force, option=option)
    # the chart goes beside --json (else --csv) as <stem>_latency.png, under the same rules
    beside = (json_path, "--json") if json_path else (csv_path, "--csv")
    charts = plots.check_chart_outputs(beside[0], ["latency"], inputs=paths, force=force,
                                       option=beside[1]) if beside[0] else {}
    run = run_benchmark(paths, shapes, batches, timing=timing, run=backend, model_only=model_only,
                        power_interval_ms=power_interval_ms, view=mode)
    tiles = [f"{r.model}: {r.extra['tiles_per_image']} tiles per image, {r.extra['tiles_per_s']:.1f} tiles/s"
             for r in run.results if "tiles_per_s" in r.extra]
    click.echo("\n".join(filter(None, [bench_table(run.results), *tiles, run.power_table, run.note])))
    if json_path:
        write_json(json_path, [r.to_dict() for r in run.results])
    if csv_path:
        write_csv(run.results, csv_path)
    if charts:
        plots.write_charts(charts, {"latency": latency_png(run.results)})


# fcn-bench options that only the in-process benchmark reads: refused next to --triton rather than ignored.
NOT_WITH_TRITON = ("engines", "batches", "warmup", "iters", "rounds", "threads", "providers", "backend_names",
                   "precision_hint", "model_only", "power", "power_interval", "csv_path", "mode", "tile", "stride")


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
