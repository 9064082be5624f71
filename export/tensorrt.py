"""ONNX -> TensorRT engine (``.plan``) plus its sidecar ``<plan>.json``, with TensorRT 8.5-11.x or TensorRT for RTX.

Precision is decided in the ONNX graph: an FP16-typed graph (``fcn-export fp16``) or a Q/DQ graph
(``fcn-export int8``). TensorRT 11 and TensorRT for RTX only build strongly typed networks, so that is the
one path that works everywhere; on 8.x and weakly typed 10.x an FP32 graph can still be built with the FP16
flag. No implicit INT8 calibrator is used (deprecated in 10.1, gone in 11).

Two libraries, one chain: ``library="auto"`` uses ``tensorrt`` when importable, else ``tensorrt_rtx``
(TensorRT for RTX, whose builder runs on a CPU and targets RTX GPUs by compute capability). What each
library offers is detected on the module (``trt_features.detect_features``), never guessed from a version
string. The build is a chain of small steps in the manner of Polygraphy's loaders (``engine_spec``, see
``engine_spec.py`` and ``profile.py`` -> ``create_network`` -> ``parse_onnx`` -> ``config_from_features``
-> ``build_plan`` -> ``save_engine``); each takes the library's objects, so tests drive them with fake
modules and with the real TensorRT for RTX.
The engine has no user-metadata API, hence the sidecar (``fcnseg.core.sidecar.EngineSidecar``): it records
everything a rebuild needs (the source ONNX, relative to the plan when beside it, and its SHA-256; precision,
profile, workspace, targets, DLA core, hardware and version compatibility; the library and GPU), and
``fcnseg.export.chain.rebuild_engine`` rebuilds a plan from it (the runtime's ``rebuild="auto"`` calls it through the
``fcnseg.rebuilders`` entry point).
Refused in one line before any build: what the parser of the TensorRT found (or named with ``trt_version``)
refuses (``--argmax``'s UINT8 Cast on 8.5), a dynamic profile given explicitly with ``dla_core`` (DLA runs one
shape; a default profile is fixed at opt), and hardware or version compatibility the library lacks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, fields as dataclass_fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..core.atomic import atomic_path, file_sha256, write_bytes
from ..runtime.backends import tensorrt as trt_runtime
from ..runtime.backends.tensorrt import format_shape, import_tensorrt
from ..core.errors import FcnsegError
from ..core.sidecar import HARDWARE_LEVELS, EngineSidecar, sidecar_path
from .check import UINT8_CAST_FIXED_IN, older_than, uint8_casts
from .engine_spec import (LIBRARY_CHOICES, PRECISIONS, QDQ_OPS, EngineSpec, engine_spec, onnx_input,  # noqa: F401
                          precision_of_onnx)
from .onnx_graph import load_onnx
from .options import EngineOptions, with_fields
from .opt_profile import (DEFAULT_MAX_SHAPE, DEFAULT_MIN_SHAPE, DEFAULT_OPT_SHAPE, SIZE_KEYS, Dim, Profile,  # noqa: F401
                      Shape, declared_size_range, derive_profile)
from .trt_features import (BuildMode, Features, check_dla, choose_build_mode, choose_targets,  # noqa: F401
                           detect_features, parse_compute_capabilities)
from ..runtime.backends.cuda_memory import device_info

if TYPE_CHECKING:
    import tensorrt as trt

PathLike = Union[str, "os.PathLike[str]"]

log = logging.getLogger("fcnseg.export")

ENGINE_SUFFIXES = (".plan", ".engine")
HARDWARE_ENUM = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}   # HardwareCompatibilityLevel
_RELEASE_RE = re.compile(r"^\d+\.\d+")


# ---------------------------------------------------------------- options beyond EngineOptions

@dataclass(frozen=True)
class BuildOptions(EngineOptions):
    """``EngineOptions`` plus compatibility and target checks (``fcn-export trt``; issue 20).

    Attributes:
        hardware_compatibility: "ampere+" (``HardwareCompatibilityLevel.AMPERE_PLUS``, TensorRT 8.6+) or "same-cc"
            (``SAME_COMPUTE_CAPABILITY``, later 10.x and 11.x): the engine runs on other GPUs than the build GPU.
            None: the build GPU only.
        version_compatible: ``BuilderFlag.VERSION_COMPATIBLE`` (TensorRT 8.6+): later TensorRT releases run it.
        trt_version: a TensorRT that must also parse the graph ("8.5" for JetPack 5); what its parser refuses is
            refused before building. The TensorRT found is always checked.
    """

    hardware_compatibility: Optional[str] = None
    version_compatible: bool = False
    trt_version: Optional[str] = None


@dataclass(frozen=True)
class BuildSpec(EngineSpec):
    """``EngineSpec`` plus ``BuildOptions``' own fields (see there); its profile is fixed for DLA."""

    hardware_compatibility: Optional[str] = None
    version_compatible: bool = False
    trt_version: Optional[str] = None


