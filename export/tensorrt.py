"""ONNX -> TensorRT engine (``.plan``) plus a sidecar ``<plan>.json``, for TensorRT 8.5, 8.6, 10.x and 11.x.

Precision is decided in the ONNX graph: an FP16-typed graph (``fcn-export fp16``) or a Q/DQ graph
(``fcn-export int8``). TensorRT 11 only builds strongly typed networks, so that is the one path that
works everywhere; on 8.x and weakly typed 10.x an FP32 graph can still be built with the FP16 flag.
No implicit INT8 calibrator is used (deprecated in 10.1, gone in 11).

What each TensorRT version offers is detected on the module (``detect_features``), never guessed
from the version string. The build is a chain of small steps in the manner of Polygraphy's loaders
(``engine_spec`` -> ``create_network`` -> ``parse_onnx`` -> ``config_from_features`` -> ``build_plan``
-> ``save_engine``); each takes TensorRT objects, so tests drive them with a fake ``tensorrt``
module. The engine has no user-metadata API, hence the sidecar: TensorRT version, GPU, precision,
profile, I/O tensors and the ONNX's ``ModelMetadata``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import onnx

from ..runtime.atomic import atomic_path, write_bytes
from ..runtime.backends.tensorrt import format_shape, import_tensorrt, sidecar_path
from ..runtime.errors import FcnsegError
from ..runtime.shapes import parse_dims
from ..runtime.metadata import PREFIX, ModelMetadata
from .onnx_export import load_onnx

if TYPE_CHECKING:
    import tensorrt as trt

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, ...]
Dim = Union[int, str, None]

log = logging.getLogger("fcnseg.export")

DEFAULT_MIN_SHAPE: Shape = (1, 3, 256, 256)
DEFAULT_OPT_SHAPE: Shape = (1, 3, 520, 520)
DEFAULT_MAX_SHAPE: Shape = (1, 3, 1024, 1024)
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".plan", ".engine")
SIZE_KEYS = (PREFIX + "min_size", PREFIX + "max_size")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SIDECAR_FORMAT = 1


# ---------------------------------------------------------------- shapes and the optimization profile

def parse_shape(text: str) -> Shape:
    """Parse "1x3x256x256" into (1, 3, 256, 256); FcnsegError with an example otherwise."""
    return parse_dims(text)


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile for the image input (NCHW shapes)."""

    min: Shape
    opt: Shape
    max: Shape

    def to_dict(self) -> Dict[str, List[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def __str__(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


SizeRange = Tuple[Optional[int], Optional[int]]


def derive_profile(input_dims: Sequence[Dim], *, min_shape: Optional[Sequence[int]] = None,
                   opt_shape: Optional[Sequence[int]] = None, max_shape: Optional[Sequence[int]] = None,
                   size_range: SizeRange = (None, None)) -> Profile:
    """Validate (or default) min/opt/max for an ONNX input whose dims may be symbolic.

    Defaults are 1x3x256x256 / 1x3x520x520 / 1x3x1024x1024, with the ONNX's fixed dims substituted,
    height/width clamped into ``size_range`` and moved to order with the shapes given (only
    ``max_shape=1x3x480x480`` gives opt 480x480). Shapes given explicitly are never adjusted, only checked.

    Args:
        input_dims: the ONNX input's dims: ints where fixed, names or None where symbolic.
        min_shape / opt_shape / max_shape: NCHW shapes, or None for the defaults.
        size_range: (min_size, max_size) for height and width declared by the export (metadata).

    Raises:
        FcnsegError: wrong rank, a fixed dim contradicted, min > opt > max somewhere, channel counts that
            differ, or heights/widths outside ``size_range``.
    """
    given = {"min": min_shape, "opt": opt_shape, "max": max_shape}
    defaults = _default_shapes(input_dims, size_range)
    shapes = {k: tuple(int(d) for d in v) if v is not None else defaults[k] for k, v in given.items()}
    for which, shape in shapes.items():
        _check_against_onnx(which, shape, input_dims)
    shapes = _fit_defaults(shapes, given_keys={k for k, v in given.items() if v is not None})
    for which, shape in shapes.items():
        _check_against_onnx(which, shape, input_dims)
    _check_order(shapes)
    _check_size_range(shapes, size_range)
    return Profile(shapes["min"], shapes["opt"], shapes["max"])


def _default_shapes(input_dims: Sequence[Dim], size_range: SizeRange) -> Dict[str, Shape]:
    lo = max(size_range[0] or 1, 1)
    hi = size_range[1] or 1 << 30
    result = {}
    for which, base in (("min", DEFAULT_MIN_SHAPE), ("opt", DEFAULT_OPT_SHAPE), ("max", DEFAULT_MAX_SHAPE)):
        if len(input_dims) != len(base):
            result[which] = tuple(d if isinstance(d, int) and d > 0 else 1 for d in input_dims)
            continue
        dims = [min(max(d, lo), hi) if i >= 2 else d for i, d in enumerate(base)]
        result[which] = tuple(d if isinstance(d, int) and d > 0 else b for d, b in zip(input_dims, dims))
    return result


def _fit_defaults(shapes: Dict[str, Shape], given_keys: set) -> Dict[str, Shape]:
    """Move defaulted shapes so they order with the given ones (e.g. only --max-shape 1x3x480x480)."""
    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    fixed = [shapes[k] for k in given_keys]
    if "min" not in given_keys:
        lo = tuple(min([d, *(s[i] for s in fixed)]) for i, d in enumerate(lo))
    if "max" not in given_keys:
        hi = tuple(max([d, *(s[i] for s in fixed)]) for i, d in enumerate(hi))
    if "opt" not in given_keys:
        opt = tuple(min(max(d, a), b) for d, a, b in zip(opt, lo, hi))
    return {"min": lo, "opt": opt, "max": hi}


def _check_against_onnx(which: str, shape: Shape, input_dims: Sequence[Dim]) -> None:
    rank = len(input_dims)
    if len(shape) != rank:
        raise FcnsegError(f"expected a {rank}-D --{which}-shape for the ONNX input (NCHW, like 1x3x520x520), got "
                          f"{format_shape(shape)}; try e.g. --{which}-shape 1x3x520x520")
    if any(d <= 0 for d in shape):
        raise FcnsegError(f"expected positive dims in --{which}-shape, got {format_shape(shape)}")
    for i, (d, fixed) in enumerate(zip(shape, input_dims)):
        if isinstance(fixed, int) and fixed > 0 and d != fixed:
            want = "x".join(str(f) if isinstance(f, int) and f > 0 else "?" for f in input_dims)
            raise FcnsegError(f"expected dim {i} of --{which}-shape to be {fixed} (fixed in the ONNX input "
                              f"{want}), got {format_shape(shape)}; try a shape matching {want}")


def _check_order(shapes: Mapping[str, Shape]) -> None:
    lo, opt, hi = shapes["min"], shapes["opt"], shapes["max"]
    for i, (a, b, c) in enumerate(zip(lo, opt, hi)):
        if not a <= b <= c:
            raise FcnsegError(f"expected min <= opt <= max in every dim, got min {format_shape(lo)}, opt "
                              f"{format_shape(opt)}, max {format_shape(hi)} (dim {i}: {a}, {b}, {c}); "
                              "try reordering --min-shape/--opt-shape/--max-shape")
    if len(lo) > 1 and not lo[1] == opt[1] == hi[1]:
        raise FcnsegError(f"expected the same channel count in min/opt/max, got {lo[1]}, {opt[1]}, {hi[1]}; "
                          "try 3 channels (RGB) in all three shapes")


def _check_size_range(shapes: Mapping[str, Shape], size_range: SizeRange) -> None:
    lo, hi = size_range
    for which, shape in shapes.items():
        for d in shape[2:]:
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                raise FcnsegError(f"expected heights and widths within [{lo}, {hi}] (the range the ONNX was "
                                  f"exported for: {SIZE_KEYS[0]}/{SIZE_KEYS[1]}), got --{which}-shape "
                                  f"{format_shape(shape)}; try a shape inside that range or re-export with "
                                  "fcn-export onnx --min-size/--max-size")


def declared_size_range(model: onnx.ModelProto) -> SizeRange:
    """(min_size, max_size) from the ONNX metadata props, None where absent."""
    props = {p.key: p.value for p in model.metadata_props}
    values: List[Optional[int]] = []
    for key in SIZE_KEYS:
        raw = props.get(key)
        try:
            values.append(None if raw is None else int(json.loads(raw)))
        except (TypeError, ValueError):
            raise FcnsegError(f"expected an integer in the ONNX metadata {key!r}, got {raw!r}; "
                              "try re-exporting with fcn-export onnx") from None
    return values[0], values[1]


# ---------------------------------------------------------------- what the ONNX graph is

def onnx_input(model: onnx.ModelProto) -> Tuple[str, List[Dim]]:
    """The image input's name and dims (int where fixed, the symbol's name or None where dynamic)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise FcnsegError(f"expected an ONNX graph with one image input, got {[i.name for i in inputs]}; "
                          "try a graph from fcn-export onnx")
    dims: List[Dim] = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return inputs[0].name, dims


def precision_of_onnx(model: Union[onnx.ModelProto, PathLike]) -> str:
    """"int8" for a Q/DQ graph, "fp16" for an FP16-typed one (FP16 weights or casts), else "fp32"."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    fp16 = onnx.TensorProto.FLOAT16
    nodes = list(model.graph.node)
    if any(n.op_type in QDQ_OPS for n in nodes):
        return "int8"
    typed = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    if (any(t.data_type == fp16 for t in model.graph.initializer)
            or any(n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in nodes)
            or any(n.op_type == "Constant" and any(a.t.data_type == fp16 for a in n.attribute) for n in nodes)
            or any(v.type.tensor_type.elem_type == fp16 for v in typed)):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine build needs, resolved and validated from the ONNX before TensorRT is touched.

    Attributes:
        onnx_path: the graph to parse.
        input_name: the image input's name.
        profile: min/opt/max shapes.
        graph_precision: what the graph itself is ("fp32", "fp16" or "int8").
        precision: what was asked for (None = the graph's).
        metadata: the ONNX's ``ModelMetadata``.
        nodes: (name, op_type) of every top-level node, to name nodes in 8.x parser errors.
        workspace_gib: TensorRT workspace memory pool limit.
        timing_cache: file to load/save the timing cache (None: no cache).
        strongly_typed: None = when the graph is FP16/Q-DQ typed and TensorRT supports it.
    """

    onnx_path: Path
    input_name: str
    profile: Profile
    graph_precision: str
    precision: Optional[str]
    metadata: ModelMetadata
    nodes: Tuple[Tuple[str, str], ...] = ()
    workspace_gib: float = 4.0
    timing_cache: Optional[Path] = None
    strongly_typed: Optional[bool] = None


def engine_spec(onnx_path: PathLike, *, precision: Optional[str] = None, min_shape: Optional[Sequence[int]] = None,
                opt_shape: Optional[Sequence[int]] = None, max_shape: Optional[Sequence[int]] = None,
                workspace_gib: float = 4.0, timing_cache: Optional[PathLike] = None,
                strongly_typed: Optional[bool] = None) -> EngineSpec:
    """Read the ONNX and validate the build options (no TensorRT needed). See ``build_engine``."""
    if precision is not None and precision not in PRECISIONS:
        raise FcnsegError(f"expected a precision in {PRECISIONS}, got {precision!r}; try --fp16 or --int8")
    if not workspace_gib > 0:
        raise FcnsegError(f"expected a positive workspace in GiB, got {workspace_gib}; try --workspace 4")
    model = load_onnx(onnx_path)
    name, dims = onnx_input(model)
    profile = derive_profile(dims, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
                             size_range=declared_size_range(model))
    props = {p.key: p.value for p in model.metadata_props}
    return EngineSpec(onnx_path=Path(onnx_path), input_name=name, profile=profile,
                      graph_precision=precision_of_onnx(model), precision=precision,
                      metadata=ModelMetadata.from_props(props),
                      nodes=tuple((n.name, n.op_type) for n in model.graph.node), workspace_gib=workspace_gib,
                      timing_cache=Path(timing_cache) if timing_cache is not None else None,
                      strongly_typed=strongly_typed)


# ---------------------------------------------------------------- what this TensorRT offers

@dataclass(frozen=True)
class Features:
    """What the installed TensorRT module offers, found with hasattr.

    Attributes:
        version: ``tensorrt.__version__``.
        explicit_batch: the EXPLICIT_BATCH creation flag must be passed (it exists and the builder still
            knows implicit batch, i.e. has ``max_batch_size``: 8.x).
        strongly_typed: the STRONGLY_TYPED creation flag exists (9.0+).
        fp16_flag / int8_flag: ``BuilderFlag.FP16`` / ``INT8`` exist (gone in 11.x).
        memory_pool_limit: ``IBuilderConfig.set_memory_pool_limit`` (8.4+); else ``max_workspace_size``.
        device_memory_size_v2: ``ICudaEngine.device_memory_size_v2`` (10.x+).
        parser_node_names: ``ParserError.node_name()``/``node_operator()`` (10.x+; 8.x has ``node()`` only).
    """

    version: str
    explicit_batch: bool
    strongly_typed: bool
    fp16_flag: bool
    int8_flag: bool
    memory_pool_limit: bool
    device_memory_size_v2: bool
    parser_node_names: bool


def detect_features(trt_module: Any) -> Features:
    """Feature detection over a ``tensorrt`` module object (real or fake); no version parsing."""
    flags = getattr(trt_module, "NetworkDefinitionCreationFlag", None)
    builder_flags = getattr(trt_module, "BuilderFlag", None)
    return Features(
        version=str(getattr(trt_module, "__version__", "unknown")),
        explicit_batch=hasattr(flags, "EXPLICIT_BATCH") and hasattr(getattr(trt_module, "Builder", None),
                                                                    "max_batch_size"),
        strongly_typed=hasattr(flags, "STRONGLY_TYPED"),
        fp16_flag=hasattr(builder_flags, "FP16"),
        int8_flag=hasattr(builder_flags, "INT8"),
        memory_pool_limit=hasattr(getattr(trt_module, "IBuilderConfig", None), "set_memory_pool_limit"),
        device_memory_size_v2=hasattr(getattr(trt_module, "ICudaEngine", None), "device_memory_size_v2"),
        parser_node_names=hasattr(getattr(trt_module, "ParserError", None), "node_name"),
    )


@dataclass(frozen=True)
class BuildMode:
    """How the network is built: the engine's precision, strong typing, and the builder flags to set."""

    precision: str
    strongly_typed: bool
    flags: Tuple[str, ...] = ()


def choose_build_mode(graph_precision: str, precision: Optional[str], features: Features, *,
                      strongly_typed: Optional[bool] = None) -> BuildMode:
    """Decide strong typing and builder flags for a graph of ``graph_precision`` on this TensorRT.

    Raises:
        FcnsegError: the request needs something the graph or this TensorRT cannot give (INT8 without
            Q/DQ, an FP16 engine from an FP32 graph where no FP16 flag exists, ...).
    """
    wanted = precision or graph_precision
    _check_precision_pair(graph_precision, wanted)
    if strongly_typed is None:
        strongly_typed = features.strongly_typed and graph_precision in ("fp16", "int8")
    if strongly_typed and not features.strongly_typed:
        raise FcnsegError(f"expected a TensorRT with strongly typed networks (9.0+) for strongly_typed=True, got "
                          f"TensorRT {features.version}; try leaving strongly_typed unset")
    if strongly_typed:
        if wanted != graph_precision:
            raise FcnsegError(f"expected an FP16-typed ONNX for a strongly typed {wanted} engine, got an "
                              f"{graph_precision} graph; try `fcn-export fp16` first (or fcn-export trt --fp16)")
        return BuildMode(wanted, True)
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}[wanted]
    missing = [f for f in flags if not getattr(features, f.lower() + "_flag")]
    if missing:
        raise FcnsegError(f"expected BuilderFlag.{missing[0]} for a weakly typed {wanted} build, got TensorRT "
                          f"{features.version} without it (11.x builds strongly typed networks only); try an "
                          "FP16-typed ONNX (`fcn-export fp16`) or a Q/DQ ONNX (`fcn-export int8`)")
    return BuildMode(wanted, False, flags)


def _check_precision_pair(graph: str, wanted: str) -> None:
    if wanted == "int8" and graph != "int8":
        raise FcnsegError(f"expected a Q/DQ (INT8) ONNX for an int8 engine, got an {graph} graph; try "
                          "`fcn-export int8 MODEL.onnx --calib-data ROOT` first (implicit INT8 calibration is "
                          "gone in TensorRT 11)")
    if graph in ("fp16", "int8") and wanted != graph:
        raise FcnsegError(f"expected the FP32 ONNX for a {wanted} engine, got an {graph}-typed graph; try the "
                          f"FP32 graph, or precision {graph!r} for this one")


# ---------------------------------------------------------------- build steps

def create_network(builder: trt.Builder, features: Features, *, strongly_typed: bool) -> trt.INetworkDefinition:
    """An empty network with EXPLICIT_BATCH where needed (8.x) and STRONGLY_TYPED when asked."""
    import tensorrt as trt

    flags = 0
    if features.explicit_batch:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"))
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if network is None:
        raise FcnsegError("expected TensorRT to create a network, got None; see the TensorRT log above")
    return network


def parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path, *,
               nodes: Sequence[Tuple[str, str]] = ()) -> trt.OnnxParser:
    """Parse the ONNX file into ``network`` (keep the returned parser alive until the build: it owns weights).

    Raises:
        FcnsegError: listing every parser error with its node name and operator.
    """
    import tensorrt as trt

    parser = trt.OnnxParser(network, logger)
    # parse_from_file, not parse(bytes): it resolves external weight files next to the ONNX.
    ok = parser.parse_from_file(str(onnx_path))
    errors = [format_parser_error(parser.get_error(i), nodes) for i in range(parser.num_errors)]
    if not ok or errors:
        raise FcnsegError(f"TensorRT's ONNX parser rejected {onnx_path.name}: expected every node to parse, got "
                          f"{len(errors) or 'an'} error(s): {' | '.join(errors) or 'no details'}; try "
                          f"`fcn-export check {onnx_path}` for unsupported ops, and opset <= 17 for TensorRT 8.x")
    return parser


def format_parser_error(error: Any, nodes: Sequence[Tuple[str, str]] = ()) -> str:
    """"node 'Resize_3' (Resize): <desc>" — node name and op from the error (10.x+) or the ONNX (8.x)."""
    desc = str(error.desc()) if hasattr(error, "desc") else str(error)
    name = str(error.node_name()) if hasattr(error, "node_name") else ""
    op = str(error.node_operator()) if hasattr(error, "node_operator") else ""
    index = int(error.node()) if hasattr(error, "node") else -1
    if (not name or not op) and 0 <= index < len(nodes):
        name, op = name or nodes[index][0], op or nodes[index][1]
    if not name and not op:
        return desc
    return f"node {name or '#' + str(index)!r} ({op or '?'}): {desc}"


def config_from_features(builder: trt.Builder, features: Features, *, mode: BuildMode, profile: Profile,
                         input_name: str, workspace_gib: float,
                         timing_cache: Optional[bytes] = None) -> trt.IBuilderConfig:
    """Builder config: workspace limit, precision flags (weakly typed only), one profile, timing cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    pool = int(workspace_gib * (1 << 30))
    if features.memory_pool_limit:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool)
    else:
        setattr(config, "max_workspace_size", pool)  # before 8.4
    for flag in mode.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))  # FP16/INT8 do not exist in 11.x
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is not reused
    return config


def build_plan(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig) -> bytes:
    """``build_serialized_network``; None (TensorRT's failure signal) becomes FcnsegError."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FcnsegError("expected TensorRT to build the engine, got None from build_serialized_network; see "
                          "the TensorRT log above, try a larger --workspace or a smaller --max-shape, and "
                          "`fcn-export check MODEL.onnx`")
    return bytes(memoryview(serialized))


def load_timing_cache(path: Optional[Path]) -> Optional[bytes]:
    """The cache file's bytes, b"" for a new cache, None when no cache was asked for."""
    if path is None:
        return None
    return path.read_bytes() if path.is_file() else b""


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        write_bytes(path, bytes(memoryview(cache.serialize())))


def network_io(network: trt.INetworkDefinition) -> Dict[str, List[Dict[str, Any]]]:
    """Names, dtypes and (symbolic = -1) shapes of the network's inputs and outputs."""
    def describe(t: trt.ITensor) -> Dict[str, Any]:
        return {"name": t.name, "dtype": _dtype_name(t.dtype), "shape": dims_list(t.shape)}

    return {"inputs": [describe(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [describe(network.get_output(i)) for i in range(network.num_outputs)]}


def dims_list(dims: Any) -> List[int]:
    """A TensorRT ``Dims`` as ints (indexing works on every version; iteration is not in the stubs)."""
    return [int(dims[i]) for i in range(len(dims))]


def _dtype_name(dtype: Any) -> str:
    import numpy as np
    import tensorrt as trt

    try:
        return np.dtype(trt.nptype(dtype)).name
    except (TypeError, KeyError):
        return str(dtype)


def gpu_info() -> Dict[str, str]:
    """Name and compute capability of GPU 0: cuda-python, pycuda, then torch.cuda; "unknown" otherwise."""
    from ..runtime.backends.cuda_memory import device_info

    info = device_info()
    if info["name"] != "unknown" or any(map(_importable, ("cuda", "pycuda"))):
        return info  # a CUDA library answered (or found no GPU): importing torch would not change that
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except Exception:  # torch absent or broken CUDA: the sidecar then says "unknown"
        pass
    return info


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def engine_sidecar(spec: EngineSpec, mode: BuildMode, features: Features,
                   io: Mapping[str, Any], gpu: Mapping[str, str]) -> Dict[str, Any]:
    """The JSON document written next to the plan."""
    metadata = replace(spec.metadata, precision=mode.precision)
    return {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": features.version,
        "gpu": dict(gpu),
        "precision": mode.precision,
        "strongly_typed": mode.strongly_typed,
        "builder_flags": list(mode.flags),
        "onnx": str(spec.onnx_path),
        "profile": {"input": spec.input_name, **spec.profile.to_dict()},
        "inputs": list(io.get("inputs", [])),
        "outputs": list(io.get("outputs", [])),
        "metadata": metadata.to_dict(),
    }


def save_engine(plan: bytes, output: Path, sidecar: Mapping[str, Any]) -> Path:
    """Write the plan and its sidecar, each atomically; on any error neither file is left behind."""
    text = json.dumps(sidecar, indent=2) + "\n"
    with atomic_path(output) as tmp_plan, atomic_path(sidecar_path(output)) as tmp_json:
        tmp_plan.write_bytes(plan)
        tmp_json.write_text(text)
    return output


def check_output_path(output: PathLike) -> Path:
    out = Path(output)
    if out.suffix not in ENGINE_SUFFIXES:
        raise FcnsegError(f"expected an engine path ending in {' or '.join(ENGINE_SUFFIXES)} (how fcn-predict "
                          f"recognises engines), got {str(out)!r}; try -o {out.with_suffix('.plan')}")
    return out


# ---------------------------------------------------------------- the one call

def build_engine(onnx_path: PathLike, *, output: PathLike, precision: Optional[str] = None,
                 min_shape: Optional[Sequence[int]] = None, opt_shape: Optional[Sequence[int]] = None,
                 max_shape: Optional[Sequence[int]] = None, workspace_gib: float = 4.0,
                 timing_cache: Optional[PathLike] = None, strongly_typed: Optional[bool] = None) -> Path:
    """Build a TensorRT engine from an ONNX graph and write ``output`` plus ``<output>.json``.

    Args:
        onnx_path: FP32, FP16-typed or Q/DQ ONNX (from fcn-export).
        output: the plan file (``.plan`` or ``.engine``).
        precision: "fp32", "fp16" or "int8"; None = the graph's own. "fp16" from an FP32 graph uses the
            FP16 builder flag (8.x/10.x only); "int8" needs a Q/DQ graph.
        min_shape / opt_shape / max_shape: NCHW optimization profile (defaults 1x3x256x256,
            1x3x520x520, 1x3x1024x1024, fitted to the ONNX's fixed dims and declared size range).
        workspace_gib: workspace memory pool limit.
        timing_cache: file to load the timing cache from (if present) and save it to (atomically).
        strongly_typed: None = strongly typed when the graph is FP16/Q-DQ typed and TensorRT has it.

    Returns:
        The plan's path.

    Raises:
        FcnsegError: TensorRT missing, a bad ONNX or profile, parser errors (each with node and op),
            or a failed build. Nothing is written then.
    """
    spec = engine_spec(onnx_path, precision=precision, min_shape=min_shape, opt_shape=opt_shape,
                       max_shape=max_shape, workspace_gib=workspace_gib, timing_cache=timing_cache,
                       strongly_typed=strongly_typed)
    return build_engine_from_spec(spec, output=output)


def build_engine_from_spec(spec: EngineSpec, *, output: PathLike) -> Path:
    """Run the build steps for a resolved ``EngineSpec``; see ``build_engine``."""
    out = check_output_path(output)
    features = detect_features(import_tensorrt())
    import tensorrt as trt  # checked just above; imported by name so mypy checks it against the stubs
    mode = choose_build_mode(spec.graph_precision, spec.precision, features, strongly_typed=spec.strongly_typed)
    log.info("building %s engine (TensorRT %s, strongly typed: %s, flags: %s, profile %s)", mode.precision,
             features.version, mode.strongly_typed, ",".join(mode.flags) or "none", spec.profile)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = create_network(builder, features, strongly_typed=mode.strongly_typed)
    parser = parse_onnx(network, logger, spec.onnx_path, nodes=spec.nodes)
    config = config_from_features(builder, features, mode=mode, profile=spec.profile, input_name=spec.input_name,
                                  workspace_gib=spec.workspace_gib, timing_cache=load_timing_cache(spec.timing_cache))
    plan = build_plan(builder, network, config)
    del parser  # the parser owns the weights until the plan is serialized
    if spec.timing_cache is not None:
        save_timing_cache(config, spec.timing_cache)
    sidecar = engine_sidecar(spec, mode, features, network_io(network), gpu_info())
    return save_engine(plan, out, sidecar)
