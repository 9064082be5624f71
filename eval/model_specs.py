"""Which model runs on which backend, resolved once for ``fcn-eval`` and ``fcn-bench``: one row per
(model file, backend, mode), each naming the backend it really ran on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from ..runtime.backends.openvino import INSTALL_HINT, openvino_available
from ..runtime import choose_backend


@dataclass(frozen=True)
class ModelSpec:
    """One row of a benchmark: a model file, the backend to run it with, and what is timed.

    Attributes:
        path: .onnx, .plan/.engine or .pth.
        backend: "openvino", "onnxruntime", "tensorrt", "pytorch"; None: the Segmenter's choice.
        precision_hint: OpenVINO's ("f32", "bf16"); None: the backend's default (OpenVINO's own for "model").
        mode: "e2e" (Segmenter end to end) or "model" (the library alone on a preprocessed input).
        label: the row's name in tables (default: file name, backend, mode).
    """

    path: str
    backend: Optional[str] = None
    precision_hint: Optional[str] = None
    mode: str = "e2e"
    label: str = ""

    def name(self, backend: str) -> str:
        return self.label or f"{Path(self.path).name} {backend}{' model only' if self.mode == 'model' else ''}"

def model_specs(paths: Sequence[str], backends: Sequence[Optional[str]] = (None,), *,
                precision_hint: Optional[str] = None, providers: Optional[Sequence[str]] = None,
                modes: Sequence[str] = ("e2e",)) -> List[ModelSpec]:
    """Every path in every mode; each .onnx once per backend (other files keep their own backend).

    A backend left as None is resolved here (the Segmenter's choice), so each row names the one it ran.
    ``precision_hint`` goes to the rows that run on OpenVINO only.
    """

    specs = []
    for path in paths:
        for backend in (backends or (None,)) if str(path).lower().endswith(".onnx") else (None,):
            chosen = choose_backend(path, backend, providers=providers if backend in (None, "onnxruntime") else None)
            hint = precision_hint if chosen == "openvino" else None
            specs.extend(ModelSpec(str(path), chosen, hint, mode) for mode in modes)
    return list(dict.fromkeys(specs))

def backend_note(specs: Sequence[ModelSpec]) -> str:
    """A line saying that .onnx models ran on ONNX Runtime because OpenVINO is not installed ("" otherwise)."""

    if any(s.path.lower().endswith(".onnx") and s.backend == "onnxruntime" for s in specs) \
            and not openvino_available():
        return (f"note: OpenVINO is not installed, so .onnx models ran on ONNX Runtime; `{INSTALL_HINT}` for the "
                "faster CPU backend")
    return ""