_EXTRA = ("hardware_compatibility", "version_compatible", "trt_version")


def _fields_of(obj: Any, cls: type) -> Dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclass_fields(cls)}


def build_options(options: Optional[EngineOptions] = None, **fields: Any) -> BuildOptions:
    """``options`` as ``BuildOptions`` (an ``EngineOptions`` gets the defaults), with ``fields`` replaced."""
    base = options if isinstance(options, BuildOptions) else BuildOptions(**_fields_of(options or EngineOptions(),
                                                                                        EngineOptions))
    o = with_fields(base, BuildOptions, fields)
    if o.hardware_compatibility is not None and o.hardware_compatibility not in HARDWARE_LEVELS:
        raise FcnsegError(f"expected --hardware-compatibility in {HARDWARE_LEVELS}, got {o.hardware_compatibility!r}; "
                          "try --hardware-compatibility ampere+")
    if o.hardware_compatibility is not None and o.dla_core is not None:
        raise FcnsegError("expected --dla-core or --hardware-compatibility, got both; a DLA engine is for one Jetson "
                          "and JetPack has no hardware compatibility: try without --hardware-compatibility")
    if o.trt_version is not None:
        older_than(o.trt_version, UINT8_CAST_FIXED_IN)   # a version string, or one line saying what is expected
    return o


def build_spec(onnx_path: PathLike, options: Optional[EngineOptions] = None, **fields: Any) -> BuildSpec:
    """``engine_spec`` plus ``BuildOptions``: the profile fixed for DLA, the graph checked against ``trt_version``.

    Raises:
        FcnsegError: what ``engine_spec`` refuses, a dynamic profile given explicitly with ``dla_core``, a graph the
            parser of ``trt_version`` refuses. No TensorRT is needed.
    """
    o = build_options(options, **fields)
    spec = BuildSpec(**_fields_of(engine_spec(onnx_path, o), EngineSpec), **{k: getattr(o, k) for k in _EXTRA})
    explicit = o.min_shape is not None or o.max_shape is not None
    spec = replace(spec, profile=dla_profile(spec.profile, spec.dla_core, explicit=explicit))
    if spec.trt_version:
        check_parser_limits(spec.onnx_path, spec.trt_version)
    return spec


def as_build_spec(spec: EngineSpec) -> BuildSpec:
    return spec if isinstance(spec, BuildSpec) else BuildSpec(**_fields_of(spec, EngineSpec))


def dla_profile(profile: Profile, dla_core: Optional[int], *, explicit: bool) -> Profile:
    """DLA runs one shape (min = opt = max): a default profile is fixed at opt, a dynamic one given is refused."""
    if dla_core is None or profile.min == profile.opt == profile.max:
        return profile
    if explicit:
        raise FcnsegError(f"expected one shape for --dla-core {dla_core} (DLA runs static shapes: min = opt = max), "
                          f"got {profile}; try --opt-shape {format_shape(profile.opt)} alone (the profile is then "
                          "fixed there), or the same shape for --min-shape, --opt-shape and --max-shape")
    log.info("DLA core %d runs one shape: profile fixed at opt %s", dla_core, format_shape(profile.opt))
    return Profile(profile.opt, profile.opt, profile.opt)


