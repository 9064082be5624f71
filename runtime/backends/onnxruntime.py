"""ONNX Runtime backend: one ``InferenceSession``, shared safely between threads.

``InferenceSession.run`` is thread-safe, so this backend takes no lock; the only per-call state,
``last_timing``, is kept per thread. ONNX Runtime does its host/device copies inside ``run``, so
``h2d`` and ``d2h`` are reported as 0 and the whole call counts as ``infer``.

GPU providers get options, not only names (``gpu_provider_options``). The TensorRT provider caches its
engines and timing cache in a folder beside the model (``trt_cache_dir``), and builds one optimization
profile spanning the model's declared size range, so neither a new process nor a new aspect ratio builds
an engine again; the CUDA provider picks cuDNN convolutions by heuristic instead of timing every
algorithm on each new input shape.
"""

from __future__ import annotations

import json
import hashlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...core.backend_names import parse_providers
from ...core.errors import FcnsegError, one_line
from ...core.metadata import PREFIX, ModelMetadata, metadata_from_props
from ...core.onnx_names import GraphOutput, output_names
from .base import BaseBackend

# Short names accepted by ``providers=`` and ``fcn-predict --providers`` (case-insensitive).
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
# Tried in this order when no providers are given; CPU is always the last resort.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TRT_PROVIDER, CUDA_PROVIDER = PREFERRED_PROVIDERS
# The height/width range of a TensorRT profile for a graph that declares none (fcn-export onnx's defaults).
FALLBACK_SIZE_RANGE = (64, 2048)
# Images per run in the TensorRT profile of a graph with a dynamic batch, as fcn-export trt's default profile:
# TensorRT sizes its activation memory for the profile's largest shape. The Segmenter splits larger batches.
TRT_MAX_BATCH = 1
# ONNX Runtime versions that know the options (older ones refuse unknown provider options).
PROFILE_SHAPES_SINCE = (1, 15)
TIMING_CACHE_PATH_SINCE = (1, 16)


