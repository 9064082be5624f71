"""The export chain's option objects, in the manner of Polygraphy's ``CreateConfig``: each default in one place.

``Int8Options`` says how an FP32 graph is calibrated and quantized (``quantize_int8``), ``EngineOptions`` how an
engine is built (``build_engine``). The CLI, the device bundle and the benchmarks' pipeline fill them and hand
them to ``fcnseg.export.chain``; nothing else restates a default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

from ..core.data_source import DataSource
from ..core.errors import FcnsegError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Int8Options:
    """How ``quantize_int8`` calibrates and checks an INT8 graph.

    Attributes:
        calib_root: the dataset folder to calibrate and evaluate on (any layout ``fcnseg.datasets`` reads).
        calib_layout / calib_classes: its layout (None: detected) and class file (None: the layout's own); the
            class file also names the model's classes in the INT8 graph's metadata.
        calib_split: split to calibrate on (``val`` is NVIDIA's advice for calibration).
        num_images: calibration images (NVIDIA suggests about 500).
        method: "entropy", "minmax" or "percentile".
        cache: calibration cache JSON; reused when it matches the model, method and images.
        eval_split / eval_images: split (and at most how many of its images) for the mIoU comparison; never
            an image calibration used.
        max_drop: accepted mIoU drop in points; beyond it, the layers of highest measured mIoU cost (each reverted
            alone, on the evaluation images) go back to float, the fewest that meet it.
        sensitivity_images: images for the cheap output-error ranking (graphs of more than ``MEASURED_LAYERS``
            quantized layers) and for the FP16-elsewhere check.
        target: "tensorrt" (symmetric Q/DQ on Conv inputs, TensorRT-ready; OpenVINO runs it as INT8 too) or
            "cpu" (ONNX Runtime's uint8 layout).
        trt_version: the TensorRT that will build the graph: "10", "11", "rtx" (opset 19, strongly typed
            builders) or "8.5"/"8.6" (opset 17, JetPack 5 / 6.0); None: 10 and later.
        high_precision: what the layers left out of INT8 run in: "fp16" (an FP16-typed graph whose Q/DQ scales
            are FP16, opset 19) or "fp32"; None: fp16 for TensorRT 10+ and RTX, fp32 for 8.x (whose weakly
            typed builder mixes INT8 with FP16 by its own flags) and for the cpu target.
        progress: show progress bars.
        report: write a JSON report (``int8_report``) here.
    """

    calib_root: Optional[Path] = None
    calib_layout: Optional[str] = None
    calib_classes: Optional[str] = None
    calib_split: str = "val"
    num_images: int = 500
    method: str = "entropy"
    cache: Optional[Path] = None
    eval_split: str = "val"
    eval_images: Optional[int] = None
    max_drop: float = 1.0
    sensitivity_images: int = 4
    target: str = "tensorrt"
    trt_version: Optional[str] = None
    high_precision: Optional[str] = None
    progress: bool = True
    report: Optional[Path] = None

    def require_root(self, model: PathLike) -> Path:
        """The calibration root, or a one-line error naming the graph that needs it."""
        if self.calib_root is None:
            raise FcnsegError(f"expected --calib-data ROOT to quantize the FP32 graph {str(model)!r} to INT8, got "
                              "none; try --calib-data with a dataset folder, or pass an INT8 graph from `fcn-export int8`")
        return Path(self.calib_root)

    def source(self) -> DataSource:
        """The calibration dataset as ``fcnseg.datasets.open_dataset`` takes it."""
        return DataSource(str(self.calib_root), self.calib_layout, self.calib_classes)


@dataclass(frozen=True)
class EngineOptions:
    """How ``build_engine`` builds a TensorRT engine from an ONNX graph.

    Attributes:
        precision: "fp32", "fp16" or "int8"; None = the graph's own. "fp16" from an FP32 graph uses the FP16
            builder flag (8.x/10.x only); "int8" needs a Q/DQ graph.
        library: "tensorrt", "tensorrt_rtx" (TensorRT for RTX, builds on a CPU) or "auto" (tensorrt when
            importable, else tensorrt_rtx).
        compute_capabilities: GPU targets like ("8.6", "8.9", "12.0") (TensorRT for RTX; default its portable
            set). TensorRT builds for the GPU it runs on.
        dla_core: build for this DLA core (Jetson AGX/NX); the engine must be FP16 or INT8.
        gpu_fallback: with ``dla_core``, run layers DLA cannot on the GPU.
        min_shape / opt_shape / max_shape: NCHW optimization profile (defaults 1x3x256x256, 1x3x520x520,
            1x3x1024x1024, fitted to the ONNX's fixed dims and declared size range).
        workspace_gib: workspace memory pool limit.
        timing_cache: file to load the timing cache from (if present) and save it to (atomically); not used
            with TensorRT for RTX (its timing cache needs a GPU).
        strongly_typed: None = strongly typed when the graph is FP16/Q-DQ typed or the library has only that.
        source_onnx: the ONNX to name in the sidecar when the parsed graph is an intermediate file.
    """

    precision: Optional[str] = None
    library: str = "auto"
    compute_capabilities: Optional[Tuple[str, ...]] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    min_shape: Optional[Sequence[int]] = None
    opt_shape: Optional[Sequence[int]] = None
    max_shape: Optional[Sequence[int]] = None
    workspace_gib: float = 4.0
    timing_cache: Optional[Path] = None
    strongly_typed: Optional[bool] = None
    source_onnx: Optional[Path] = None

    @property
    def explicit_profile(self) -> bool:
        """All three profile shapes were given (a DLA build keeps them instead of fixing the profile at opt)."""
        return None not in (self.min_shape, self.opt_shape, self.max_shape)


def with_fields(options: Any, cls: type, fields: dict) -> Any:
    """``options`` (or the defaults of ``cls``) with ``fields`` replaced; an unknown field is a ``TypeError``
    naming it, as a misspelt keyword argument would be."""
    base = options if options is not None else cls()
    if not fields:
        return base
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unexpected option(s) {', '.join(unknown)} for {cls.__name__}; expected some of "
                        f"{', '.join(sorted(known))}")
    return dataclasses.replace(base, **fields)