def check_parser_limits(onnx_path: PathLike, trt_version: str) -> None:
    """Refuse, in one line, a graph the ONNX parser of TensorRT ``trt_version`` refuses (before 8.6: a Cast between
    UINT8 and an integer, as after ``--argmax``'s ArgMax)."""
    if not older_than(trt_version, UINT8_CAST_FIXED_IN):
        return
    found = uint8_casts(load_onnx(onnx_path))
    if found:
        node, what = found[0]
        raise FcnsegError(f"expected a graph the ONNX parser of TensorRT {trt_version} accepts, got Cast {node!r} "
                          f"{what} in {Path(onnx_path).name}, which it refuses (TensorRT 8.5 casts to UINT8 from "
                          "FLOAT/FLOAT16 only); try exporting without --argmax (the runtime takes the argmax of "
                          "the logits), or a graph whose mask stays INT32, or TensorRT 8.6+ (JetPack 6)")


def tensorrt_release(features: Features) -> Optional[str]:
    """The TensorRT version of full TensorRT ("8.5.2.2"); None for TensorRT for RTX or an unknown version."""
    version = features.version
    return version if features.library == "tensorrt" and _RELEASE_RE.match(version) else None


def hardware_levels(features: Features) -> List[str]:
    """``HardwareCompatibilityLevel`` members this library builds with, besides NONE ([] before 8.6).

    TensorRT for RTX has the enum, but its builder says "setHardwareCompatibilityLevel() is unsupported in
    TensorRT-RTX" and ignores it: its engines are portable by the compute capabilities they target.
    """
    enum = getattr(features.module, "HardwareCompatibilityLevel", None)
    config = getattr(features.module, "IBuilderConfig", None)
    if enum is None or features.compute_capabilities or not hasattr(config, "hardware_compatibility_level"):
        return []
    names = getattr(enum, "__members__", None) or [n for n in dir(enum) if n.isupper()]
    return [n for n in names if n != "NONE"]


def has_version_compatible(features: Features) -> bool:
    """``BuilderFlag.VERSION_COMPATIBLE`` builds here (8.6+). TensorRT for RTX has the flag, but its build then
    fails loading the lean runtime it would embed (``libnvinfer_lean.so.1``, which it does not ship)."""
    return hasattr(getattr(features.module, "BuilderFlag", None), "VERSION_COMPATIBLE") \
        and not features.compute_capabilities


def check_for_library(spec: BuildSpec, features: Features) -> None:
    """Refuse, before building, what ``features`` cannot give ``spec``: a graph its parser refuses, compatibility."""
    release = tensorrt_release(features)
    if release and release != spec.trt_version:
        check_parser_limits(spec.onnx_path, release)
    rtx = " (TensorRT for RTX: engines run where --compute-capability says)" if features.compute_capabilities else ""
    level = HARDWARE_ENUM.get(spec.hardware_compatibility or "")
    if level and level not in hardware_levels(features):
        raise FcnsegError(f"expected a TensorRT with HardwareCompatibilityLevel.{level} for --hardware-compatibility "
                          f"{spec.hardware_compatibility}, got {features.name}{rtx}; try full TensorRT 8.6+ "
                          "(AMPERE_PLUS; SAME_COMPUTE_CAPABILITY from late 10.x), or without --hardware-compatibility")
    if spec.version_compatible and not has_version_compatible(features):
        raise FcnsegError(f"expected a TensorRT with BuilderFlag.VERSION_COMPATIBLE for --version-compatible, got "
                          f"{features.name}{rtx or ' (TensorRT 8.6+ has it)'}; try full TensorRT 8.6+, or without "
                          "--version-compatible (rebuild the engine where it runs)")


def check_build(onnx_path: PathLike, options: Optional[EngineOptions] = None, **fields: Any) -> BuildSpec:
    """Every check ``build_engine`` makes before parsing, with the TensorRT found: run it before a long FP16/INT8
    step (``fcn-export trt``). Returns the ``BuildSpec``."""
    spec = build_spec(onnx_path, options, **fields)
    # through the module, as chain.engine looks for TensorRT: one import that tests can replace for both
    check_for_library(spec, detect_features(trt_runtime.import_tensorrt(spec.library)))
    return spec


