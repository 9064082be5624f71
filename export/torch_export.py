"""Checkpoint -> ONNX, verified against PyTorch with ONNX Runtime before anything is written.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). It runs on every torch
from 2.4 on, keeps batch, height and width symbolic through ``dynamic_axes`` and writes the bilinear
upsampling as ``Resize(mode=linear, coordinate_transformation_mode=half_pixel)`` fed by ``sizes``, which
TensorRT parses. The dynamo exporter needs ``onnxscript`` (not a dependency here) and gains nothing for
these convolutional graphs.

The graph is then simplified with onnxslim (dynamic dims kept), checked with
``onnx.checker.check_model(full_check=True)`` and compared with PyTorch at several shapes, odd ones
included. Deployment metadata (``ModelMetadata``) goes into ``metadata_props``; the accepted input size
range goes under the extra keys ``fcnseg.min_size`` / ``fcnseg.max_size``.

The ONNX graph helpers every export step shares live in ``fcnseg.export.onnx_graph`` (no torch there).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..core.errors import FcnsegError
from ..core.onnx_names import DEFAULT_OPSET, INPUT_NAME, LOGITS_NAME, MASK_NAME, MAX_OPSET, MIN_OPSET, TRT8_MAX_OPSET
from ..core.metadata import PREFIX, ModelMetadata
from ..eval.parity import OutputComparison, compare_logits
from .onnx_graph import (DEFAULT_VERIFY_SHAPES, SIZE_KEYS, PathLike, Shape, _full_check, check_resize_modes,
                         expose_argmax_input, ort_session, run_session, save_onnx, set_metadata, simplify)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fcnseg.export")



@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how it compared with PyTorch.

    Attributes:
        path: the ONNX file.
        metadata: the embedded ``ModelMetadata``.
        comparisons: one ``OutputComparison`` per verified shape (empty with ``verify=False``).
        opset: the graph's ONNX opset.
        seconds: wall time of export + simplification + verification.
    """

    path: Path
    metadata: ModelMetadata
    comparisons: List[OutputComparison] = field(default_factory=list)
    opset: int = DEFAULT_OPSET
    seconds: float = 0.0


def export_onnx(ckpt_path: PathLike, output: Optional[PathLike] = None, *, arch: Optional[str] = None,
                num_classes: Optional[int] = None, argmax: bool = False,
                static_hw: Optional[Tuple[int, int]] = None, opset: int = DEFAULT_OPSET, verify: bool = True,
                verify_shapes: Optional[Sequence[Shape]] = None, min_size: int = 64,
                max_size: int = 2048) -> ExportResult:
    """Export a checkpoint to a verified ONNX graph (input ``input``, output ``logits`` or ``mask``).

    Args:
        ckpt_path: checkpoint (ours, torchvision-reference ``{"model": ...}`` or a raw state dict).
        output: ONNX file to write; default: the checkpoint's name with ``.onnx``.
        arch: model name; required when the checkpoint does not record it.
        num_classes: expected class count (checked against the checkpoint).
        argmax: end the graph in ArgMax + Cast and output a uint8 ``mask`` (N, H, W) instead of logits.
        static_hw: (H, W) to fix the input to 1x3xHxW; default: batch, height and width dynamic.
        opset: ONNX opset (13..20; TensorRT 8.x needs <= 17).
        verify: compare with PyTorch on ONNX Runtime (CPU) before writing.
        verify_shapes: (N, H, W) shapes to compare at; default ``DEFAULT_VERIFY_SHAPES`` (or the static shape).
        min_size / max_size: the input height/width range the graph is declared for (metadata).

    Raises:
        FcnsegError: unreadable or mismatched checkpoint, bad options, or a graph that does not match
            PyTorch; no file is written then.
    """
    t0 = time.perf_counter()
    shapes = _check_export_options(opset, static_hw, min_size, max_size, verify_shapes)
    from ..train.checkpoint import model_from_checkpoint
    from ..train.models import MODELS

    if arch is not None and arch not in MODELS:
        raise FcnsegError(f"expected --arch to be one of {', '.join(MODELS)}, got {arch!r}")
    model, ckpt = model_from_checkpoint(ckpt_path, arch=arch, num_classes=num_classes)
    meta = ckpt.metadata()
    if argmax and meta.num_classes > 256:
        raise FcnsegError(f"expected at most 256 classes for a uint8 mask (--argmax), got {meta.num_classes}; "
                          "try exporting without --argmax")
    meta.precision, meta.argmax = "fp32", argmax
    if static_hw is not None:   # the runtime resizes every image to exactly HxW (and needs no other size)
        meta.input_hw, meta.input_size = [int(v) for v in static_hw], int(min(static_hw))
        min_size, max_size = int(min(static_hw)), int(max(static_hw))
    meta.min_size, meta.max_size = min_size, max_size
    wrapper = export_wrapper(model, argmax=argmax).eval()
    proto = simplify(torch_to_onnx(wrapper, opset=opset, static_hw=static_hw))
    check_resize_modes(proto)
    set_metadata(proto, meta, {SIZE_KEYS[0]: min_size, SIZE_KEYS[1]: max_size,
                               PREFIX + "source": {"checkpoint": Path(ckpt_path).name, **_producer(opset)}})
    _full_check(proto)
    comparisons = verify_against_torch(proto, wrapper, shapes) if verify else []
    out = Path(output) if output is not None else Path(ckpt_path).with_suffix(".onnx")
    save_onnx(proto, out)
    seconds = time.perf_counter() - t0
    log.info("wrote %s (%s, opset %d, %s) in %.1f s", out, meta.arch, opset,
             "mask uint8" if argmax else "logits float32", seconds)
    return ExportResult(out, meta, comparisons, opset, seconds)