def import_onnxruntime() -> Any:
    """Import ``onnxruntime`` or say how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise FcnsegError("expected the onnxruntime package to run .onnx models, got none installed; "
                          "try `pip install onnxruntime` (or onnxruntime-gpu for CUDA/TensorRT)") from None
    return onnxruntime


def providers_for(path: Union[str, "os.PathLike[str]"], backend: Optional[str],
                  providers: Optional[Sequence[str]]) -> Optional[Sequence[str]]:
    """The providers for one model of a mixed run: only an .onnx run by ONNX Runtime (or the default backend)
    takes them; a .pth, a .plan or another backend in the same run ignores them."""
    return providers if backend in (None, "onnxruntime") and str(path).lower().endswith(".onnx") else None


def resolve_providers(requested: Optional[Sequence[str]], available: Sequence[str]) -> list:
    """Map requested provider names (full or short: cpu, cuda, tensorrt) to ORT names, checking availability.

    Args:
        requested: provider names in priority order; None or empty picks TensorRT/CUDA when available, then CPU.
        available: ``onnxruntime.get_available_providers()``.
    """
    requested = parse_providers(requested) or []
    if not requested:
        return [p for p in PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]
    by_lower = {p.lower(): p for p in available}
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full.lower() not in by_lower:
            raise FcnsegError(f"expected execution providers among {', '.join(available)}, got {name!r}; "
                              "try `pip install onnxruntime-gpu` for CUDA/TensorRT, or --providers cpu")
        chosen.append(by_lower[full.lower()])
    return chosen


# ONNX Runtime's WeightBiasQuantization rewrites a Conv's float bias to int32 in FP16 on graphs with FP16 Q/DQ
# scales, overflows, and the output is wrong (ONNX Runtime 1.32; fcnseg.export.fp16.ORT_DISABLED_FOR_FP16_QDQ).
FP16_QDQ_BROKEN = ("WeightBiasQuantization",)


class OnnxRuntimeBackend(BaseBackend):
    """Runs an exported ``.onnx`` model whose output is ``logits`` (N, C, h, w) or ``mask`` (N, h, w).

    Args:
        model_path: the ``.onnx`` file; its ``fcnseg.*`` ``metadata_props`` become ``metadata``.
        providers: execution providers (see ``resolve_providers``).
        num_threads: ``intra_op_num_threads``; None lets ONNX Runtime choose.
    """

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, model_path: Union[str, "os.PathLike[str]"], *, providers: Optional[Sequence[str]] = None,
                 num_threads: Optional[int] = None) -> None:
        super().__init__()
        ort = import_onnxruntime()
        self.path = str(model_path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        chosen = resolve_providers(providers, ort.get_available_providers())
        profile = _probe_profile(ort, self.path) if TRT_PROVIDER in chosen else None
        options = gpu_provider_options(chosen, self.path, profile=profile, ort_version=ort.__version__)
        self.session = _session(ort, self.path, opts, chosen, options)
        self.provider_options = dict(zip(chosen, options))
        self.metadata = _read_metadata(self.session, self.path)
        if _fp16_qdq(self.session):   # again without the optimizer that breaks FP16 Q/DQ graphs (see FP16_QDQ_BROKEN)
            self.session = _session(ort, self.path, opts, chosen, options, disabled=FP16_QDQ_BROKEN)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.input_shape = tuple(inp.shape)
        # A static batch dimension (an int) limits how many images one run may hold (and shorter batches are
        # padded); a TensorRT profile's largest batch limits it too (the Segmenter splits larger batches).
        self._static_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        trt_batch = profile.max[0] if profile and TRT_PROVIDER in self.session.get_providers() else None
        self.max_batch = self._static_batch or trt_batch
        self.outputs = _output_names(self.session, self.path)
        self.metadata.argmax = "logits" not in self.outputs
        self.providers = self.session.get_providers()

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one checked NCHW batch; return ``{"logits": float32}`` and/or ``{"mask": uint8}``."""
        n = batch.shape[0]
        x = batch.astype(self.input_dtype, copy=False)
        if self._static_batch and n < self._static_batch:
            # A fixed-batch graph still serves fewer images: pad with zeros, drop the padding after.
            x = np.concatenate([x, np.zeros((self._static_batch - n,) + x.shape[1:], x.dtype)])
        t0 = time.perf_counter()
        try:
            results = self.session.run(list(self.outputs.values()), {self.input_name: x})
        except Exception as e:  # ORT raises its own types for shape/type mismatches
            raise FcnsegError(f"ONNX Runtime could not run {self.path!r} on an input of shape {tuple(x.shape)} "
                              f"({one_line(e, 300)}); expected an input fitting {self.input_shape}; "
                              "try another image size (fcn-predict/fcn-eval --size, fcn-bench --shape)") from None
        self._set_timing(infer=time.perf_counter() - t0)  # ORT copies inside run: h2d and d2h stay 0
        out = {}
        for key, value in zip(self.outputs, results):
            value = np.asarray(value)[:n]
            out[key] = value.astype(np.float32, copy=False) if key == "logits" else value.astype(np.uint8, copy=False)
        return out

    def _close(self) -> None:
        """Drop the session (ONNX Runtime frees its memory when the session is collected)."""
        self.session = None


def _read_metadata(session: Any, path: str) -> ModelMetadata:
    outputs = session.get_outputs()
    channels = outputs[0].shape[1] if outputs and len(outputs[0].shape) == 4 else None
    return metadata_from_props(session.get_modelmeta().custom_metadata_map, path, channels)


def _output_names(session: Any, path: str) -> Dict[str, str]:
    """Map "logits"/"mask" to ONNX Runtime's output names (``output_names``)."""
    return output_names([GraphOutput((o.name,), len(o.shape), o.shape) for o in session.get_outputs()], path)




# ---------------------------------------------------------------- GPU provider options