# ---------------------------------------------------------------- build steps

def create_network(builder: trt.Builder, features: Features, *, strongly_typed: bool) -> trt.INetworkDefinition:
    """An empty network with EXPLICIT_BATCH where needed (8.x) and STRONGLY_TYPED when asked."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = features.module

    flags = 0
    if features.explicit_batch:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"))
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if network is None:
        raise FcnsegError("expected TensorRT to create a network, got None; see the TensorRT log above")
    return network


def parse_onnx(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path, features: Features, *,
               nodes: Sequence[Tuple[str, str]] = (), native_instancenorm: bool = False) -> trt.OnnxParser:
    """Parse the ONNX file into ``network`` (keep the returned parser alive until the build: it owns weights).

    ``native_instancenorm``: use TensorRT's InstanceNormalization, not the plugin, as version- and hardware-
    compatible engines must (trtexec sets ``OnnxParserFlag.NATIVE_INSTANCENORM`` then; the default from 10.0).

    Raises:
        FcnsegError: listing every parser error with its node name and operator.
    """
    parser, errors = parse_onnx_errors(network, logger, onnx_path, features, nodes=nodes,
                                       native_instancenorm=native_instancenorm)
    if errors:
        raise FcnsegError(f"{features.library}'s ONNX parser rejected {onnx_path.name}: expected every node to "
                          f"parse, got {len(errors)} error(s): {' | '.join(errors)}; try "
                          f"`fcn-export check {onnx_path}` for unsupported ops, and opset <= 17 for TensorRT 8.x")
    return parser


def parse_onnx_errors(network: trt.INetworkDefinition, logger: trt.ILogger, onnx_path: Path, features: Features, *,
                      nodes: Sequence[Tuple[str, str]] = (),
                      native_instancenorm: bool = False) -> Tuple[trt.OnnxParser, List[str]]:
    """Parse like ``parse_onnx`` but return the parser and its errors (each "node 'x' (Op): why") instead."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = features.module

    parser = trt.OnnxParser(network, logger)
    if native_instancenorm and hasattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)   # 8.6+
    # parse_from_file, not parse(bytes): it resolves external weight files next to the ONNX.
    ok = parser.parse_from_file(str(onnx_path))
    errors = [format_parser_error(parser.get_error(i), nodes) for i in range(parser.num_errors)]
    if not ok and not errors:
        errors = ["the parser failed without details"]
    return parser, errors


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
                         input_name: str, workspace_gib: float, timing_cache: Optional[bytes] = None,
                         targets: Sequence[str] = ()) -> trt.IBuilderConfig:
    """Builder config: workspace limit, precision flags (weakly typed only), one profile, GPU targets, timing cache."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = features.module

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
    if targets:
        set_targets(config, features, targets)
    if timing_cache is not None and features.timing_cache:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is not reused
    return config


def set_targets(config: trt.IBuilderConfig, features: Features, targets: Sequence[str]) -> None:
    """``set_compute_capability`` for each target ("8.6" -> ``ComputeCapability.SM86``; TensorRT for RTX only)."""
    enum = getattr(features.module, "ComputeCapability")
    setattr(config, "num_compute_capabilities", len(targets))
    for i, cc in enumerate(targets):
        getattr(config, "set_compute_capability")(getattr(enum, "SM" + cc.replace(".", "")), i)


def set_compatibility(config: trt.IBuilderConfig, features: Features, spec: BuildSpec) -> None:
    """Hardware compatibility level and the version-compatible flag, after ``check_for_library``."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = features.module

    if spec.hardware_compatibility:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel,
                                                      HARDWARE_ENUM[spec.hardware_compatibility])
    if spec.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)


def set_dla(builder: trt.Builder, config: trt.IBuilderConfig, features: Features, spec: EngineSpec,
            mode: BuildMode) -> None:
    """Put the engine on DLA core ``spec.dla_core`` (and allow GPU fallback), after ``check_dla``."""
    if TYPE_CHECKING:
        import tensorrt as trt
    else:
        trt = features.module

    cores = int(getattr(builder, "num_DLA_cores", 0) or 0) if features.dla else 0
    check_dla(features, cores, dla_core=spec.dla_core, gpu_fallback=spec.gpu_fallback, precision=mode.precision)
    if spec.dla_core is None:
        return
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = spec.dla_core
    if spec.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


