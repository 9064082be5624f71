"""``fcn-export``: checkpoint -> ONNX -> FP16 / INT8 ONNX -> TensorRT engine, and a TensorRT-readiness check.

Each subcommand parses its options and makes one call into ``fcnseg.export``. Errors in the input
(``FcnsegError``) print one line on stderr and exit with status 2; ``--debug`` shows the traceback.
``fcn-export check`` exits with status 1 when the graph breaks a TensorRT rule.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import click

from ..core import output_guard as outputs
from ..core.cli_args import HW, OneLineGroup, force_option, packed, profile_options, shape_option, tiling_options
from ..core.errors import FcnsegError, handle_cli_errors
from ..core.onnx_names import DEFAULT_OPSET, TRT8_MAX_OPSET
from ..core.data_source import LAYOUTS
from ..core.sidecar import HARDWARE_LEVELS, sidecar_path
from ..core.view import Tiling
from . import artifacts, chain, triton
from .options import EngineOptions, Int8Options
from .tensorrt import build_options, check_build, check_output_path, parse_compute_capabilities
from .torch_export import export_onnx
from .onnx_graph import parse_shapes
from .fp16 import convert_fp16
from .check import check_trt_ready
from .inspection import inspect_path


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


def _sibling(model: str, suffix: str) -> Path:
    src = Path(model)
    return src.with_name(src.stem + suffix)


def _guard(path: Any, kind: outputs.ArtifactKind, inputs: list, force: bool, option: str = "-o") -> str:
    """Check an output before any work (see ``fcnseg.core.output_guard.check_output``); inputs must be readable."""
    for item in inputs:
        outputs.check_readable(item)
    return str(outputs.check_output(path, kind, inputs=inputs, force=force, option=option))


def _int8_options(calib_root: Optional[str], calib_split: str, num_images: int, **more: Any) -> Int8Options:
    progress = not more.pop("no_progress", False)
    return Int8Options(calib_root=Path(calib_root) if calib_root else None, calib_split=calib_split,
                       num_images=num_images, progress=progress, **more)


CALIB_FIELDS = ("calib_root", "calib_layout", "calib_classes", "calib_split", "num_images")
INT8_FIELDS = CALIB_FIELDS + ("method", "eval_split", "eval_images", "max_drop", "target", "trt_version",
                              "high_precision", "no_progress")


def calib_options(*, required: bool = False, full: bool = False) -> Any:
    """``--calib-data``, ``--calib-split`` and ``--num-images`` (with ``full``, every INT8 option), passed to the
    command as one ``int8: Int8Options`` (``fcn-export int8``, and ``trt``/``bundle`` when they quantize)."""
    defaults = Int8Options()

    def decorate(fn: Any) -> Any:
        fn = packed("int8", _int8_options, INT8_FIELDS if full else CALIB_FIELDS)(fn)
        if full:
            fn = click.option("--no-progress", is_flag=True, help="No progress bars.")(fn)
            fn = click.option("--high-precision", type=click.Choice(["fp16", "fp32"]), default=None,
                              help="What the layers left out of INT8 run in [default: fp16 (an FP16-typed graph, "
                              "FP16 Q/DQ scales, opset 19), fp32 for --trt-version 8.x and --target cpu]. ONNX Runtime "
                              "runs an fp16 graph correctly only with its optimizer WeightBiasQuantization off.")(fn)
            fn = click.option("--trt-version", metavar="8.5|8.6|10|11|rtx", default=None,
                              help="The TensorRT that builds the graph [default: 10, 11 and RTX: strongly typed, opset "
                              "19]; 8.5/8.6 (JetPack 5 / 6.0): opset 17, FP32 elsewhere, mixed with FP16 by the "
                              "builder's --int8 --fp16 flags.")(fn)
            fn = click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default=defaults.target,
                              show_default=True, help="tensorrt: symmetric Q/DQ TensorRT builds and fuses, and "
                              "OpenVINO runs as fast on a CPU (the one artifact); cpu: ONNX Runtime's uint8 layout, "
                              "faster only on ONNX Runtime without OpenVINO.")(fn)
            fn = click.option("--max-drop", type=float, default=defaults.max_drop, show_default=True,
                              help="Accepted mIoU drop (points); beyond it, sensitive layers stay in float.")(fn)
            fn = click.option("--eval-images", type=click.IntRange(min=1), help="Evaluate on at most N of the "
                              "evaluation images [default: all].")(fn)
            fn = click.option("--eval-split", default=defaults.eval_split, show_default=True,
                              help="Split for the FP32/INT8 mIoU comparison; with the calibration split, its images "
                              "are divided (calibration: --num-images, at most half; evaluation: the rest), never "
                              "measured where calibrated.")(fn)
            fn = click.option("--method", type=click.Choice(["entropy", "minmax", "percentile"]),
                              default=defaults.method, show_default=True)(fn)
        fn = click.option("--num-images", type=click.IntRange(min=1), default=defaults.num_images, show_default=True,
                          help="Calibration images.")(fn)
        fn = click.option("--calib-split", default=defaults.calib_split, show_default=True,
                          help="Split to calibrate on.")(fn)
        fn = click.option("--classes", "calib_classes", default=None, type=click.Path(dir_okay=False),
                          help="Class file of the calibration dataset, also naming the model's classes [default: "
                          "the layout's own].")(fn)
        fn = click.option("--layout", "calib_layout", type=click.Choice(LAYOUTS), default=None,
                          help="Layout of --calib-data [default: detected].")(fn)
        return click.option("--calib-data", "calib_root", required=required, type=click.Path(file_okay=False),
                            help="Dataset folder to calibrate on (VOC, CVAT, Cityscapes, ADE20K, images/ + masks/)"
                            + ("." if required else "; needed to quantize an FP32 graph."))(fn)
    return decorate


def _engine_options(**kw: Any) -> EngineOptions:
    targets = kw.pop("compute_capability", None)
    timing = kw.pop("timing_cache", None)
    return EngineOptions(compute_capabilities=parse_compute_capabilities(targets) if targets else None,
                         timing_cache=Path(timing) if timing else None, **kw)


PROFILE_FIELDS = ("min_shape", "opt_shape", "max_shape", "dla_core", "gpu_fallback")
ENGINE_FIELDS = PROFILE_FIELDS + ("workspace_gib", "timing_cache", "library", "compute_capability")


def engine_options(*, full: bool = True, profile_help: str = "") -> Any:
    """The profile and DLA options (with ``full``, every build option), passed as one ``engine: EngineOptions``."""
    defaults = EngineOptions()

    def decorate(fn: Any) -> Any:
        fn = packed("engine", _engine_options, ENGINE_FIELDS if full else PROFILE_FIELDS)(fn)
        if full:
            fn = click.option("--compute-capability", "compute_capability", metavar="8.6,8.9,12.0",
                              help="GPU targets for TensorRT for RTX [default: its portable set 8.6,8.9,12.0].")(fn)
            fn = click.option("--library", type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]),
                              default=defaults.library, show_default=True, help="auto: tensorrt when importable, "
                              "else tensorrt_rtx (TensorRT for RTX, builds on a CPU).")(fn)
            fn = click.option("--timing-cache", type=click.Path(dir_okay=False),
                              help="Timing cache file (loaded and saved).")(fn)
            fn = click.option("--workspace", "workspace_gib", type=float, default=defaults.workspace_gib,
                              show_default=True, help="Workspace limit in GiB.")(fn)
        fn = click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the "
                          "GPU.")(fn)
        fn = click.option("--dla-core", type=click.IntRange(min=0), help="Build for this DLA core (Jetson AGX/NX; "
                          "FP16 or INT8; profile fixed at opt" + (": a dynamic --min/--max-shape is refused"
                                                                   if full else "") + ").")(fn)
        return profile_options(profile_help)(fn)
    return decorate


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
@shape_option("--static", "static_hw", dims=HW, help="Fix the input to 1x3xHxW (default: dynamic N, H, W).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset (13..20).")
@click.option("--trt8", is_flag=True, help="Stay within TensorRT 8.x (opset <= 17).")
@click.option("--min-size", type=int, default=64, show_default=True, help="Smallest input height/width declared.")
@click.option("--max-size", type=int, default=2048, show_default=True, help="Largest input height/width declared.")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with PyTorch.")
@click.option("--verify-shapes", metavar="NxHxW,...", help="Shapes to verify at [default: 1x97x131,1x375x500,"
              "1x520x520,2x97x131].")
@force_option()
def onnx_cmd(checkpoint: str, output: Optional[str], arch: Optional[str], num_classes: Optional[int],
             argmax: bool, static_hw: Optional[tuple], opset: int, trt8: bool, min_size: int, max_size: int,
             no_verify: bool, verify_shapes: Optional[str], force: bool) -> None:
    """Export CHECKPOINT to ONNX, verified against PyTorch on ONNX Runtime."""
    output = _guard(output or Path(checkpoint).with_suffix(".onnx"), artifacts.ONNX_MODEL, [checkpoint], force)
    result = export_onnx(checkpoint, output, arch=arch, num_classes=num_classes, argmax=argmax, static_hw=static_hw,
                         opset=min(opset, TRT8_MAX_OPSET) if trt8 else opset, verify=not no_verify,
                         verify_shapes=parse_shapes(verify_shapes) if verify_shapes else None,
                         min_size=min_size, max_size=max_size)
    click.echo(result.path)


@main.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL_fp16.onnx]")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with the FP32 graph.")
@click.option("--verify-shapes", metavar="NxHxW,...", help="Shapes to verify at.")
@force_option()
def fp16_cmd(model: str, output: Optional[str], no_verify: bool, verify_shapes: Optional[str], force: bool) -> None:
    """Convert an FP32 ONNX MODEL to FP16 (float32 inputs/outputs kept)."""
    output = _guard(output or _sibling(model, "_fp16.onnx"), artifacts.ONNX_MODEL, [model], force)
    result = convert_fp16(model, output, verify=not no_verify,
                          verify_shapes=parse_shapes(verify_shapes) if verify_shapes else None)
    click.echo(result.path)


@main.command("int8")
@click.argument("model", type=click.Path(dir_okay=False))
@calib_options(required=True, full=True)
@click.option("--cache", type=click.Path(dir_okay=False), help="Calibration cache JSON (reused when it matches).")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Write a JSON report: calibration_ids, evaluation_ids, fp32/int8 mIoU, the layers reverted to float "
              "with their measured cost, and those float by design.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL_int8.onnx]")
@force_option()
def int8_cmd(model: str, int8: Int8Options, cache: Optional[str], report: Optional[str], output: Optional[str],
             force: bool) -> None:
    """Quantize an FP32 ONNX MODEL to INT8 Q/DQ and report the mIoU drop against FP32."""
    output = _guard(output or _sibling(model, "_int8.onnx"), artifacts.ONNX_MODEL, [model], force)
    if cache:
        cache = _guard(cache, artifacts.CALIBRATION_CACHE, [model, output], force, option="--cache")
    if report:
        report = _guard(report, artifacts.INT8_REPORT, [model], force, option="--report")
    options = replace(int8, cache=Path(cache) if cache else None, report=Path(report) if report else None)
    result = chain.lower(model, "int8", output, int8=options)
    costs = ", ".join(f"{r.node} {r.cost:.2f}" for r in result.reverted)
    reverted = f" (cost in mIoU points: {costs})" if costs else ""
    by_design = f", float by design: {', '.join(result.float_by_design)}" if result.float_by_design else ""
    click.echo(f"{result.path}\tmIoU fp32 {result.miou_fp32 * 100:.2f} int8 {result.miou_int8 * 100:.2f} "
               f"({-result.drop:+.2f} points), {len(result.reverted)} layers reverted to float for accuracy{reverted}"
               f"{by_design}, {result.high_precision} elsewhere")


@main.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
def check_cmd(model: str) -> None:
    """Check that MODEL is TensorRT-ready (ops, opset, I/O types, Q/DQ placement); exit 1 if not."""
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
@click.option("--with-preprocessing", is_flag=True, help="Add an ensemble taking encoded images, returning masks "
              "(NAME_image), and for a graph with dynamic H/W NAME_image_slide (large images in --tile tiles).")
@tiling_options
@force_option("Replace model folders that exist.")
def triton_cmd(model: str, repo_dir: str, name: str, max_batch: Optional[int], instances: int,
               preferred_batch: Optional[str], max_queue_delay_us: int, kind: str, backend: str,
               with_preprocessing: bool, tiling: Tiling, force: bool) -> None:
    """Write a Triton model repository serving MODEL (.onnx or .plan with its sidecar)."""
    batching = triton.Batching(max_batch=max_batch, instances=instances, max_queue_delay_us=max_queue_delay_us,
                               kind=kind, preferred=triton.parse_batch_sizes(preferred_batch))
    repo = triton.export_triton(model, repo_dir, name=name, batching=batching, onnx_backend=backend,
                                with_preprocessing=with_preprocessing, tiling=tiling, force=force)
    click.echo(repo.root / repo.entry)


@main.command("trt")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--fp16", is_flag=True, help="FP16 engine (runs the fp16 step first on an FP32 graph).")
@click.option("--int8", "int8_flag", is_flag=True, help="INT8 engine (runs the int8 step first on an FP32 graph).")
@calib_options()
@engine_options(profile_help="[defaults: 1x3x256x256, 1x3x520x520, 1x3x1024x1024, fitted to the graph]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="[default: MODEL.plan]")
@force_option()
@click.option("--save-onnx", type=click.Path(dir_okay=False),
              help="Keep the FP16/INT8 ONNX that --fp16/--int8 make from an FP32 graph here [default: a temp folder].")
@click.option("--hardware-compatibility", type=click.Choice(["none", *HARDWARE_LEVELS]), default="none",
              show_default=True, help="Run on other GPUs than the build GPU: ampere+ (Ampere and later, TensorRT "
              "8.6+), same-cc (the same compute capability, late 10.x+). Slower engines; not on JetPack.")
@click.option("--version-compatible", is_flag=True, help="Later TensorRT releases run the engine too (TensorRT 8.6+; "
              "slower engines).")
@click.option("--trt-version", metavar="X.Y", help="A TensorRT that must also parse MODEL (8.5: JetPack 5): what "
              "its parser refuses is refused before building. The TensorRT found is always checked.")
@click.option("--trt8", is_flag=True, help="The same as --trt-version 8.5 (the oldest 8.x targeted).")
def trt_cmd(model: str, fp16: bool, int8_flag: bool, int8: Int8Options, engine: EngineOptions,
            output: Optional[str], force: bool, save_onnx: Optional[str], hardware_compatibility: str,
            version_compatible: bool, trt_version: Optional[str], trt8: bool) -> None:
    """Build a TensorRT engine from MODEL (an FP32, FP16 or INT8 Q/DQ ONNX); its sidecar MODEL.plan.json
    records what a rebuild needs."""
    output = str(check_output_path(output or Path(model).with_suffix(".plan")))   # before any FP16/INT8 step
    output = _guard(output, artifacts.ENGINE, [model], force)
    _guard(sidecar_path(output), artifacts.ENGINE_SIDECAR, [model], force)   # the sidecar written next to it
    if fp16 and int8_flag:   # INT8 with FP16 elsewhere: an FP16-typed Q/DQ graph (8.x: its INT8 + FP16 flags)
        int8 = replace(int8, high_precision="fp16")
    if save_onnx:
        save_onnx = _guard(save_onnx, artifacts.ONNX_MODEL, [model], force, option="--save-onnx")
    if engine.timing_cache:
        written = [output, str(sidecar_path(output)), save_onnx]
        engine = replace(engine, timing_cache=Path(_guard_timing_cache(str(engine.timing_cache), model, written,
                                                                       force)))
    if trt8 and trt_version and not trt_version.startswith("8.5"):
        raise click.UsageError(f"expected --trt8 (TensorRT 8.5) or --trt-version, got both (--trt-version "
                               f"{trt_version})")
    build = build_options(engine, precision="int8" if int8_flag else "fp16" if fp16 else None,
                          hardware_compatibility=None if hardware_compatibility == "none" else hardware_compatibility,
                          version_compatible=version_compatible, trt_version="8.5" if trt8 else trt_version)
    check_build(model, build)   # what the build would refuse, refused before an FP16/INT8 step
    click.echo(chain.engine(model, output, build, int8=int8, save_onnx=save_onnx))


def _guard_timing_cache(path: str, model: str, written: list, force: bool) -> str:
    """``--timing-cache`` is read and rewritten: never the model or another output of the command."""
    for other in filter(None, written):
        if Path(path).resolve() == Path(other).resolve():
            raise FcnsegError(f"expected --timing-cache to name its own file, got {path!r} which the command also "
                              f"writes as {other!r}; try --timing-cache {_sibling(model, '.timing.cache')}")
    return _guard(path, artifacts.TIMING_CACHE, [model], force, option="--timing-cache")


@main.command("bundle")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Bundle folder (new or empty).")
@click.option("--int8-from", type=click.Path(dir_okay=False), help="Q/DQ INT8 ONNX to ship (from fcn-export int8).")
@calib_options()
@engine_options(full=False, profile_help="[default: as fcn-export trt]")
@click.option("--runtime-wheel", type=click.Path(dir_okay=False), help="Ship this fcnseg_runtime wheel "
              "[default: build one from runtime/pyproject.toml].")
@force_option("Write into a non-empty --out, replacing the bundle's own files.")
def bundle_cmd(model: str, out: str, int8_from: Optional[str], int8: Int8Options, engine: EngineOptions,
               runtime_wheel: Optional[str], force: bool) -> None:
    """A folder to copy to a Jetson: FP16/INT8 ONNX, the runtime wheel, build_engine.sh, run.py, README."""
    from .bundle import make_bundle

    bundle = make_bundle(model, out, engine=engine, int8=int8 if int8.calib_root else None, int8_from=int8_from,
                         runtime_wheel=runtime_wheel, force=force)
    for path in bundle.files:
        click.echo(path)