@dataclass(frozen=True)
class TrtProfile:
    """The one TensorRT optimization profile of the image input: NCHW min/opt/max shapes."""

    input_name: str
    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]

    def options(self) -> Dict[str, str]:
        """``trt_profile_{min,opt,max}_shapes`` as ONNX Runtime takes them, e.g. ``input:1x3x64x64``."""
        return {f"trt_profile_{k}_shapes": f"{self.input_name}:{'x'.join(map(str, getattr(self, k)))}"
                for k in ("min", "opt", "max")}


def trt_profile(input_name: str, dims: Sequence[Any], meta: ModelMetadata) -> Optional[TrtProfile]:
    """The profile spanning the sizes the model declares, so no image size the runtime accepts builds again.

    Height and width run from ``meta.min_size`` to ``meta.max_size`` (``FALLBACK_SIZE_RANGE`` where the graph
    declares none), optimised for ``meta.input_size``; the batch from 1 to ``TRT_MAX_BATCH``; fixed dims stay.

    Args:
        input_name: the graph's image input (from the session).
        dims: its shape: ints where fixed, names or None where dynamic.
        meta: the model's metadata.

    Returns:
        The profile, or None for an input that is not NCHW or has no dynamic dim (TensorRT needs none then).
    """
    if len(dims) != 4 or all(_fixed(d) for d in dims):
        return None
    lo = meta.min_size or min(FALLBACK_SIZE_RANGE[0], meta.max_size or FALLBACK_SIZE_RANGE[0])
    hi = meta.max_size or max(FALLBACK_SIZE_RANGE[1], lo)
    opt = min(max(meta.input_size or lo, lo), hi)
    ranges = ((1, 1, TRT_MAX_BATCH), (3, 3, 3), (lo, opt, hi), (lo, opt, hi))
    shapes = [tuple(int(d) if _fixed(d) else r[i] for d, r in zip(dims, ranges)) for i in range(3)]
    return TrtProfile(input_name, *shapes)


def gpu_provider_options(providers: Sequence[str], model_path: Union[str, "os.PathLike[str]"], *,
                         profile: Optional[TrtProfile] = None, ort_version: str = "0") -> List[Dict[str, Any]]:
    """One options dict per provider, in order, for ``InferenceSession(providers=..., provider_options=...)``.

    TensorRT: engine and timing caches in ``trt_cache_dir(model_path)`` and ``profile``'s shapes (options an
    older ONNX Runtime does not know are left out). CUDA: cuDNN convolutions chosen by heuristic ("HEURISTIC")
    rather than by timing every algorithm for each new input shape (ONNX Runtime's default, "EXHAUSTIVE").
    Any other provider: no options.
    """
    version = _version(ort_version)
    options: List[Dict[str, Any]] = []
    for name in providers:
        if name == TRT_PROVIDER:
            options.append(_trt_options(model_path, profile, version))
        elif name == CUDA_PROVIDER:
            options.append({"cudnn_conv_algo_search": "HEURISTIC"})
        else:
            options.append({})
    return options


def _trt_options(model_path: Union[str, "os.PathLike[str]"], profile: Optional[TrtProfile],
                 version: Tuple[int, ...]) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    cache = trt_cache_dir(model_path)
    if cache is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache), trt_timing_cache_enable=True)
        if version >= TIMING_CACHE_PATH_SINCE:   # without it, the timing cache goes to the working directory
            options["trt_timing_cache_path"] = str(cache)
    if profile is not None and version >= PROFILE_SHAPES_SINCE:
        options.update(profile.options())
    return options


# What marks <model>.ortcache/ as fcnseg's, and how ONNX Runtime's TensorRT provider names its cache files
# (onnxruntime/core/providers/tensorrt: "TensorrtExecutionProvider_TRTKernel_graph_...", "..._cache.timing").
ORT_CACHE_MARKER = ".fcnseg-ortcache"
ORT_CACHE_FILE_PREFIX = "TensorrtExecutionProvider"


