"""The kinds of file the export stage writes, for the output guard (``fcnseg.core.output_guard.check_output``):
an existing file of the same kind, written by fcnseg, may be replaced; anything else only with ``--force``."""

from __future__ import annotations

from pathlib import Path

from ..core import output_guard
from ..core.output_guard import ArtifactKind, json_dict_with
from ..core.sidecar import find_sidecar


def _is_fcnseg_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, truncated, unreadable: not ours
        return False
    return model.producer_name == "fcnseg" or any(p.key.startswith("fcnseg.") for p in model.metadata_props)


def _is_sidecar(path: Path) -> bool:
    doc = output_guard.read_json(path)
    return isinstance(doc, dict) and ("metadata" in doc or "format" in doc)


def _is_fcnseg_engine(path: Path) -> bool:
    sidecar = find_sidecar(path)
    return sidecar is not None and _is_sidecar(sidecar)


def _is_empty_or_binary(path: Path) -> bool:
    """TensorRT's timing cache is an opaque blob it checks itself: empty or binary passes, a text file does not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return not head or b"\0" in head


ONNX_MODEL = ArtifactKind("fcnseg ONNX model", _is_fcnseg_onnx)
ENGINE = ArtifactKind("fcnseg engine (with its sidecar JSON)", _is_fcnseg_engine)
ENGINE_SIDECAR = ArtifactKind("fcnseg engine sidecar", _is_sidecar)
CALIBRATION_CACHE = ArtifactKind("fcnseg calibration cache", json_dict_with("ranges"))
INT8_REPORT = ArtifactKind("fcnseg INT8 report", json_dict_with("calibration_ids", "evaluation_ids"))
TIMING_CACHE = ArtifactKind("engine timing cache", _is_empty_or_binary)
