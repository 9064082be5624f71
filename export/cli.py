"""``fcn-export``: checkpoint -> ONNX -> FP16 / INT8 ONNX -> TensorRT engine, and a TensorRT-readiness check.

Each subcommand parses its options and makes one call into ``fcnseg.export``. Errors in the input
(``FcnsegError``) print one line on stderr and exit with status 2; ``--debug`` shows the traceback.
``fcn-export check`` exits with status 1 when the graph breaks a TensorRT rule.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import click

from ..core import output_guard as outputs
from ..core.cli_args import OneLineGroup
from ..core.errors import FcnsegError, handle_cli_errors
from ..core.onnx_names import DEFAULT_OPSET
from . import triton


class _Group(OneLineGroup):
    """A click group whose commands' ``FcnsegError`` goes through the one CLI error handler (``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        with handle_cli_errors(bool(ctx.params.get("debug"))):
            return super().invoke(ctx)


class _EchoHandler(logging.Handler):
    """Log records to stderr through click (so test runners that swap stderr capture them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("fcnseg")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


FORCE_HELP = "Replace an existing output even when it is not an fcnseg artifact of the same kind (never an input)."


def _sibling(model: str, suffix: str) -> Path:
    src = Path(model)
    return src.with_name(src.stem + suffix)


def _guard(path: Any, kind: "outputs.ArtifactKind", inputs: list, force: bool, option: str = "-o") -> str:
    """Check an output before any work (see ``fcnseg.core.output_guard.check_output``); inputs must be readable."""
    for item in inputs:
        outputs.check_readable(item)
    return str(outputs.check_output(path, kind, inputs=inputs, force=force, option=option))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def main(debug: bool, quiet: bool) -> None:
    """Export FCN checkpoints to ONNX (FP32, FP16, INT8 Q/DQ) and TensorRT engines."""
    _configure_logging(quiet)


@main.command("onnx")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="ONNX file [default: CHECKPOINT.onnx].")
@click.option("--arch", help="Model name (needed when the checkpoint does not record it).")
@click.option("--num-classes", type=int, help="Expected class count (checked against the checkpoint).")
@click.option("--argmax", is_flag=True, help="End in ArgMax: output a uint8 'mask' (N,H,W) instead of logits.")
@click.option("--static", "static_hw", metavar="HxW", help="Fix the input to 1x3xHxW (default: dynamic N, H, W).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset (13..20).")
@click.option("--trt8", is_flag=True, help="Stay within TensorRT 8.x (opset <= 17).")
@click.option("--min-size", type=int, default=64, show_default=True, help="Smallest input height/width declared.")
@click.option("--max-size", type=int, default=2048, show_default=True, help="Largest input height/width declared.")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--verify-shapes", metavar="NxHxW,...", help="Shapes to verify at [default: 1x97x131,1x375x500,"
              "1x520x520,2x97x131].")
@click.option("--force", is_flag=True, help=FORCE_HELP)
def onnx_cmd(checkpoint: str, output: Optional[str], arch: Optional[str], num_classes: Optional[int],
             argmax: bool, static_hw: Optional[str], opset: int, trt8: bool, min_size: int, max_size: int,
             no_verify: bool, verify_shapes: Optional[str], force: bool) -> None:
    """Export CHECKPOINT to ONNX, verified against PyTorch on ONNX Runtime."""
    from .onnx_export import TRT8_MAX_OPSET, export_onnx, parse_hw, parse_shapes

    output = _guard(output or Path(checkpoint).with_suffix(".onnx"), outputs.ONNX_MODEL, [checkpoint], force)
    result = export_onnx(checkpoint, output, arch=arch, num_classes=num_classes, argmax=argmax,
                         static_hw=parse_hw(static_hw) if static_hw else None,
                         opset=min(opset, TRT8_MAX_OPSET) if trt8 else opset, verify=not no_verify,
                         verify_shapes=parse_shapes(verify_shapes) if verify_shapes else None,
                         min_size=min_size, max_size=max_size)
    click.echo(result.path)


@main.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL_fp16.onnx]")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with the FP32 graph.")
@click.option("--verify-shapes", metavar="NxHxW,...", help="Shapes to verify at.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
def fp16_cmd(model: str, output: Optional[str], no_verify: bool, verify_shapes: Optional[str], force: bool) -> None:
    """Convert an FP32 ONNX MODEL to FP16 (float32 inputs/outputs kept)."""
    from .fp16 import convert_fp16
    from .onnx_export import parse_shapes

    output = _guard(output or _sibling(model, "_fp16.onnx"), outputs.ONNX_MODEL, [model], force)
    result = convert_fp16(model, output, verify=not no_verify,
                          verify_shapes=parse_shapes(verify_shapes) if verify_shapes else None)
    click.echo(result.path)


@main.command("int8")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib-data", "calib_root", required=True, type=click.Path(file_okay=False),
              help="VOC root (the folder holding VOCdevkit/).")
@click.option("--calib-split", default="val", show_default=True)
@click.option("--num-images", type=int, default=500, show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["entropy", "minmax", "percentile"]), default="entropy",
              show_default=True)
@click.option("--cache", type=click.Path(dir_okay=False), help="Calibration cache JSON (reused when it matches).")
@click.option("--eval-split", default="val", show_default=True,
              help="Split for the FP32/INT8 mIoU comparison; with the calibration split, its images are divided "
                   "(calibration: --num-images, at most half; evaluation: the rest), never measured where calibrated.")
@click.option("--eval-images", type=int, help="Evaluate on at most N of the evaluation images [default: all].")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write a JSON report: calibration_ids, evaluation_ids, fp32/int8 mIoU, layers kept in float.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accepted mIoU drop (points); beyond it, sensitive layers stay in float.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="tensorrt: symmetric Q/DQ TensorRT builds and fuses, and OpenVINO runs as fast on a CPU (the one "
              "artifact); cpu: ONNX Runtime's uint8 layout, faster only on ONNX Runtime without OpenVINO.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL_int8.onnx]")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
def int8_cmd(model: str, calib_root: str, calib_split: str, num_images: int, method: str, cache: Optional[str],
             eval_split: str, eval_images: Optional[int], max_drop: float, target: str, output: Optional[str],
             no_progress: bool, force: bool, report: Optional[str]) -> None:
    """Quantize an FP32 ONNX MODEL to INT8 Q/DQ and report the mIoU drop against FP32."""
    from .int8 import quantize_int8

    output = _guard(output or _sibling(model, "_int8.onnx"), outputs.ONNX_MODEL, [model], force)
    if cache:
        cache = _guard(cache, outputs.CALIBRATION_CACHE, [model, output], force, option="--cache")
    if report:
        report = _guard(report, outputs.INT8_REPORT, [model], force, option="--report")
    result = quantize_int8(model, output, calib_root=calib_root, calib_split=calib_split, num_images=num_images,
                           method=method, cache=cache, eval_split=eval_split, eval_images=eval_images,
                           max_drop=max_drop, target=target, progress=not no_progress, report=report)
    click.echo(f"{result.path}\tmIoU fp32 {result.miou_fp32 * 100:.2f} int8 {result.miou_int8 * 100:.2f} "
               f"({-result.drop:+.2f} points), {len(result.excluded)} layers in float")


@main.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
def check_cmd(model: str) -> None:
    """Check that MODEL is TensorRT-ready (ops, opset, I/O types, Q/DQ placement); exit 1 if not."""
    from .check import check_trt_ready

    report = check_trt_ready(model)
    click.echo(str(report))
    if not report:
        click.get_current_context().exit(1)


@main.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@click.option("--library", type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]), default="auto", show_default=True,
              help="TensorRT library that parses an ONNX MODEL.")
def inspect_cmd(model: str, as_json: bool, library: str) -> None:
    """Show MODEL.onnx as TensorRT parses it (layers, dtypes, shapes, INT8/FP16/FP32), or ENGINE.plan's sidecar."""
    from .inspection import inspect_path

    click.echo(inspect_path(model, library=library, as_json=as_json))