def trt_cache_dir(model_path: Union[str, "os.PathLike[str]"]) -> Optional[Path]:
    """The folder of TensorRT's engine and timing caches for one model, created when missing.

    ``<model>.ortcache/`` beside the model; where that folder cannot be written (a read-only model store) or is
    not ours (a folder of that name holding other files), ``$XDG_CACHE_HOME/fcnseg/ortcache/<model name>-<hash of
    its path>/`` (``~/.cache`` by default). None, with a warning, when neither can be used: then every process
    builds its engines again. A folder fcnseg made holds ``ORT_CACHE_MARKER``.
    """
    model = Path(model_path).resolve()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(model).encode()).hexdigest()[:12]
    candidates = (model.with_name(model.name + ".ortcache"), home / "fcnseg" / "ortcache" / f"{model.name}-{digest}")
    for folder in candidates:
        if not _ours(folder):
            warnings.warn(f"{str(folder)!r} holds files fcnseg did not write: left alone, TensorRT's engine cache "
                          "goes elsewhere", stacklevel=3)
        elif _writable_folder(folder):
            return folder
    warnings.warn(f"no writable folder for TensorRT's engine cache of {str(model)!r} (tried "
                  f"{', '.join(map(str, candidates))}): every process builds its engines again; "
                  "try making one of them writable or setting XDG_CACHE_HOME", stacklevel=3)
    return None


def _ours(folder: Path) -> bool:
    """Whether ``folder`` may hold the cache: missing, marked by fcnseg, or holding only ONNX Runtime's own
    TensorRT cache files (a folder an earlier fcnseg made before the marker)."""
    if not folder.exists():
        return True
    if not folder.is_dir():
        return False
    return (folder / ORT_CACHE_MARKER).is_file() or all(
        e.name.startswith(ORT_CACHE_FILE_PREFIX) for e in folder.iterdir())


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            (folder / ORT_CACHE_MARKER).touch()
            return True
    except OSError:
        pass
    return False


def _probe_profile(ort: Any, path: str) -> Optional[TrtProfile]:
    """The TensorRT profile of the model at ``path``, read through a CPU session made for that alone: the
    provider options must be known before the real session exists."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    probe = _session(ort, path, opts, ["CPUExecutionProvider"], [{}])
    inp = probe.get_inputs()[0]
    return trt_profile(inp.name, inp.shape, _declared_sizes(probe.get_modelmeta().custom_metadata_map))


def _declared_sizes(props: Dict[str, str]) -> ModelMetadata:
    """The metadata for the profile, quietly: the real load warns about a model without metadata, or refuses
    unreadable values, once."""
    if any(k.startswith(PREFIX) for k in props):
        try:
            return ModelMetadata.from_props(props)
        except (ValueError, TypeError):
            pass
    return ModelMetadata()


def _fp16_qdq(session: Any) -> bool:
    """An INT8 graph fcn-export wrote with FP16 elsewhere (FP16 Q/DQ scales), as its ``fcnseg.int8`` prop says."""
    props = session.get_modelmeta().custom_metadata_map
    try:
        return json.loads(props.get("fcnseg.int8", "{}") or "{}").get("high_precision") == "fp16"
    except (ValueError, AttributeError):
        return False


def _session(ort: Any, path: str, opts: Any, providers: Sequence[str], options: Sequence[Dict[str, Any]],
             disabled: Sequence[str] = ()) -> Any:
    extra = {"disabled_optimizers": list(disabled)} if disabled else {}
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=list(providers),
                                    provider_options=list(options), **extra)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        raise FcnsegError(f"could not load {path!r} with ONNX Runtime ({one_line(e, 300)}); "
                          "expected a valid .onnx model, e.g. written by fcn-export") from None


def _fixed(dim: Any) -> bool:
    return isinstance(dim, int) and dim > 0


def _version(text: str) -> Tuple[int, ...]:
    """``"1.16.3"`` -> (1, 16); ``"1.17.0.dev20240101"`` -> (1, 17); unreadable parts count as 0."""
    parts = []
    for part in str(text).split(".")[:2]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts)
