"""The contract every inference backend keeps (after Polygraphy's ``BaseRunner``).

A backend takes a preprocessed NCHW float32 batch and returns the graph's outputs by name:
``{"logits": (N, C, h, w) float32}`` or, for graphs with in-graph argmax, ``{"mask": (N, h, w) uint8}``.
Backends are imported lazily by ``fcnseg.runtime.segmenter`` so that the runtime needs numpy alone.

``BaseBackend`` enforces the lifecycle with template methods: ``infer`` checks the input once
(``_check_input``), then calls the backend's ``_infer`` and records ``last_timing`` per thread;
``close`` is idempotent and calls ``_close``; every backend is a context manager; ``metadata`` is
set once, at load. ``Backend`` is the structural type the ``Segmenter`` accepts (any object with
these members, e.g. a test double).
"""

from __future__ import annotations

import threading
import time
from typing import Dict, Optional, Protocol

import numpy as np

from ...core.errors import FcnsegError
from ...core.metadata import ModelMetadata

TIMING_KEYS = ("h2d", "infer", "d2h")
INPUT_CHANNELS = 3  # RGB, as every fcnseg model is exported


class Backend(Protocol):
    name: str                 # "onnxruntime", "tensorrt", "openvino" or "pytorch"
    metadata: ModelMetadata
    max_batch: Optional[int]  # most images one infer() may hold (None: no limit)

    @property
    def last_timing(self) -> Dict[str, float]:
        """Seconds of this thread's last infer(): "h2d", "infer", "d2h" (0.0 where not separate)."""
        ...

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one NCHW float32 batch; return outputs by name."""
        ...

    def close(self) -> None:
        """Release sessions, contexts and device memory."""
        ...


class BaseBackend:
    """Shared lifecycle of the backends; subclasses implement ``_infer`` and ``_close``.

    Attributes:
        name: the backend's name ("onnxruntime", "tensorrt", "openvino", "pytorch").
        thread_safe: True when ``infer`` may run in several threads at once (the ``Segmenter``
            takes a lock otherwise).
        max_batch: most images one ``infer`` may hold; None for no limit.
    """

    name: str = "backend"
    thread_safe: bool = False
    max_batch: Optional[int] = None

    def __init__(self) -> None:
        self._local = threading.local()
        self._closed = False

    # ------------------------------------------------------------------ metadata, set once
    @property
    def metadata(self) -> ModelMetadata:
        """The model's metadata (classes, normalisation, size, precision), read when the model loaded."""
        meta = self.__dict__.get("_metadata")
        if meta is None:
            raise FcnsegError(f"expected {type(self).__name__} to set its metadata while loading, got none; "
                              "this is a bug in the backend")
        return meta

    @metadata.setter
    def metadata(self, value: ModelMetadata) -> None:
        if self.__dict__.get("_metadata") is not None:
            raise AttributeError(f"{type(self).__name__}.metadata is set once, when the model loads")
        self.__dict__["_metadata"] = value

    # ------------------------------------------------------------------ inference
    @property
    def last_timing(self) -> Dict[str, float]:
        """Seconds spent in the calling thread's last ``infer``: "h2d", "infer", "d2h"."""
        return dict(getattr(self._local, "timing", None) or dict.fromkeys(TIMING_KEYS, 0.0))

    def infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run one NCHW float32 batch; return ``{"logits": float32}`` and/or ``{"mask": uint8}``.

        Raises:
            FcnsegError: the backend was closed, or the batch is not a float NCHW array with 3 channels
                and at most ``max_batch`` images (or outside what the backend accepts, see ``_check_input``).
        """
        if getattr(self, "_closed", False):
            raise FcnsegError(f"expected an open {type(self).__name__}, got one that was closed; "
                              "try loading the model again")
        x = self._check_input(batch)
        before = getattr(self._local, "timing", None)
        t0 = time.perf_counter()
        out = self._infer(x)
        if getattr(self._local, "timing", None) is before:  # not timed by stage: all of it is inference
            self._set_timing(infer=time.perf_counter() - t0)
        return out

    def _check_input(self, batch: np.ndarray) -> np.ndarray:
        """The one input check: a float NCHW batch with 3 channels, 1..max_batch images; returns float32."""
        arr = np.asarray(batch)
        shape = "x".join(str(d) for d in arr.shape) or "a scalar"
        if arr.dtype.kind != "f":
            raise FcnsegError(f"expected a float32 NCHW batch (preprocessed images), got dtype {arr.dtype} of "
                              f"shape {shape}; try Segmenter, which preprocesses images")
        if arr.ndim != 4 or arr.shape[1] != INPUT_CHANNELS or arr.shape[0] < 1:
            raise FcnsegError(f"expected an NCHW batch with {INPUT_CHANNELS} channels (N x 3 x H x W), got {shape}; "
                              "try fcnseg.runtime.preprocess.preprocess on each HxWx3 image")
        if self.max_batch is not None and arr.shape[0] > self.max_batch:
            raise FcnsegError(f"expected at most {self.max_batch} images in one batch for this model, got "
                              f"{arr.shape[0]}; try Segmenter, which splits larger batches")
        return np.ascontiguousarray(arr, dtype=np.float32)

    def _infer(self, batch: np.ndarray) -> Dict[str, np.ndarray]:
        """Run a checked float32 batch; call ``_set_timing`` when the stages are timed separately."""
        raise NotImplementedError

    def _set_timing(self, *, h2d: float = 0.0, infer: float = 0.0, d2h: float = 0.0) -> None:
        self._local.timing = {"h2d": h2d, "infer": infer, "d2h": d2h}

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release sessions, contexts and device memory; idempotent."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._close()

    def _close(self) -> None:
        """Free what the backend holds (called once, by ``close``)."""

    def __enter__(self) -> "BaseBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
