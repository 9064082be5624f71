"""The protocol every inference backend implements (after Polygraphy's runners).

A backend takes a preprocessed NCHW float32 batch and returns the graph's outputs by name:
``{"logits": (N, C, h, w) float32}`` or, for graphs with in-graph argmax, ``{"mask": (N, h, w) uint8}``.
Backends are imported lazily by ``fcnseg.runtime.segmenter`` so that the runtime needs numpy alone.
"""

from __future__ import annotations

from typing import Dict, Optional, Protocol

import numpy as np

from ..metadata import ModelMetadata


class Backend(Protocol):
    name: str                 # "onnxruntime", "tensorrt" or "pytorch"
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