def _check_export_options(opset: int, static_hw: Optional[Tuple[int, int]], min_size: int, max_size: int,
                          verify_shapes: Optional[Sequence[Shape]]) -> List[Shape]:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise FcnsegError(f"expected an opset in {MIN_OPSET}..{MAX_OPSET}, got {opset}; "
                          f"try --opset {DEFAULT_OPSET} (TensorRT 8.x: <= {TRT8_MAX_OPSET})")
    if not 1 <= min_size <= max_size:
        raise FcnsegError(f"expected 1 <= --min-size <= --max-size, got {min_size} and {max_size}")
    if static_hw is not None:
        if len(static_hw) != 2 or min(static_hw) < 1:
            raise FcnsegError(f"expected --static HxW with positive sizes, got {static_hw}; try --static 520x520")
        if verify_shapes is None:
            verify_shapes = [(1, *static_hw)]
        elif any(tuple(s) != (1, *static_hw) for s in verify_shapes):
            raise FcnsegError(f"expected verify shapes equal to the static shape 1x{static_hw[0]}x{static_hw[1]}, "
                              f"got {list(verify_shapes)}; try leaving out --verify-shapes")
    shapes = [tuple(int(v) for v in s) for s in (verify_shapes or DEFAULT_VERIFY_SHAPES)]
    for n, h, w in shapes:  # type: ignore[misc]
        if n < 1 or (static_hw is None and not (min_size <= h <= max_size and min_size <= w <= max_size)):
            raise FcnsegError(f"expected verify shapes NxHxW with N >= 1 and H, W in {min_size}..{max_size}, "
                              f"got {n}x{h}x{w}; try --verify-shapes 1x97x131,2x375x500")
    return shapes  # type: ignore[return-value]


def _producer(opset: int) -> Dict[str, Any]:
    import torch

    return {"exporter": "torch.onnx (TorchScript)", "torch": torch.__version__, "onnx": onnx.__version__,
            "opset": opset}


# --- PyTorch side -----------------------------------------------------------------------------------------