class BuildProgress:
    """What an engine build shows on stderr: TensorRT's optimizer phases as tqdm bars (fed by ``progress_monitor``,
    10+ and RTX), or one line with the elapsed time where the library reports nothing (8.x).

    ``disable`` is tqdm's: None shows them only on a terminal. ``phases`` records every phase started, ``mode`` which
    of the two ran ("phases" or "elapsed"). TensorRT calls the phase methods from its own threads, hence the lock.
    """

    def __init__(self, disable: Optional[bool] = None) -> None:
        self.disable = disable
        self.phases: List[str] = []
        self.mode: Optional[str] = None
        self._bars: Dict[str, Any] = {}
        self._lock = threading.Lock()

    def phase_start(self, name: str, parent: Optional[str], num_steps: int) -> None:
        with self._lock:
            self.phases.append(name)
            depth = len(self._bars)
            self._bars[name] = _tqdm(total=num_steps, desc=f"{'  ' * depth}{name}", unit="step", leave=depth == 0,
                                     position=depth, disable=self.disable)

    def step_complete(self, name: str, step: int) -> None:
        with self._lock:
            bar = self._bars.get(name)
            if bar is not None:
                bar.update(step + 1 - bar.n)

    def phase_finish(self, name: str) -> None:
        with self._lock:
            bar = self._bars.pop(name, None)
            if bar is not None:
                bar.close()

    @contextlib.contextmanager
    def elapsed(self, desc: str) -> Iterator[None]:
        """``desc`` and the seconds so far, redrawn every second until the block ends."""
        self.mode = "elapsed"
        bar = _tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", disable=self.disable)
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(1.0):
                bar.refresh()

        thread = threading.Thread(target=tick, name="fcnseg-build-elapsed", daemon=True)
        if not bar.disable:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread.is_alive():
                thread.join()
            bar.close()

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()


