"""The ONNX graph conventions export writes and the runtime reads, in one place.

Every fcnseg graph has one NCHW float32 input named ``input`` and an output ``logits`` (N, C, H, W) or, with
in-graph argmax, ``mask`` (N, H, W). Opsets: 17 by default (TensorRT 8.x parses up to 17, 10.x up to 20).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from .errors import FcnsegError

INPUT_NAME = "input"
LOGITS_NAME = "logits"
MASK_NAME = "mask"
OUTPUT_NAMES = (LOGITS_NAME, MASK_NAME)
DEFAULT_OPSET = 17            # parsed by TensorRT 8.5+ (8.x stops at 17), 10.x (9-20) and 11.x
TRT8_MAX_OPSET, TRT10_MAX_OPSET = 17, 20
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel Q/DQ; 20: the TorchScript exporter's last opset
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class GraphOutput(NamedTuple):
    """One graph output as a backend sees it, for ``output_names``."""

    names: Tuple[str, ...]   # all its names; the first is the one to ask the backend for
    rank: Optional[int]      # None: not known before inference
    shape: Any               # as the backend shows it, for messages


def output_names(outputs: Sequence[GraphOutput], source: str) -> Dict[str, str]:
    """Map "logits"/"mask" to graph output names; a single unnamed output is told apart by its rank.

    Shared by the ONNX Runtime and OpenVINO backends (``source`` names the model file in the message).

    Raises:
        FcnsegError: no output named ``logits``/``mask`` and not one output of rank 3 or 4.
    """
    names = {n for o in outputs for n in o.names}
    found = {k: k for k in OUTPUT_NAMES if k in names}
    if found:
        return found
    if len(outputs) == 1 and outputs[0].rank in (3, 4):
        return {LOGITS_NAME if outputs[0].rank == 4 else MASK_NAME: outputs[0].names[0]}
    raise FcnsegError(f"expected a graph output named 'logits' (N,C,H,W) or 'mask' (N,H,W) in {source!r}, got "
                      f"{[(o.names[0], o.shape) for o in outputs]}; try exporting with fcn-export")
