"""``fcn-eval``: mIoU of one model, or the cross-backend parity table of several, thin over ``fcnseg.eval``."""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Callable

import click

from ..core import output_guard as outputs
from ..core.backend_names import PARITY_PRECISION_HINT
from ..core.cli_args import (BackendChoice, OneLineCommand, backend_options, dataset_options, force_option,
                             mode_options, packed, size_option)
from ..core.data_source import DataSource
from ..core.errors import FcnsegError, cli_errors
from ..core.jsonio import write_json
from .evaluate import EVAL_JSON, TOLERANCES, class_delta_table, compare_models, parity_table
from .plots import check_chart_outputs, parity_charts, write_charts

CTX = {"help_option_names": ["-h", "--help"], "show_default": True}
FORCE_HELP = "replace an existing --json even when it is not an fcnseg report of the same kind"


def tolerance_options(fn: Callable) -> Callable:
    """``--tol-fp32``, ``--tol-fp16`` and ``--tol-int8``, passed as one ``tolerances`` dict (points, by precision)."""
    fn = packed("tolerances", lambda **t: {k[len("tol_"):]: v for k, v in t.items()}, ("tol_fp32", "tol_fp16",
                                                                                     "tol_int8"))(fn)
    fn = click.option("--tol-int8", type=click.FloatRange(min=0), default=TOLERANCES["int8"])(fn)
    fn = click.option("--tol-fp16", type=click.FloatRange(min=0), default=TOLERANCES["fp16"])(fn)
    return click.option("--tol-fp32", type=click.FloatRange(min=0), default=TOLERANCES["fp32"],
                        help="allowed |mIoU delta| in points")(fn)


@click.command(cls=OneLineCommand, context_settings=CTX)
@click.option("--model", "model", default=None, help="one model: .pth, .onnx or .plan/.engine")
@click.option("--compare", "compare", multiple=True, help="models to compare; the first is the reference "
              "(repeat, or list them after --compare)")
@click.argument("more", nargs=-1)
@dataset_options()
@click.option("--split", default="val")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="evaluate only the first N images")
@size_option()
@mode_options
@backend_options(multiple=True, hint_default="f32, for parity")
@tolerance_options
@click.option("--json", "json_path", default=None, type=click.Path(), help="write all results as JSON, and "
              "beside it <stem>_iou.png (per-class IoU and deltas) and <stem>_confusion.png (the worst model's)")
@force_option(FORCE_HELP)
@cli_errors
def eval_main(model, compare, more, data: DataSource, split, limit, size, mode: dict, backend: BackendChoice,
              tolerances: dict, json_path, force) -> None:
    """Evaluate a model's mIoU on a dataset split (any layout), or compare several models on the same images.

    \b
    fcn-eval --model runs/fcn/model_best.pth --data-path data/voc
    fcn-eval --data-path data/voc --compare ckpt.pth model.onnx model_fp16.onnx model_int8.onnx
    """
    paths = list(compare) + list(more)
    if model:
        paths.insert(0, model)
    if not paths:
        raise FcnsegError("expected --model PATH or --compare PATH..., got no model; try fcn-eval -h")
    charts = {}
    if json_path:
        outputs.check_output(json_path, EVAL_JSON, inputs=paths, force=force, option="--json")
        charts = check_chart_outputs(json_path, ("iou", "confusion"), inputs=paths, force=force)
    run = replace(backend, precision_hint=backend.precision_hint or PARITY_PRECISION_HINT)
    view = {**mode, "classes": data.classes} if data.classes else mode   # the dataset's names for the models too
    result = compare_models(paths, data, split, limit=limit, size=size, tolerances=tolerances, run=run, view=view)
    click.echo(parity_table(result))
    click.echo("\nper-class IoU (%) and deltas (points):")
    click.echo(class_delta_table(result))
    if json_path:
        write_json(json_path, {"split": split, **result.to_dict()})
        write_charts(charts, parity_charts(result))
    if not result:
        click.echo(f"error: {result.summary()}", err=True)
        sys.exit(1)