def _tqdm(**kwargs: Any) -> Any:
    """A tqdm bar on stderr; a silent stand-in when tqdm is missing (the build must not depend on it)."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return _NoBar()
    return tqdm(file=sys.stderr, **kwargs)


class _NoBar:
    disable, n = True, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress_monitor(module: Any, progress: BuildProgress) -> Optional[Any]:
    """A ``module.IProgressMonitor`` (TensorRT 10+, TensorRT for RTX) forwarding to ``progress``; None before 10.

    Nothing it does raises into TensorRT: an error is logged once and the build goes on (``step_complete`` returns
    True, which TensorRT reads as "continue").
    """
    base = getattr(module, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # type: ignore[misc]  # pybind11 trampolines need the base initialised explicitly
            self.failed = False

        def _forward(self, method: str, *args: Any) -> None:
            try:
                getattr(progress, method)(*args)
            except Exception as e:  # never into TensorRT's C++ stack
                if not self.failed:
                    log.debug("build progress display failed (%s: %s); the build goes on", type(e).__name__, e)
                self.failed = True

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            self._forward("phase_start", phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._forward("step_complete", phase_name, step)
            return True

        def phase_finish(self, phase_name: str) -> None:
            self._forward("phase_finish", phase_name)

    return Monitor()


def build_plan(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, *,
               module: Any = None, progress: Optional[BuildProgress] = None) -> bytes:
    """``build_serialized_network``, showing progress (``BuildProgress``: the phases through ``module``'s
    ``IProgressMonitor`` where it has one, else the elapsed time); None (TensorRT's failure signal) becomes
    FcnsegError."""
    progress = progress if progress is not None else BuildProgress()
    monitor = progress_monitor(module, progress) if hasattr(config, "progress_monitor") else None
    try:
        if monitor is not None:
            progress.mode = "phases"
            config.progress_monitor = monitor   # kept alive by `monitor` until the build returns
            serialized = builder.build_serialized_network(network, config)
        else:
            with progress.elapsed("building engine"):
                serialized = builder.build_serialized_network(network, config)
    finally:
        if monitor is not None:
            config.progress_monitor = None  # type: ignore[assignment]  # pybind11 takes None: no monitor
        progress.close()
    if serialized is None:
        raise FcnsegError("expected TensorRT to build the engine, got None from build_serialized_network; see "
                          "the TensorRT log above, try a larger --workspace or a smaller --max-shape, and "
                          "`fcn-export check MODEL.onnx`")
    return bytes(memoryview(serialized))


def load_timing_cache(path: Optional[Path], features: Features) -> Optional[bytes]:
    """The cache file's bytes, b"" for a new cache, None when no cache was asked for or it cannot be used."""
    if path is None:
        return None
    if not features.timing_cache:
        log.warning("timing cache %s not used: %s builds ahead of time on the CPU and its timing cache needs a "
                    "GPU", path, features.name)
        return None
    return path.read_bytes() if path.is_file() else b""


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is not None:
        write_bytes(path, bytes(memoryview(cache.serialize())))


def network_io(network: trt.INetworkDefinition, features: Features) -> Dict[str, List[Dict[str, Any]]]:
    """Names, dtypes and (symbolic = -1) shapes of the network's inputs and outputs."""
    def describe(t: trt.ITensor) -> Dict[str, Any]:
        return {"name": t.name, "dtype": dtype_name(t.dtype, features), "shape": dims_list(t.shape)}

    return {"inputs": [describe(network.get_input(i)) for i in range(network.num_inputs)],
            "outputs": [describe(network.get_output(i)) for i in range(network.num_outputs)]}


def dims_list(dims: Any) -> List[int]:
    """A TensorRT ``Dims`` as ints (indexing works on every version; iteration is not in the stubs)."""
    return [int(dims[i]) for i in range(len(dims))]


def dtype_name(dtype: Any, features: Features) -> str:
    """A TensorRT ``DataType`` as numpy names it ("float32", "float16", "int8", "uint8", "int64", ...)."""
    import numpy as np

    try:
        return np.dtype(features.module.nptype(dtype)).name
    except (TypeError, KeyError, AttributeError):
        return str(dtype).rsplit(".", 1)[-1].lower()


def gpu_info() -> Dict[str, str]:
    """Name and compute capability of GPU 0: cuda-python, pycuda, then torch.cuda; "unknown" otherwise.

    torch is asked whenever neither CUDA library named a GPU: an installed ``cuda`` package proves nothing
    (cuda-bindings 13, which CUDA 13 torch wheels pull in, fails on drivers older than 580 where torch works).
    """
    info = device_info()
    if info["name"] != "unknown" or not _importable("torch"):
        return info
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


def engine_sidecar(spec: BuildSpec, mode: BuildMode, features: Features, io: Dict[str, Any],
                   gpu: Dict[str, str], targets: Sequence[str], seconds: float, *,
                   source: Tuple[str, str] = ("", "")) -> EngineSidecar:
    """The sidecar written next to the plan; ``source``: (the ONNX as ``onnx_reference`` names it, its SHA-256)."""
    return profile_sidecar(
        spec, spec.profile, mode.precision, library=features.library, library_version=features.version,
        compute_capabilities=list(targets), io=dict(io), dla_core=spec.dla_core,
        gpu_fallback=spec.gpu_fallback, gpu=dict(gpu), strongly_typed=mode.strongly_typed,
        builder_flags=list(mode.flags), onnx=source[0] or str(spec.source_onnx or spec.onnx_path),
        onnx_sha256=source[1], workspace_gib=spec.workspace_gib, hardware_compatibility=spec.hardware_compatibility,
        version_compatible=spec.version_compatible, build_seconds=round(seconds, 3))


def onnx_reference(onnx_path: PathLike, plan: PathLike) -> str:
    """``onnx_path`` relative to the plan's folder when it is there (or below), else absolute: what the sidecar
    records, so a plan copied with its ONNX beside it still finds it."""
    src, folder = Path(onnx_path).resolve(), Path(plan).resolve().parent
    try:
        return src.relative_to(folder).as_posix()
    except ValueError:
        return str(src)


def profile_sidecar(spec: EngineSpec, profile: Profile, precision: str, **fields: Any) -> EngineSidecar:
    """A sidecar recording ``precision``, ``profile`` and the model's metadata with both (the profile's size range).

    Args:
        spec: the resolved build (input name, model metadata).
        profile: the engine's optimization profile.
        precision: "fp32", "fp16" or "int8".
        **fields: the other ``EngineSidecar`` fields (library, io, dla_core, ...).
    """
    meta = replace(spec.metadata, precision=precision, **_profile_sizes(profile))
    return EngineSidecar(precision=precision, profile={"input": spec.input_name, **profile.to_dict()},
                         metadata=meta.to_dict(), **fields)


def _profile_sizes(profile: Any) -> Dict[str, int]:
    """The input side range of the engine's profile, for the runtime's ``--size`` check (issue 9)."""
    return {"min_size": int(min(profile.min[2:])), "max_size": int(max(profile.max[2:]))}


def save_engine(plan: bytes, output: Path, sidecar: EngineSidecar) -> Path:
    """Write the plan and its sidecar, each atomically; on any error neither file is left behind."""
    sidecar.validate()
    text = sidecar.to_json()
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


@dataclass(frozen=True)
class BuiltEngine:
    """A built engine: where it is, what its sidecar says and how long the build took.

    It is path-like (``open(built)``, ``Path(built)``, ``str(built)`` give the plan), so callers that
    only want the file can treat it as one.
    """

    path: Path
    sidecar: EngineSidecar
    build_seconds: float

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


# ---------------------------------------------------------------- the one call

def build_engine(onnx_path: PathLike, *, output: PathLike, options: Optional[EngineOptions] = None,
                 **fields: Any) -> BuiltEngine:
    """Build a TensorRT engine from an ONNX graph and write ``output`` plus ``<output>.json``.

    Args:
        onnx_path: FP32, FP16-typed or Q/DQ ONNX (from fcn-export).
        output: the plan file (``.plan`` or ``.engine``).
        options: precision, library, targets, DLA, profile, workspace, timing cache (``EngineOptions``).
        fields: ``BuildOptions`` fields replacing those of ``options`` (``precision="fp16", min_shape=...,
            version_compatible=True``).

    Returns:
        ``BuiltEngine`` (path-like): the plan's path, its ``EngineSidecar`` and the build seconds.

    Raises:
        FcnsegError: TensorRT missing, a bad ONNX or profile, a dynamic profile given for DLA, a graph the parser of
            the TensorRT found (or of ``trt_version``) refuses, parser errors (each with node and op), targets, DLA or
            compatibility the library cannot give, or a failed build. Nothing is written then.
    """
    return build_engine_from_spec(build_spec(onnx_path, options, **fields), output=output)


def build_engine_from_spec(spec: EngineSpec, *, output: PathLike) -> BuiltEngine:
    """Run the build steps for a resolved ``EngineSpec`` (or ``BuildSpec``); see ``build_engine``."""
    spec = as_build_spec(spec)
    out = check_output_path(output)
    features = detect_features(import_tensorrt(spec.library))
    check_for_library(spec, features)
    source_path = spec.source_onnx or spec.onnx_path
    source = (onnx_reference(source_path, out), file_sha256(source_path))   # hashed before the build reads it
    mode = choose_build_mode(spec.graph_precision, spec.precision, features, strongly_typed=spec.strongly_typed)
    targets = choose_targets(features, spec.compute_capabilities)
    log.info("building %s engine (%s, strongly typed: %s, flags: %s, targets: %s, profile %s)", mode.precision,
             features.name, mode.strongly_typed, ",".join(mode.flags) or "none", ",".join(targets) or "this GPU",
             spec.profile)
    start = time.perf_counter()
    trt = features.module
    logger = build_logger(trt)
    builder = trt.Builder(logger)
    network = create_network(builder, features, strongly_typed=mode.strongly_typed)
    config = config_from_features(builder, features, mode=mode, profile=spec.profile, input_name=spec.input_name,
                                  workspace_gib=spec.workspace_gib, targets=targets,
                                  timing_cache=load_timing_cache(spec.timing_cache, features))
    set_compatibility(config, features, spec)
    set_dla(builder, config, features, spec, mode)
    parser = parse_onnx(network, logger, spec.onnx_path, features, nodes=spec.nodes,
                        native_instancenorm=bool(spec.hardware_compatibility or spec.version_compatible))
    plan = build_plan(builder, network, config, module=trt)
    del parser  # the parser owns the weights until the plan is serialized
    logger.say_repeats()
    seconds = time.perf_counter() - start
    if spec.timing_cache is not None and features.timing_cache:
        save_timing_cache(config, spec.timing_cache)
    sidecar = engine_sidecar(spec, mode, features, network_io(network, features), gpu_info(), targets, seconds,
                             source=source)
    save_engine(plan, out, sidecar)
    log.info("wrote %s (%.1f MB, %s, built in %.1f s)", out, len(plan) / 1e6, sidecar.describe(), seconds)
    return BuiltEngine(out, sidecar, seconds)


def build_logger(trt: Any) -> Any:
    """A TensorRT ``ILogger`` passing errors and warnings to fcnseg's log, each distinct message once.

    ``trt.Logger(WARNING)`` prints every message: an FP16 Q/DQ graph gets TensorRT's "Converting conv activation
    scales to fp32" once per convolution (48 lines for FCN-8s/ResNet-18). ``say_repeats()`` then says how often
    each repeated. Severity is compared by member, not by int (pybind enums; the fakes keep that difference).
    """
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR, severity.WARNING: logging.WARNING}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.counts: Dict[str, int] = {}

        def log(self, level: Any, msg: str) -> None:
            if level not in levels:
                return
            self.counts[msg] = self.counts.get(msg, 0) + 1
            if self.counts[msg] == 1:
                log.log(levels[level], "TensorRT: %s", msg)

        def say_repeats(self) -> None:
            for msg, n in self.counts.items():
                if n > 1:
                    log.warning("TensorRT: %d times in all: %s", n, msg.strip()[:100])

    return _Logger()