@main.command("triton")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--repo", "repo_dir", required=True, type=click.Path(file_okay=False), help="Model repository folder.")
@click.option("--name", default=triton.DEFAULT_NAME, show_default=True, help="Model name (the ensemble: NAME_image).")
@click.option("--max-batch", type=int, help="Largest batch [default: 8, within a .plan's profile].")
@click.option("--instances", type=int, default=triton.Batching.instances, show_default=True)
@click.option("--preferred-batch", metavar="N,N", help="Preferred batch sizes [default: 4,8 up to --max-batch].")
@click.option("--max-queue-delay-us", type=int, default=triton.Batching.max_queue_delay_us, show_default=True)
@click.option("--kind", type=click.Choice(triton.KINDS), default=triton.Batching.kind, show_default=True)
@click.option("--backend", type=click.Choice(triton.ONNX_BACKENDS), default=triton.ONNX_BACKENDS[0],
              show_default=True, help="Triton backend for an .onnx (openvino, python: --kind cpu; python runs "
              "fcnseg's runtime, for servers without the others).")
@click.option("--with-preprocessing", is_flag=True, help="Add an ensemble taking encoded images, returning masks.")
@click.option("--force", is_flag=True, help="Replace model folders that exist.")
def triton_cmd(model: str, repo_dir: str, name: str, max_batch: Optional[int], instances: int,
               preferred_batch: Optional[str], max_queue_delay_us: int, kind: str, backend: str,
               with_preprocessing: bool, force: bool) -> None:
    """Write a Triton model repository serving MODEL (.onnx or .plan with its sidecar)."""
    batching = triton.Batching(max_batch=max_batch, instances=instances, max_queue_delay_us=max_queue_delay_us,
                               kind=kind, preferred=triton.parse_batch_sizes(preferred_batch))
    repo = triton.export_triton(model, repo_dir, name=name, batching=batching, onnx_backend=backend,
                                with_preprocessing=with_preprocessing, force=force)
    click.echo(repo.root / repo.entry)


