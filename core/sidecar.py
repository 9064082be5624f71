"""``EngineSidecar``: the one reader and writer of an engine's sidecar ``<plan>.json``.

TensorRT engines have no user-metadata API, so ``fcn-export trt`` writes a JSON document next to each
plan: which library built it (``tensorrt`` or ``tensorrt_rtx``) and its version, the GPUs it targets
(the compute capabilities given to TensorRT for RTX, or the build GPU for TensorRT), precision,
optimization profile, I/O tensors, DLA settings and the model's ``ModelMetadata``. The builder, the
TensorRT backend and the ``Segmenter`` all go through this class.

Format history: 1 (fcnseg 0.1) had ``tensorrt_version`` and top-level ``inputs``/``outputs``; 2 adds
``library``, ``library_version``, ``compute_capabilities``, ``io``, ``dla_core``, ``gpu_fallback`` and
``build_seconds``. Format 1 documents are read and mapped onto format 2. Later format-2 writers add what a
rebuild needs (issue 20): ``onnx`` relative to the plan's folder when the graph is beside it, ``onnx_sha256``,
``workspace_gib``, ``hardware_compatibility`` and ``version_compatible``; optional keys (absent: unknown, or off),
so older readers, which ignore unknown keys, still read these documents.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .atomic import write_text
from .errors import FcnsegError
from .metadata import ModelMetadata

PathLike = Union[str, "os.PathLike[str]"]
SIDECAR_FORMAT = 2
LIBRARIES = ("tensorrt", "tensorrt_rtx")
PRECISIONS = ("fp32", "fp16", "int8")
_CC_RE = re.compile(r"^\d+\.\d+$")
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")  # TensorRT for RTX 1.x ComputeCapability members
HARDWARE_LEVELS = ("ampere+", "same-cc")   # HardwareCompatibilityLevel AMPERE_PLUS (8.6+), SAME_COMPUTE_CAPABILITY
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sidecar_path(plan_path: PathLike) -> Path:
    """Where an engine's sidecar lives: ``model.plan`` -> ``model.plan.json``."""
    p = Path(plan_path)
    return p.with_name(p.name + ".json")


def find_sidecar(plan_path: PathLike) -> Optional[Path]:
    """``model.plan.json``, else ``model.json`` (older tools), else None."""
    p = Path(plan_path)
    for candidate in (sidecar_path(p), p.with_suffix(".json")):
        if candidate.is_file():
            return candidate
    return None


def sm_name(compute_capability: str) -> str:
    """"8.6" -> "sm_86", "12.0" -> "sm_120"."""
    return "sm_" + compute_capability.replace(".", "")


