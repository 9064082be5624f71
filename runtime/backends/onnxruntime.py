"""ONNX Runtime backend: one ``InferenceSession``, shared safely between threads.

``InferenceSession.run`` is thread-safe, so this backend takes no lock; the only per-call state,
``last_timing``, is kept per thread. ONNX Runtime does its host/device copies inside ``run``, so
``h2d`` and ``d2h`` are reported as 0 and the whole call counts as ``infer``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ...core.backend_names import parse_providers
from ...core.errors import FcnsegError, one_line
from ...core.metadata import ModelMetadata, metadata_from_props
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
        try:
            self.session = ort.InferenceSession(self.path, sess_options=opts, providers=chosen)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise FcnsegError(f"could not load {self.path!r} with ONNX Runtime ({one_line(e, 300)}); "
                              "expected a valid .onnx model, e.g. written by fcn-export") from None
        self.metadata = _read_metadata(self.session, self.path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.input_shape = tuple(inp.shape)
        # A static batch dimension (an int) limits how many images one run may hold.
        self.max_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        self.outputs = _output_names(self.session, self.path)
        self.metadata.argmax = "logits" not in self.outputs
        self.providers = self.session.get_providers()

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one checked NCHW batch; return ``{"logits": float32}`` and/or ``{"mask": uint8}``."""
        n = batch.shape[0]
        x = batch.astype(self.input_dtype, copy=False)
        if self.max_batch and n < self.max_batch:
            # A fixed-batch graph still serves fewer images: pad with zeros, drop the padding after.
            x = np.concatenate([x, np.zeros((self.max_batch - n,) + x.shape[1:], x.dtype)])
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