@main.command("trt")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--fp16", is_flag=True, help="FP16 engine (runs the fp16 step first on an FP32 graph).")
@click.option("--int8", is_flag=True, help="INT8 engine (runs the int8 step first on an FP32 graph).")
@click.option("--calib-data", "calib_root", type=click.Path(file_okay=False), help="VOC root for --int8.")
@click.option("--min-shape", metavar="NxCxHxW", help="[default: 1x3x256x256, fitted to the graph]")
@click.option("--opt-shape", metavar="NxCxHxW", help="[default: 1x3x520x520]")
@click.option("--max-shape", metavar="NxCxHxW", help="[default: 1x3x1024x1024]")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file (loaded and saved).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL.plan]")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--library", type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]), default="auto", show_default=True,
              help="auto: tensorrt when importable, else tensorrt_rtx (TensorRT for RTX, builds on a CPU).")
@click.option("--compute-capability", "compute_capability", metavar="8.6,8.9,12.0",
              help="GPU targets for TensorRT for RTX [default: its portable set 8.6,8.9,12.0].")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson AGX/NX; FP16 or INT8).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: run layers DLA cannot on the GPU.")
@click.option("--save-onnx", type=click.Path(dir_okay=False),
              help="Keep the FP16/INT8 ONNX that --fp16/--int8 make from an FP32 graph here [default: a temp folder].")
def trt_cmd(model: str, fp16: bool, int8: bool, calib_root: Optional[str], min_shape: Optional[str],
            opt_shape: Optional[str], max_shape: Optional[str], workspace: float, timing_cache: Optional[str],
            output: Optional[str], force: bool, library: str, compute_capability: Optional[str],
            dla_core: Optional[int], gpu_fallback: bool, save_onnx: Optional[str]) -> None:
    """Build a TensorRT engine from MODEL (an FP32, FP16 or INT8 Q/DQ ONNX)."""
    from ..core.shapes import parse_dims
    from ..core.sidecar import sidecar_path
    from .tensorrt import check_output_path, parse_compute_capabilities

    output = str(check_output_path(output or Path(model).with_suffix(".plan")))   # before any FP16/INT8 step
    output = _guard(output, outputs.ENGINE, [model], force)
    _guard(sidecar_path(output), outputs.ENGINE_SIDECAR, [model], force)   # the sidecar written next to it
    if fp16 and int8:
        raise click.UsageError("expected at most one of --fp16 and --int8, got both")
    shapes = {k: parse_dims(v) if v else None for k, v in
              (("min_shape", min_shape), ("opt_shape", opt_shape), ("max_shape", max_shape))}
    if save_onnx:
        save_onnx = _guard(save_onnx, outputs.ONNX_MODEL, [model], force, option="--save-onnx")
    if timing_cache:
        timing_cache = _guard_timing_cache(timing_cache, model, [output, str(sidecar_path(output)), save_onnx],
                                           force)
    targets = parse_compute_capabilities(compute_capability) if compute_capability else None
    plan = build_trt(model, output, precision="int8" if int8 else "fp16" if fp16 else None, calib_root=calib_root,
                     save_onnx=save_onnx, workspace_gib=workspace, timing_cache=timing_cache, library=library,
                     compute_capabilities=targets, dla_core=dla_core, gpu_fallback=gpu_fallback, **shapes)
    click.echo(plan)


