"""What a TensorRT library offers, found on the module with ``hasattr`` (never from its version string).

Two libraries share one build chain: ``tensorrt`` (8.5, 8.6, 10.x, 11.x) and ``tensorrt_rtx`` (TensorRT for
RTX 1.x, whose builder runs on a CPU). This module turns the module object into ``Features`` and decides,
from them and the graph, how to build: strong typing and precision flags (``choose_build_mode``), GPU
targets (``choose_targets``) and DLA (``check_dla``). Everything takes the module (real or fake), so
the tests describe each version with a fake module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from ..runtime.backends.tensorrt import library_name
from ..core.errors import FcnsegError

# TensorRT for RTX's documented portable default ("portable across devices with compute capabilities 8.6,
# 8.9 and 12.0", TensorRT-RTX support matrix); set explicitly so the sidecar says exactly what was built.
RTX_PORTABLE_TARGETS = ("8.6", "8.9", "12.0")
_CC_RE = re.compile(r"^\d+\.\d$")


@dataclass(frozen=True)
class Features:
    """What the installed TensorRT module offers, found with hasattr.

    Attributes:
        version: ``module.__version__``.
        library: "tensorrt" or "tensorrt_rtx".
        explicit_batch: the EXPLICIT_BATCH creation flag must be passed (it exists and the builder still
            knows implicit batch, i.e. has ``max_batch_size``: 8.x).
        strongly_typed: the STRONGLY_TYPED creation flag exists (9.0+).
        fp16_flag / int8_flag: ``BuilderFlag.FP16`` / ``INT8`` exist (gone in 11.x and TensorRT for RTX).
        memory_pool_limit: ``IBuilderConfig.set_memory_pool_limit`` (8.4+); else ``max_workspace_size``.
        device_memory_size_v2: ``ICudaEngine.device_memory_size_v2`` (10.x+).
        parser_node_names: ``ParserError.node_name()``/``node_operator()`` (10.x+; 8.x has ``node()`` only).
        compute_capabilities: the builder targets GPUs by compute capability (``ComputeCapability`` and
            ``IBuilderConfig.set_compute_capability``: TensorRT for RTX, which builds ahead of time on a CPU);
            its timing-cache API asks for a GPU, so no timing cache is used then.
        dla: ``DeviceType.DLA`` and ``IBuilderConfig.DLA_core`` exist (whether the machine has DLA cores is
            asked of the builder).
        module: the module itself (not compared).
    """

    version: str
    explicit_batch: bool
    strongly_typed: bool
    fp16_flag: bool
    int8_flag: bool
    memory_pool_limit: bool
    device_memory_size_v2: bool
    parser_node_names: bool
    library: str = "tensorrt"
    compute_capabilities: bool = False
    dla: bool = False
    module: Any = field(default=None, compare=False, repr=False)

    @property
    def always_strongly_typed(self) -> bool:
        """No precision builder flags: every network is strongly typed (11.x, TensorRT for RTX)."""
        return self.strongly_typed and not self.fp16_flag and not self.int8_flag

    @property
    def timing_cache(self) -> bool:
        """The timing cache can be used (not on TensorRT for RTX's CPU-only builder)."""
        return not self.compute_capabilities

    @property
    def name(self) -> str:
        return f"{self.library} {self.version}"


def detect_features(trt_module: Any) -> Features:
    """Feature detection over a TensorRT module object (real or fake); no version parsing."""
    flags = getattr(trt_module, "NetworkDefinitionCreationFlag", None)
    builder_flags = getattr(trt_module, "BuilderFlag", None)
    config = getattr(trt_module, "IBuilderConfig", None)
    return Features(
        version=str(getattr(trt_module, "__version__", "unknown")),
        explicit_batch=hasattr(flags, "EXPLICIT_BATCH") and hasattr(getattr(trt_module, "Builder", None),
                                                                    "max_batch_size"),
        strongly_typed=hasattr(flags, "STRONGLY_TYPED"),
        fp16_flag=hasattr(builder_flags, "FP16"),
        int8_flag=hasattr(builder_flags, "INT8"),
        memory_pool_limit=hasattr(config, "set_memory_pool_limit"),
        device_memory_size_v2=hasattr(getattr(trt_module, "ICudaEngine", None), "device_memory_size_v2"),
        parser_node_names=hasattr(getattr(trt_module, "ParserError", None), "node_name"),
        library=library_name(trt_module),
        compute_capabilities=hasattr(trt_module, "ComputeCapability") and hasattr(config, "set_compute_capability"),
        dla=hasattr(getattr(trt_module, "DeviceType", None), "DLA") and hasattr(config, "DLA_core"),
        module=trt_module,
    )


# ---------------------------------------------------------------- precision and typing

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
    if strongly_typed is False and features.always_strongly_typed:
        raise FcnsegError(f"expected a TensorRT with weakly typed networks for strongly_typed=False, got "
                          f"{features.name}, which builds strongly typed networks only; try leaving it unset")
    if strongly_typed is None:
        strongly_typed = features.always_strongly_typed or (
            features.strongly_typed and graph_precision in ("fp16", "int8"))
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


# ---------------------------------------------------------------- GPU targets

def parse_compute_capabilities(text: str) -> List[str]:
    """"8.6,8.9,12.0" -> ["8.6", "8.9", "12.0"]; FcnsegError with an example otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if not _CC_RE.match(t)]
    if not items or bad:
        raise FcnsegError(f"expected compute capabilities like 8.6,8.9,12.0, got {text!r}; try "
                          f"--compute-capability {','.join(RTX_PORTABLE_TARGETS)}")
    return items


def available_targets(features: Features) -> List[str]:
    """The compute capabilities the library can target ("SM86" -> "8.6"), [] where it cannot choose."""
    enum = getattr(features.module, "ComputeCapability", None)
    names = getattr(enum, "__members__", None) or {n: None for n in dir(enum) if n.startswith("SM")}
    return [f"{n[2:-1]}.{n[-1]}" for n in names if re.match(r"^SM\d{2,3}$", n)]


def choose_targets(features: Features, requested: Optional[Sequence[str]]) -> List[str]:
    """The compute capabilities to build for: ``requested``, the RTX portable set, or [] (the build GPU).

    Raises:
        FcnsegError: targets asked of a library that builds for its own GPU, or one it does not know.
    """
    if not features.compute_capabilities:
        if requested:
            raise FcnsegError(f"expected TensorRT for RTX (--library tensorrt_rtx) for --compute-capability, got "
                              f"{features.name}, which builds for the GPU it runs on; try leaving it out")
        return []
    targets = list(requested) if requested else list(RTX_PORTABLE_TARGETS)
    known = available_targets(features)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise FcnsegError(f"expected compute capabilities {known} for {features.name}, got {unknown[0]}; "
                          f"Hopper (9.0), Jetson and data-center GPUs need full TensorRT: try "
                          f"--library tensorrt on that machine, or --compute-capability {','.join(known[:3])}")
    return targets


# ---------------------------------------------------------------- DLA

def check_dla(features: Features, num_dla_cores: int, *, dla_core: Optional[int], gpu_fallback: bool,
              precision: str) -> None:
    """Raise FcnsegError unless ``dla_core`` can be used here (None: GPU build, nothing to check)."""
    if dla_core is None:
        if gpu_fallback:
            raise FcnsegError("expected --dla-core N with --gpu-fallback, got no DLA core; try --dla-core 0")
        return
    if not features.dla or num_dla_cores < 1:
        why = ("TensorRT for RTX targets RTX GPUs, which have no DLA" if features.library == "tensorrt_rtx"
               else "no DLA cores on this machine" if features.dla else "no DLA API in this TensorRT")
        raise FcnsegError(f"expected a TensorRT with DLA cores for --dla-core {dla_core} (Jetson AGX Orin/Xavier, "
                          f"Orin NX), got {features.name} ({why}); try without --dla-core")
    if not 0 <= dla_core < num_dla_cores:
        raise FcnsegError(f"expected --dla-core between 0 and {num_dla_cores - 1} (this device has {num_dla_cores} "
                          f"DLA cores), got {dla_core}; try --dla-core 0")
    if precision == "fp32":
        raise FcnsegError("expected an FP16 or INT8 engine for DLA (it runs no FP32 layers), got fp32; try --fp16 "
                          "or --int8")
