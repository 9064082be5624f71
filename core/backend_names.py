"""The names users give backends on command lines and in ``Segmenter.load``: one home for each.

The runtime's backends and every CLI's options read these, so ``--backend``, ``--precision-hint`` and
``--providers`` accept the same words everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

BACKEND_NAMES = ("openvino", "onnxruntime", "tensorrt", "pytorch")
# OpenVINO's precision for the layers not in INT8. By default every graph gets OpenVINO's own default for the
# device (bf16 on CPUs with AVX-512 BF16 or AMX, else f32): measured within the FP16 parity tolerance, and checked
# against it in the test suite. fcn-eval and the demo's parity step use f32 (exact parity with the FP32 tolerance)
# unless --precision-hint says otherwise; a bf16 row is held to the FP16 tolerance.
PRECISION_HINTS = ("f32", "bf16")
PARITY_PRECISION_HINT = "f32"


def parse_providers(values: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    """Provider names from command-line text ("cuda, cpu") or repeated options; None when none are given."""
    items = [values] if isinstance(values, str) else list(values or ())
    return [p.strip() for item in items for p in item.split(",") if p.strip()] or None


@dataclass(frozen=True)
class BackendChoice:
    """What ``backend_options`` parsed: the backends (one row each where repeatable), ONNX Runtime providers,
    OpenVINO's precision hint and CPU threads; None where not given (the library's default)."""

    backends: Tuple[Optional[str], ...] = (None,)
    providers: Optional[List[str]] = None
    precision_hint: Optional[str] = None
    threads: Optional[int] = None
    rebuild: str = "never"          # a TensorRT engine that does not fit this GPU: "auto" rebuilds it once
    onnx: Optional[str] = None      # ... from this ONNX (default: the one its sidecar names)

    def one(self, backend: Optional[str]) -> "BackendChoice":
        """The same choice for one of its backends (a row of a comparison)."""
        return BackendChoice((backend,), self.providers, self.precision_hint, self.threads, self.rebuild, self.onnx)

    def load_options(self) -> dict:
        """The keyword arguments of ``Segmenter.load`` this choice sets (besides the backend)."""
        return {"providers": self.providers, "num_threads": self.threads, "precision_hint": self.precision_hint,
                "rebuild": self.rebuild, "onnx": self.onnx}

    @property
    def backend(self) -> Optional[str]:
        """The one backend of a command that runs one."""
        return self.backends[0]