def _guard_timing_cache(path: str, model: str, written: list, force: bool) -> str:
    """``--timing-cache`` is read and rewritten: never the model or another output of the command."""
    for other in filter(None, written):
        if Path(path).resolve() == Path(other).resolve():
            raise FcnsegError(f"expected --timing-cache to name its own file, got {path!r} which the command also "
                              f"writes as {other!r}; try --timing-cache {_sibling(model, '.timing.cache')}")
    return _guard(path, outputs.TIMING_CACHE, [model], force, option="--timing-cache")


def build_trt(model: str, output: Optional[str], *, precision: Optional[str], calib_root: Optional[str],
              save_onnx: Optional[str] = None, **build_options: Any) -> Any:
    """Run the FP16/INT8 ONNX step when the graph is FP32 and a lower precision is asked, then build the engine.

    The intermediate graph goes to a temporary folder (removed afterwards) unless ``save_onnx`` names a file.
    """
    import tempfile

    from ..runtime.backends.tensorrt import import_tensorrt
    from .tensorrt import build_engine, build_engine_from_spec, engine_spec

    # Read and validate the graph once: bad shapes or options are reported whether or not TensorRT is here.
    spec = engine_spec(model, precision=precision, **build_options)
    if precision == "int8" and spec.graph_precision == "fp32" and not calib_root:
        raise FcnsegError(f"expected --calib-data ROOT to quantize the FP32 graph {model!r} for --int8, got none; "
                          "try --calib-data with a VOC root, or pass an INT8 graph from `fcn-export int8`")
    import_tensorrt(spec.library)   # fail before a long calibration when TensorRT is missing
    out = output or str(Path(model).with_suffix(".plan"))
    if spec.graph_precision != "fp32" or precision in (None, "fp32"):
        return build_engine_from_spec(spec, output=out)
    with tempfile.TemporaryDirectory(prefix="fcn-export-trt-") as tmp:
        graph = save_onnx or str(Path(tmp) / f"{Path(model).stem}_{precision}.onnx")
        if precision == "fp16":
            from .fp16 import convert_fp16

            convert_fp16(model, graph)
        else:
            from .int8 import quantize_int8

            quantize_int8(model, graph, calib_root=calib_root)
        return build_engine(graph, output=out, precision=precision, source_onnx=save_onnx or model,
                            **build_options)


@main.command("bundle")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bundle folder (new or empty).")
@click.option("--int8-from", type=click.Path(dir_okay=False), help="Q/DQ INT8 ONNX to ship (from fcn-export int8).")
@click.option("--calib-data", "calib_root", type=click.Path(file_okay=False),
              help="VOC root: quantize MODEL to INT8 here instead of --int8-from.")
@click.option("--dla-core", type=int, help="Build on the device for this DLA core (profile fixed at opt).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the GPU.")
@click.option("--min-shape", metavar="NxCxHxW", help="[default: as fcn-export trt]")
@click.option("--opt-shape", metavar="NxCxHxW", help="[default: as fcn-export trt]")
@click.option("--max-shape", metavar="NxCxHxW", help="[default: as fcn-export trt]")
@click.option("--runtime-wheel", type=click.Path(dir_okay=False), help="Ship this fcnseg_runtime wheel "
              "[default: build one from runtime/pyproject.toml].")
@click.option("--force", is_flag=True, help="Write into a non-empty --out, replacing the bundle's own files.")
def bundle_cmd(model: str, out: str, int8_from: Optional[str], calib_root: Optional[str], dla_core: Optional[int],
               gpu_fallback: bool, min_shape: Optional[str], opt_shape: Optional[str], max_shape: Optional[str],
               runtime_wheel: Optional[str], force: bool) -> None:
    """A folder to copy to a Jetson: FP16/INT8 ONNX, the runtime wheel, build_engine.sh, run.py, README."""
    from ..core.shapes import parse_dims
    from .bundle import make_bundle

    shapes = {k: parse_dims(v) if v else None for k, v in
              (("min_shape", min_shape), ("opt_shape", opt_shape), ("max_shape", max_shape))}
    bundle = make_bundle(model, out, int8_from=int8_from, calib_root=calib_root, dla_core=dla_core,
                         gpu_fallback=gpu_fallback, runtime_wheel=runtime_wheel, force=force, **shapes)
    for path in bundle.files:
        click.echo(path)