# ---------------------------------------------------------------- rebuilding from the sidecar

def rebuild_source(plan: Path, side: EngineSidecar, onnx_path: Optional[PathLike] = None) -> Path:
    """The ONNX to rebuild ``plan`` from: ``onnx_path`` or the recorded one, checked against its SHA-256."""
    if onnx_path is not None:
        candidates = [Path(onnx_path)]
    elif side.onnx:
        named = Path(side.onnx)   # relative to the plan's folder; older sidecars: as given to the build
        candidates = [named] if named.is_absolute() else [plan.parent / named, named]
    else:
        candidates = []
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        where = f"{str(onnx_path)!r}" if onnx_path is not None else f"{side.onnx or 'no ONNX recorded'} beside it"
        raise FcnsegError(f"expected the ONNX {plan.name} was built from, to rebuild it, got {where}, which is not a "
                          "file; try onnx_path= (--onnx) the graph it was built from")
    if side.onnx_sha256:
        digest = file_sha256(found)
        if digest != side.onnx_sha256:
            raise FcnsegError(f"expected the ONNX {plan.name} was built from (sha256 {side.onnx_sha256[:12]}...), "
                              f"got {str(found)!r} with sha256 {digest[:12]}...; try the original graph, or "
                              f"`fcn-export trt {found}` for a new engine")
    return found


def rebuild_options(side: EngineSidecar, compute_capability: Optional[str] = None) -> BuildOptions:
    """The ``BuildOptions`` a sidecar records (strong typing is chosen again, for the library installed here)."""
    shapes = {f"{k}_shape": tuple(side.profile[k]) for k in ("min", "opt", "max")} if side.profile else {}
    rtx = side.library == "tensorrt_rtx"
    targets = [compute_capability] if compute_capability and rtx else side.compute_capabilities if rtx else None
    return BuildOptions(precision=side.precision, library=side.library,
                        compute_capabilities=tuple(targets) if targets else None, dla_core=side.dla_core,
                        gpu_fallback=side.gpu_fallback, workspace_gib=side.workspace_gib or EngineOptions.workspace_gib,
                        hardware_compatibility=side.hardware_compatibility,
                        version_compatible=side.version_compatible, **shapes)