@dataclass
class EngineSidecar:
    """What an engine was built with and for, plus the model's metadata.

    Attributes:
        library: "tensorrt" or "tensorrt_rtx" (the Python module that built the engine and must run it).
        library_version: that module's ``__version__``.
        compute_capabilities: GPU targets given to the builder, like ["8.6", "8.9", "12.0"] (TensorRT for
            RTX); [] means the GPU the engine was built on (TensorRT), recorded in ``gpu``.
        precision: "fp32", "fp16" or "int8".
        profile: {"input": name, "min": [...], "opt": [...], "max": [...]} (NCHW).
        io: {"inputs": [...], "outputs": [...]}, each {"name", "dtype", "shape"} (-1 = dynamic).
        metadata: ``ModelMetadata.to_dict()`` of the ONNX the engine came from (None: unknown).
        dla_core: the DLA core the engine runs on (Jetson), None for the GPU.
        gpu_fallback: layers DLA cannot run fall back to the GPU.
        gpu: {"name", "compute_capability"} of the build machine's GPU ("unknown" without one).
        strongly_typed: the network was strongly typed (precision from the graph).
        builder_flags: precision flags set on a weakly typed build (e.g. ["FP16"]).
        onnx: the ONNX file the engine was built from: relative to the plan's folder when it is there (or below),
            else absolute; for rebuilds and the rebuild hint.
        build_seconds: wall time of the build.
        onnx_sha256: SHA-256 of that ONNX file ("" unknown), so a rebuild uses the same graph.
        workspace_gib: the workspace memory pool limit of the build (None: unknown).
        hardware_compatibility: "ampere+" (runs on Ampere and later GPUs) or "same-cc" (other GPUs of the same
            compute capability), None: the build GPU only (TensorRT 8.6+ ``HardwareCompatibilityLevel``).
        version_compatible: built with ``BuilderFlag.VERSION_COMPATIBLE``: later TensorRT releases run it, with
            ``runtime.engine_host_code_allowed = True``.
        format: the sidecar format version (``SIDECAR_FORMAT``).
    """

    library: str = "tensorrt"
    library_version: str = "unknown"
    compute_capabilities: List[str] = field(default_factory=list)
    precision: str = "fp32"
    profile: Dict[str, Any] = field(default_factory=dict)
    io: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    metadata: Optional[Dict[str, Any]] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    gpu: Dict[str, str] = field(default_factory=dict)
    strongly_typed: bool = False
    builder_flags: List[str] = field(default_factory=list)
    onnx: str = ""
    build_seconds: Optional[float] = None
    onnx_sha256: str = ""
    workspace_gib: Optional[float] = None
    hardware_compatibility: Optional[str] = None
    version_compatible: bool = False
    format: int = SIDECAR_FORMAT

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def read(cls, plan_path: PathLike) -> Optional["EngineSidecar"]:
        """The sidecar of ``plan_path``; None when there is none.

        Raises:
            FcnsegError: the file is not JSON, is from a newer fcnseg, or holds values of the wrong type.
        """
        path = find_sidecar(plan_path)
        if path is None:
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FcnsegError(f"expected the engine's sidecar {str(path)!r} to be JSON written by fcn-export, "
                              f"got {e}; try rebuilding the engine with fcn-export trt") from None
        if not isinstance(doc, dict):
            raise FcnsegError(f"expected a JSON object in the engine's sidecar {str(path)!r}, got "
                              f"{type(doc).__name__}; try rebuilding the engine with fcn-export trt")
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "sidecar") -> "EngineSidecar":
        """Build from a parsed document (format 1 or 2), then ``validate``; unknown keys are ignored."""
        doc = dict(doc)
        if "format" not in doc or doc.get("format") == 1:
            doc = _from_format_1(doc)
        known = {f.name for f in fields(cls)}
        sidecar = cls(**{k: v for k, v in doc.items() if k in known})
        sidecar.validate(source)
        return sidecar

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, plan_path: PathLike) -> Path:
        """Write ``<plan>.json`` atomically (validated first); returns its path."""
        self.validate()
        path = sidecar_path(plan_path)
        write_text(path, self.to_json())
        return path

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "sidecar") -> None:
        """Raise FcnsegError naming the first field that is not what fcn-export writes."""
        hint = "try rebuilding the engine with fcn-export trt"
        if not isinstance(self.format, int) or self.format > SIDECAR_FORMAT:
            raise FcnsegError(f"expected sidecar format <= {SIDECAR_FORMAT} in {source}, got {self.format!r} "
                              "(written by a newer fcnseg); try upgrading fcnseg")
        checks = [
            ("library", self.library in LIBRARIES, f"one of {LIBRARIES}"),
            ("library_version", isinstance(self.library_version, str), "a version string"),
            ("compute_capabilities", isinstance(self.compute_capabilities, list)
             and all(isinstance(c, str) and _CC_RE.match(c) for c in self.compute_capabilities),
             'a list like ["8.6", "8.9"]'),
            ("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}"),
            ("profile", isinstance(self.profile, dict) and _profile_ok(self.profile),
             'an object {"input", "min", "opt", "max"} of int lists'),
            ("io", isinstance(self.io, dict), 'an object {"inputs": [...], "outputs": [...]}'),
            ("metadata", self.metadata is None or isinstance(self.metadata, dict), "an object or null"),
            ("dla_core", self.dla_core is None or (isinstance(self.dla_core, int) and self.dla_core >= 0),
             "a DLA core number >= 0 or null"),
            ("gpu", isinstance(self.gpu, dict), 'an object {"name", "compute_capability"}'),
            ("onnx_sha256", self.onnx_sha256 in ("", None) or bool(_SHA256_RE.match(str(self.onnx_sha256))),
             "64 lowercase hex digits or empty"),
            ("workspace_gib", self.workspace_gib is None or (isinstance(self.workspace_gib, (int, float))
                                                            and not isinstance(self.workspace_gib, bool)
                                                            and self.workspace_gib > 0), "a positive number or null"),
            ("hardware_compatibility", self.hardware_compatibility is None
             or self.hardware_compatibility in HARDWARE_LEVELS, f"one of {HARDWARE_LEVELS} or null"),
            ("version_compatible", isinstance(self.version_compatible, bool), "true or false"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise FcnsegError(f"expected {name!r} in {source} to be {expected}, got "
                                  f"{getattr(self, name)!r}; {hint}")

    # ------------------------------------------------------------------ what it says
    def model_metadata(self) -> Optional[ModelMetadata]:
        """The model's ``ModelMetadata``; None when the sidecar records none."""
        return ModelMetadata.from_dict(self.metadata) if isinstance(self.metadata, dict) else None

    @property
    def version_short(self) -> str:
        """"1.7.1.116" -> "1.7"."""
        return ".".join(self.library_version.split(".")[:2])

    def targets(self) -> str:
        """The GPUs the engine is for, like "sm_86/sm_89/sm_120" or "NVIDIA A10 (compute capability 8.6)"."""
        if self.compute_capabilities:
            return "/".join(sm_name(c) for c in self.compute_capabilities)
        gpu = self.gpu or {}
        return f"{gpu.get('name', 'unknown GPU')} (compute capability {gpu.get('compute_capability', 'unknown')})"

    def describe(self) -> str:
        """One line: "tensorrt_rtx 1.7.1.116, fp16, for sm_86/sm_89/sm_120, profile 1x3x64x64..1x3x128x128"."""
        prof = self.profile
        shape = ("x".join(map(str, prof["min"])) + ".." + "x".join(map(str, prof["max"]))) if prof else "unknown"
        dla = f", DLA core {self.dla_core}" if self.dla_core is not None else ""
        hardware = f" and {self.hardware_compatibility} GPUs" if self.hardware_compatibility else ""
        version = ", version-compatible" if self.version_compatible else ""
        return (f"{self.library} {self.library_version}{version}, {self.precision}, for {self.targets()}{hardware}"
                f"{dla}, profile {shape}")


def _profile_ok(profile: Mapping[str, Any]) -> bool:
    if not profile:
        return True
    shapes = [profile.get(k) for k in ("min", "opt", "max")]
    return all(isinstance(s, list) and all(isinstance(d, int) for d in s) for s in shapes) \
        and len({len(s) for s in shapes if isinstance(s, list)}) == 1


def _from_format_1(doc: Dict[str, Any]) -> Dict[str, Any]:
    """Map a format-1 document (``tensorrt_version``, top-level ``inputs``/``outputs``) onto format 2."""
    out = {k: v for k, v in doc.items() if k not in ("tensorrt_version", "inputs", "outputs")}
    out.setdefault("library", "tensorrt")
    if "tensorrt_version" in doc:
        out["library_version"] = str(doc["tensorrt_version"])
    if "inputs" in doc or "outputs" in doc:
        out["io"] = {"inputs": list(doc.get("inputs") or []), "outputs": list(doc.get("outputs") or [])}
    out["format"] = SIDECAR_FORMAT
    return out


def check_runnable(plan_path: Union[str, Path], sidecar: Optional[EngineSidecar],
                   gpu: Optional[Dict[str, str]], reason: str = "") -> None:
    """Raise FcnsegError with one line saying why this engine cannot run on ``gpu`` (None: no GPU at all)."""
    plan = Path(plan_path)
    onnx = (sidecar.onnx if sidecar is not None and sidecar.onnx else "MODEL.onnx")
    if gpu is None:
        raise FcnsegError(f"cannot run TensorRT engine {plan.name!r} here: expected a CUDA GPU, got none "
                          f"({reason or 'no CUDA device'}); TensorRT engines run on NVIDIA GPUs only: try the ONNX "
                          f"model ({onnx}) with onnxruntime or openvino")
    if sidecar is None or sidecar.library != "tensorrt_rtx" or not sidecar.compute_capabilities:
        return
    cc = gpu.get("compute_capability", "unknown")
    if cc in sidecar.compute_capabilities or not _cc_below_max(cc, sidecar.compute_capabilities):
        return  # a listed target, or a newer GPU the library may still cover: let TensorRT decide
    fix = (f"fcn-export trt {onnx} --library tensorrt_rtx --compute-capability {cc}" if cc in RTX_TARGETS
           else f"fcn-export trt {onnx} --library tensorrt")
    raise FcnsegError(f"cannot run TensorRT engine {plan.name!r} here: built with tensorrt_rtx "
                      f"{sidecar.version_short} for {sidecar.targets()}; this GPU is {sm_name(cc)} "
                      f"({gpu.get('name', 'unknown GPU')}): rebuild with `{fix}`")


def _cc_below_max(cc: str, targets: Sequence[str]) -> bool:
    def key(c: str) -> Tuple[int, ...]:
        return tuple(int(p) for p in c.split("."))
    try:
        return key(cc) < max(key(t) for t in targets)
    except ValueError:
        return True