def export_wrapper(model: "torch.nn.Module", *, argmax: bool = False) -> "torch.nn.Module":
    """Wrap a segmentation model so it returns only the main logits, or their uint8 argmax.

    The model's aux head, if any, is removed in place (FCN skips a None ``aux_classifier``).
    """
    import torch

    class _Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.argmax = argmax

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.model(x)["out"]
            if self.argmax:
                # ArgMax + Cast in the graph: uint8 is the same engine output type on TensorRT 8.x and 10+.
                return out.argmax(dim=1).to(torch.uint8)
            return out

    if getattr(model, "aux_classifier", None) is not None:
        # nothing of it is then traced, run during verification or stored in the file
        model.aux_classifier = None  # type: ignore[assignment]
    return _Wrapper()


def torch_to_onnx(wrapper: "torch.nn.Module", *, opset: int = DEFAULT_OPSET,
                  static_hw: Optional[Tuple[int, int]] = None) -> onnx.ModelProto:
    """Trace ``wrapper`` with the TorchScript exporter; batch/height/width dynamic unless ``static_hw``."""
    import torch

    h, w = static_hw or (97, 131)
    dummy = torch.zeros(1, 3, h, w)
    out_name = MASK_NAME if getattr(wrapper, "argmax", False) else LOGITS_NAME
    dims = {0: "batch", 2: "height", 3: "width"}
    out_dims = {0: "batch", 1: "height", 2: "width"} if out_name == MASK_NAME else dims
    axes = None if static_hw else {INPUT_NAME: dims, out_name: out_dims}
    with tempfile.TemporaryDirectory(prefix="fcnseg-export-") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # the exporter's deprecation and tracer warnings are not the user's
        kwargs: Dict[str, Any] = {"dynamo": False} if _has_dynamo_flag() else {}
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(wrapper, (dummy,), path, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[out_name], dynamic_axes=axes, do_constant_folding=True, **kwargs)
        return onnx.load(path)


def _has_dynamo_flag() -> bool:
    import inspect

    import torch

    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def verify_against_torch(model: onnx.ModelProto, wrapper: "torch.nn.Module", shapes: Sequence[Shape], *,
                         atol: float = 1e-3, min_agreement: float = 0.999) -> List[OutputComparison]:
    """Run PyTorch and ONNX Runtime (CPU) on the same random inputs and compare the logits.

    For argmax graphs the logits feeding ArgMax are exposed for the comparison, and the mask is checked to
    be their exact uint8 argmax.

    Raises:
        FcnsegError: when any shape's max abs error or argmax agreement is out of tolerance.
    """
    import torch

    session = ort_session(expose_argmax_input(model))
    inner = getattr(wrapper, "model", wrapper)
    results = []
    for n, h, w in shapes:
        x = np.random.default_rng([n, h, w]).standard_normal((n, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = inner(torch.from_numpy(x))["out"].numpy()
        outputs = run_session(session, x)
        cmp = compare_logits(ref, outputs[LOGITS_NAME], atol=atol, min_agreement=min_agreement)
        _check_mask(outputs, cmp)
        log.info("onnxruntime vs pytorch %s", cmp)
        results.append(cmp)
        if not cmp:
            raise FcnsegError(f"expected ONNX Runtime to match PyTorch, got {cmp}; nothing written; "
                              f"try --opset {DEFAULT_OPSET}, or --no-verify to inspect the graph")
    return results


def _check_mask(outputs: Dict[str, np.ndarray], cmp: OutputComparison) -> None:
    if MASK_NAME not in outputs:
        return
    mask, logits = outputs[MASK_NAME], outputs[LOGITS_NAME]
    if mask.dtype != np.uint8 or mask.shape != logits.shape[:1] + logits.shape[2:]:
        raise FcnsegError(f"expected a uint8 mask of shape {logits.shape[:1] + logits.shape[2:]}, got "
                          f"{mask.dtype} {mask.shape}")
    if not np.array_equal(mask, logits.argmax(1).astype(np.uint8)):
        raise FcnsegError(f"expected the mask to be the argmax of the logits, got a mismatch ({cmp})")


# --- ONNX helpers shared by fp16, int8, check and the CLI -----------------------------------------------
