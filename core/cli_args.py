"""The one CLI option layer (as Polygraphy's ``tools/args``): each shared option declared, typed and checked once.

Every ``fcn-*`` command takes its shared options from here: ``backend_options`` (``--backend``, ``--providers``,
``--precision-hint``, ``--threads``, packed into one ``BackendChoice``), ``size_option``, ``shape_option``,
``profile_options``, ``threads_option`` and ``force_option``. A bad value is refused by click before any work,
in one line: ``OneLineCommand``/``OneLineGroup`` print usage errors as ``error: ...; try CMD -h`` with exit
status 2, as every other refused input. Imported by the CLIs only (the libraries do not need click).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

import click

from .backend_names import BACKEND_NAMES, PRECISION_HINTS, BackendChoice, parse_providers
from .data_source import LAYOUTS, DataSource
from .errors import FcnsegError
from .shapes import parse_dims
from .view import MODES, Tiling

FORCE_HELP = "Replace an existing output even when it is not an fcnseg artifact of the same kind (never an input)."


# click >= 8.2 raises this (a UsageError) for a bare group or a command with no_args_is_help: show the help.
_HELP_ERRORS = tuple(getattr(click.exceptions, n) for n in ("NoArgsIsHelpError",) if hasattr(click.exceptions, n))


def _one_line_usage(error: click.UsageError, name: str) -> None:
    if isinstance(error, _HELP_ERRORS):
        raise error
    ctx = error.ctx
    command = ctx.command_path if ctx is not None else name
    message = " ".join(error.format_message().split()).rstrip(".")
    click.echo(f"error: {message}; try {command} -h", err=True)
    sys.exit(error.exit_code)


class OneLineCommand(click.Command):
    """A ``click.Command`` that reports bad options and arguments in one line (exit status 2)."""

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _one_line_usage(e, info_name or self.name or "")
            raise  # unreachable: _one_line_usage exits


class OneLineGroup(click.Group):
    """A ``click.Group`` whose own and whose subcommands' usage errors are one line."""

    command_class = OneLineCommand

    def make_context(self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            _one_line_usage(e, info_name or self.name or "")
            raise

    def resolve_command(self, ctx: click.Context, args: List[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            _one_line_usage(e, ctx.command_path)
            raise


class Dims(click.ParamType):
    """``HxW`` or ``NxCxHxW`` text, parsed once by ``parse_dims`` into a tuple of positive integers."""

    name = "dims"

    def __init__(self, ndim: int, example: str) -> None:
        self.ndim, self.example = ndim, example

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:   # click 8.2 adds ctx
        return self.example

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_dims(value, ndim=self.ndim, example=self.example)
        except FcnsegError as e:
            self.fail(str(e), param, ctx)
            raise  # unreachable: fail raises


HW = Dims(2, "HxW")
NCHW = Dims(4, "NxCxHxW")


def force_option(help: str = FORCE_HELP) -> Callable:
    """``--force``: replace an output that is not fcnseg's (never an input)."""
    return click.option("--force", is_flag=True, help=help)


def threads_option(help: str = "CPU threads for inference (OpenVINO, ONNX Runtime intra-op, PyTorch) "
                               "[default: the library's]") -> Callable:
    """``--threads N`` with N >= 1 (OpenVINO's own error for -3 blames the graph; ONNX Runtime accepts it)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


def size_option(help: str = "Shorter side fed to the network, within the model's declared range "
                            "[default: the model's metadata].", *, no_resize: bool = False) -> Callable:
    """``--size N``: the shorter side images are resized to (checked against the model's range at load);
    with ``no_resize``, 0 feeds images at their own size (each still checked against the range)."""
    return click.option("--size", type=click.IntRange(min=0 if no_resize else 1), default=None, help=help)


def shape_option(*decls: str, dims: Dims = HW, **kwargs: Any) -> Callable:
    """An option holding a shape (``HxW`` by default), parsed into a tuple of ints."""
    return click.option(*decls, type=dims, **kwargs)


def profile_options(default_help: str = "") -> Callable:
    """``--min-shape``/``--opt-shape``/``--max-shape`` (NxCxHxW): a TensorRT optimization profile."""
    def decorate(fn: Callable) -> Callable:
        for decl in ("--max-shape", "--opt-shape", "--min-shape"):
            fn = shape_option(decl, dims=NCHW, default=None, help=default_help or None)(fn)
        return fn
    return decorate


def mode_options(fn: Callable) -> Callable:
    """``--mode resize|slide|whole``, ``--tile`` and ``--stride``, passed as one ``mode`` dict of ``Segmenter``
    keyword arguments (checked against the model when it loads)."""
    fn = packed("mode", lambda mode, tile, stride: {"mode": mode, "tile": tile, "stride": stride},
                ("mode", "tile", "stride"))(fn)
    fn = _window_options(fn, "--mode slide: ")
    return click.option("--mode", type=click.Choice(MODES), default=MODES[0],
                        show_default=True, help="resize: the image at the model's size; whole: at its own size "
                        "(within the model's declared range); slide: at its own size in overlapping tiles, for "
                        "large images (docs/large-images.md).")(fn)


def tiling_options(fn: Callable) -> Callable:
    """``--tile`` and ``--stride`` of a sliding window, passed as one ``tiling: Optional[Tiling]`` argument
    (None when neither is given: the library fits its default window to the model)."""
    def build(tile: Optional[int], stride: Optional[int]) -> Optional[Tiling]:
        if tile is None and stride is None:
            return None
        tile = tile or Tiling.tile
        return Tiling(tile, stride or max(1, tile * 2 // 3))
    fn = packed("tiling", build, ("tile", "stride"))(fn)
    return _window_options(fn, "", default=False)


def _window_options(fn: Callable, prefix: str, default: bool = True) -> Callable:
    fit = "" if default else f" [default: {Tiling.tile} (at most the model's largest side), stride 2/3 of it]"
    fn = click.option("--stride", type=click.IntRange(min=1), default=Tiling.stride if default else None,
                      show_default=default, help=prefix + "pixels between tiles (a third overlap by default).")(fn)
    return click.option("--tile", type=click.IntRange(min=1), default=Tiling.tile if default else None,
                        show_default=default, help=prefix + "tile side in pixels." + fit)(fn)


def classes_option(help: str = "Class file (JSON, YAML, labelmap.txt or one name per line) whose names and "
                   "colours replace the model's (a model without fcnseg metadata has generic names).") -> Callable:
    """``--classes FILE``."""
    return click.option("--classes", default=None, type=click.Path(dir_okay=False), help=help)


def dataset_options(decl: str = "--data-path", dest: str = "data", *, required: bool = True,
                    help: str = "The dataset folder (VOC, CVAT, Cityscapes, ADE20K, images/ + masks/: "
                    "docs/datasets.md).") -> Callable:
    """``--data-path`` (or ``decl``), ``--layout`` and ``--classes``, passed as one ``DataSource`` argument
    ``dest`` (None when the folder is not given); ``--classes`` names the dataset's classes and the model's."""
    def decorate(fn: Callable) -> Callable:
        fn = packed(dest, lambda path, layout, classes: DataSource(path, layout, classes) if path else None,
                    ("path", "layout", "classes"))(fn)
        fn = classes_option("Class file of the dataset and the model (JSON, YAML, labelmap.txt or one name per "
                            "line) [default: the layout's own, e.g. VOC's 21, CVAT's labelmap.txt].")(fn)
        fn = click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                          help="The dataset's layout [default: detected].")(fn)
        return click.option(decl, "path", required=required, type=click.Path(), help=help)(fn)
    return decorate


def packed(into: str, build: Callable[..., Any], names: Sequence[str]) -> Callable:
    """Wrap a command so that its options ``names`` reach it as one argument ``into=build(**those options)``
    (an option group becomes one typed object, as Polygraphy's argument groups make their loaders)."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[into] = build(**{name: kwargs.pop(name) for name in names})
            return fn(*args, **kwargs)
        return wrapper
    return decorate


HINT_DEFAULT = "OpenVINO's own: bf16 where the CPU has it, else f32"


def precision_hint_option(default: str = HINT_DEFAULT) -> Callable:
    """``--precision-hint``: OpenVINO's precision for the layers not in INT8 (``PRECISION_HINTS``)."""
    return click.option("--precision-hint", type=click.Choice(PRECISION_HINTS), default=None,
                        help=f"OpenVINO precision for non-INT8 layers; bf16 is faster on CPUs with BF16, f32 exact "
                             f"[default: {default}].")


def backend_options(*, multiple: bool = False, hint_default: str = HINT_DEFAULT) -> Callable:
    """``--backend`` (repeatable where ``multiple``), ``--providers``, ``--precision-hint`` and ``--threads``,
    passed to the command as one ``backend: BackendChoice`` argument."""
    def choice(backend_names: Any, providers: Sequence[str], precision_hint: Optional[str],
               threads: Optional[int], rebuild: str, onnx: Optional[str]) -> BackendChoice:
        names = tuple(backend_names) if multiple else (backend_names,)
        return BackendChoice(names or (None,), parse_providers(providers), precision_hint, threads, rebuild, onnx)

    def decorate(fn: Callable) -> Callable:
        wrapper = packed("backend", choice, ("backend_names", "providers", "precision_hint", "threads", "rebuild",
                                             "onnx"))(fn)
        wrapper = click.option("--onnx", default=None, type=click.Path(dir_okay=False),
                               help="--rebuild auto: the ONNX to rebuild the engine from [default: the one its "
                                    "sidecar names, beside it].")(wrapper)
        wrapper = click.option("--rebuild", type=click.Choice(("never", "auto")), default="never", show_default=True,
                               help="A TensorRT engine built for another GPU or TensorRT version: auto rebuilds it "
                                    "once from its ONNX and caches it beside the engine.")(wrapper)
        wrapper = threads_option()(wrapper)
        wrapper = precision_hint_option(hint_default)(wrapper)
        wrapper = click.option("--providers", multiple=True,
                               help="ONNX Runtime providers in priority order, e.g. cuda,cpu (repeatable or "
                                    "comma-separated).")(wrapper)
        return click.option("--backend", "backend_names", multiple=multiple, type=click.Choice(BACKEND_NAMES),
                            default=None,
                            help="Inference backend" + ("; repeat for one row per backend" if multiple else "")
                                 + " [default: by suffix; .onnx: OpenVINO when installed, else ONNX Runtime].")(wrapper)
    return decorate
