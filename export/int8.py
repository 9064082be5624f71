"""FP32 ONNX -> INT8 Q/DQ ONNX that TensorRT builds as an explicitly quantized engine.

Quantizer: ``onnxruntime.quantization`` (its calibrators and ``QDQQuantizer``, the engine behind
``quantize_static``). It is already a dependency, runs on the CPU, and with the settings below writes Q/DQ
that TensorRT accepts: QDQ format, int8 weights and activations, symmetric (zero point 0), per-channel
weights (Conv axis 0, ConvTranspose axis 1), per-tensor activations, float bias (``QuantizeBias=False``),
weights stored as int8 initializers feeding DequantizeLinear (``AddQDQPairToWeight=False``, as ModelOpt writes
them: a quarter of the float weights' size). NVIDIA ModelOpt places Q/DQ the TensorRT way too, but it pins old
onnx/onnxruntime-gpu and pulls torch, so it is not used here.

Placement (``fcnseg.export.qdq_placement``, NVIDIA's recommendations): the inputs and weights of Conv and
ConvTranspose, the residual input of each Add TensorRT fuses into a Conv (never its main input), MaxPool between
quantized layers; no layer's output (``OpTypesToExcludeOutputQuantization``).

Precision elsewhere (``Int8Options.high_precision``): for TensorRT 10+/11 and RTX, whose strongly typed builders
take every layer's precision from the graph, the graph is lowered to FP16 with FP16 Q/DQ scales at opset 19
(``fcnseg.export.fp16.qdq_to_fp16``): INT8 with FP16 elsewhere, as NVIDIA builds INT8 engines. For TensorRT 8.5/8.6
(JetPack 5 / 6.0: opset <= 17) it stays FP32 and the weakly typed builder mixes INT8 with FP16 by its flags. One
artifact serves the CPU too: OpenVINO runs its Q/DQ convolutions in INT8 either way.

Shape inference: ``onnx.shape_inference`` on the onnxslim-simplified export, which is all ORT's
``quant_pre_process`` would add here (its optimization step finds nothing left to fold).

Calibration (``fcnseg.export.calibration``) runs once per (model, method, images): ranges (tensor -> (min, max))
go to a JSON cache and the quantizer is fed from them (``quantize_static`` would always recalibrate), which also
lets the accuracy fallback re-quantize without recalibrating.

Accuracy: mIoU of INT8 vs FP32 on images that did not calibrate (ONNX Runtime CPU, FP32 elsewhere). When the drop
exceeds the budget, what each quantized layer costs is measured on those same images (mIoU with that layer alone
reverted to float, minus mIoU with every layer in INT8), and the costliest layers are reverted, one at a time in
that order, until the drop is within budget: the fewest layers, each reported with its cost. Layers that are float
by design (the sub-pixel upsampling Conv) are never ranked and are reported as such. Past ``MEASURED_LAYERS``
candidates a cheap proxy (output error with one layer quantized alone) picks which to measure. The FP16 lowering
is then checked against the chosen graph on the same images.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..core.class_map import ClassMap
from ..core.atomic import file_sha256, work_dir, write_text
from ..core.errors import FcnsegError
from ..core.metadata import PREFIX, ModelMetadata
from ..core.metrics import ConfusionMatrix
from ..core.onnx_names import TRT8_MAX_OPSET
from ..eval.parity import MiouComparison, compare_miou, evaluate
from ..runtime import Segmenter, preprocess
from ..datasets import PairDataset, take
from .calibration import METHODS, Ranges, VOCCalibrationReader, cached_ranges, calibrate, split_layouts
from .check import check_trt_ready
from .fp16 import qdq_to_fp16, verify_qdq_fp16
from .options import Int8Options, with_fields
from .qdq_placement import PLACED_OPS, WEIGHTED_OPS, ResidualAdd, choose_nodes, drop_main_input_qdq
from .subpixel import subpixel_upsampling
from .onnx_graph import (PathLike, load_onnx, ort_session, output_kind, read_metadata, require_fp32_graph,
                         run_session, save_onnx, set_metadata, static_input_shape)

log = logging.getLogger("fcnseg.export")

TRT_EXTRA_OPTIONS: Dict[str, Any] = {
    "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "AddQDQPairToWeight": False,
    "DedicatedQDQPair": False, "ForceQuantizeNoInputCheck": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
    # Outputs stay float: a Conv's feeds the Add TensorRT fuses into it, an Add's the Relu whose output the next
    # Conv quantizes (a MaxPool's output shares its input's scale: ONNX Runtime's Direct8BitOp)
    "OpTypesToExcludeOutputQuantization": ["Conv", "ConvTranspose", "Add"],
}
# ONNX Runtime's CPU kernels (QLinearConv with the ReLU folded in, QLinearAdd) need the other layout: every
# supported op quantized, outputs too, uint8 activations with a zero point (so ReLU's range starts at it).
# On ONNX Runtime that layout is several times faster than the TensorRT layout, which it runs as float
# convolutions plus weight dequantization (figures: docs/cpu.md). It is not TensorRT-ready (asymmetric
# activations, Q/DQ between Conv and Add), and the checker says so.
CPU_EXTRA_OPTIONS: Dict[str, Any] = {
    "ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False, "AddQDQPairToWeight": False,
    "DedicatedQDQPair": False, "ForceQuantizeNoInputCheck": True,
    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
}


@dataclass(frozen=True)
class QuantTarget:
    """Where an INT8 graph will run, and the Q/DQ layout that runs fast and correctly there.

    Attributes:
        name: "tensorrt" (explicit quantization for TensorRT 8.5-11) or "cpu" (ONNX Runtime CPU kernels).
        op_types: op types to quantize; empty means every type ONNX Runtime's QDQ quantizer supports.
        activation_type: "QInt8" or "QUInt8".
        extra_options: ONNX Runtime quantizer options.
        trt_ready: the result must pass ``check_trt_ready``.
        subpixel: rewrite large-stride upsampling ConvTranspose as Conv + DepthToSpace first and keep that Conv
            in float (``fcnseg.export.subpixel``: faster on OpenVINO's CPU plugin, same outputs).
        placement: NVIDIA's placement (``fcnseg.export.qdq_placement``): the weighted layers are chosen (and
            ranked, and kept in float), the Adds and MaxPools follow them.
    """

    name: str
    op_types: Tuple[str, ...]
    activation_type: str
    extra_options: Dict[str, Any]
    trt_ready: bool
    subpixel: bool = False
    placement: bool = False

    def quantized_op_types(self) -> List[str]:
        if self.op_types:
            return list(self.op_types)
        from onnxruntime.quantization.registry import QDQRegistry

        return list(QDQRegistry)

    def ranked_op_types(self) -> List[str]:
        """The op types whose nodes are ranked by sensitivity and may be kept in float one by one."""
        return list(WEIGHTED_OPS) if self.placement else self.quantized_op_types()


TARGETS = {
    "tensorrt": QuantTarget("tensorrt", PLACED_OPS, "QInt8", TRT_EXTRA_OPTIONS, True, subpixel=True, placement=True),
    "cpu": QuantTarget("cpu", (), "QUInt8", CPU_EXTRA_OPTIONS, False),
}
CACHE_FORMAT = "fcnseg-calibration-v2"   # v2: ranges of Add and MaxPool tensors too
HIGH_PRECISIONS = ("fp16", "fp32")
TRT_VERSIONS = ("8.5", "8.6", "10", "11", "rtx")   # examples; any MAJOR[.MINOR] works
MEASURED_LAYERS = 32   # at most this many layers get a measured mIoU cost; past it a cheap proxy picks them


@dataclass(frozen=True)
class RevertedLayer:
    """A layer the fallback put back in float to meet ``max_drop``.

    Attributes:
        node: its ONNX node name.
        cost: the mIoU points quantizing it costs on the evaluation images: mIoU with it alone in float minus mIoU
            with every layer in INT8 (for a layer past ``MEASURED_LAYERS``: what reverting it added to the layers
            reverted before it).
    """

    node: str
    cost: float

    def to_dict(self) -> Dict[str, Any]:
        return {"node": self.node, "cost_points": round(self.cost, 4)}


@dataclass
class Int8Result:
    """What ``quantize_int8`` wrote and how INT8 compares with FP32.

    Attributes:
        path: the INT8 Q/DQ ONNX file.
        cache_path: the calibration cache (None when not cached).
        miou_fp32 / miou_int8: mIoU (0..1) on the evaluation split, ONNX Runtime CPU (INT8 with FP32 elsewhere;
            an FP16-elsewhere graph is checked against that one on the same images, ``verify_qdq_fp16``).
        comparison: the full ``MiouComparison`` (per-class deltas in points).
        excluded: the node names of ``reverted``.
        high_precision: what the other layers run in ("fp16": FP16-typed graph, opset 19; "fp32").
        calibrated: False when the ranges came from the cache.
        num_calib_images: images calibration used (or the cache was made with).
        method: calibration method.
        seconds: wall time.
        calibration_ids / evaluation_ids: the images that calibrated and those that measured.
        reverted: layers reverted to float to meet ``max_drop``, costliest first, each with its measured cost.
        float_by_design: layers never quantized whatever the budget (the sub-pixel upsampling Conv).
    """

    path: Path
    cache_path: Optional[Path]
    miou_fp32: float
    miou_int8: float
    comparison: MiouComparison
    excluded: List[str] = field(default_factory=list)
    high_precision: str = "fp32"
    calibrated: bool = True
    num_calib_images: int = 0
    method: str = "entropy"
    seconds: float = 0.0
    calibration_ids: List[str] = field(default_factory=list)
    evaluation_ids: List[str] = field(default_factory=list)
    reverted: List[RevertedLayer] = field(default_factory=list)
    float_by_design: List[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """FP32 minus INT8 mIoU, in points."""
        return -self.comparison.delta

    @property
    def class_deltas(self) -> Dict[str, float]:
        """INT8 minus FP32 IoU per class, in points."""
        names = self.comparison.classes or [str(i) for i in range(len(self.comparison.class_delta))]
        return {n: float(d) for n, d in zip(names, self.comparison.class_delta)}


def quantize_int8(model_path: PathLike, output: Optional[PathLike] = None, options: Optional[Int8Options] = None,
                  **fields: Any) -> Int8Result:
    """Calibrate, quantize to TensorRT-ready Q/DQ, measure the mIoU drop, keep sensitive layers in float, and
    (``high_precision`` fp16, the default for TensorRT 10+/RTX) lower the rest to FP16 at opset 19.

    Args:
        model_path: FP32 ONNX with dynamic height/width (from ``export_onnx``).
        output: destination; default ``<model>_int8.onnx`` next to the input.
        options: calibration, evaluation and fallback settings (``Int8Options``; its ``calib_root`` is required).
        fields: ``Int8Options`` fields replacing those of ``options`` (``calib_root=..., num_images=...``).

    Raises:
        FcnsegError: bad arguments, unreadable or unsuitable model, empty or broken calibration data;
            nothing is written then.
    """
    o = with_fields(options, Int8Options, fields)
    o = replace(o, calib_root=o.require_root(model_path),
                method=_check_args(o.method, o.num_images, o.max_drop, o.eval_images))
    if o.target not in TARGETS:
        raise FcnsegError(f"expected an INT8 target in {', '.join(TARGETS)}, got {o.target!r}")
    o = replace(o, high_precision=high_precision(o))
    src = Path(model_path)
    out = Path(output) if output is not None else src.with_name(src.stem + "_int8.onnx")
    # Calibration graphs and ONNX Runtime's quantizer files go to a scratch folder beside the output, which the
    # next run there removes if this one is killed (the system's temporary folder would keep them).
    with work_dir(out, redirect_tempfile=True), _library_warnings_summarised() as notes:
        result = _quantize(src, out, o)
    if notes:
        log.info("note: onnxruntime's quantizer warned %d times (first: %s)", len(notes), notes[0])
    return result


@contextlib.contextmanager
def _library_warnings_summarised() -> Iterator[List[str]]:
    """Collect what libraries log on the root logger meanwhile (ONNX Runtime's quantizer writes one
    ``WARNING:root:Expected bias ...`` line per layer of a torchvision export) instead of printing each."""
    notes: List[str] = []

    def collect(record: logging.LogRecord) -> bool:
        notes.append(record.getMessage().splitlines()[0][:120])
        return False

    # A filter on the root logger sees exactly the records logged on it (``logging.warning``), not fcnseg's own.
    # ``logging.warning`` on a root logger without handlers also calls ``basicConfig``: the handler it adds is
    # removed again, or every later fcnseg warning of the process would print a second time as "WARNING:...".
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.addFilter(collect)
    try:
        yield notes
    finally:
        root.removeFilter(collect)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def _quantize(src: Path, out: Path, o: Int8Options) -> Int8Result:
    """``quantize_int8`` once its options are checked: calibrate, quantize within budget, write ``out``."""
    t0 = time.perf_counter()
    method, target = o.method, o.target
    tgt = TARGETS[target]
    model = load_onnx(src)
    meta, _ = read_metadata(model, str(src))
    if o.calib_classes:   # the dataset's class file names the model's classes (e.g. a graph without metadata)
        meta = meta.with_classes(ClassMap.read(o.calib_classes))
    set_metadata(model, meta)   # every graph made from it (candidates, the result) carries what was read
    _check_quantizable(model, meta, src, trt8=is_trt8(o.trt_version))
    subpixel = subpixel_upsampling(model) if tgt.subpixel else []
    base = onnx.shape_inference.infer_shapes(model)
    calib_set, eval_set = split_layouts(o.source(), o.calib_split, o.eval_split, o.num_images, o.eval_images,
                                        meta.num_classes)
    calib_ids, eval_ids = calib_set.ids, eval_set.ids
    key = {"format": CACHE_FORMAT, "model_sha256": file_sha256(src),
           "method": method, "num_images": o.num_images, "calib_split": o.calib_split, "target": target,
           "calib_ids_sha256": hashlib.sha256("\n".join(calib_ids).encode()).hexdigest()}
    ranges, calibrated, used = cached_ranges(o.cache, key)
    if ranges is None:
        reader = VOCCalibrationReader(calib_set, meta, num_images=o.num_images,
                                      input_name=model.graph.input[0].name, progress=o.progress)
        ranges, used = calibrate(base, reader, method, op_types=tgt.quantized_op_types()), len(reader)
        if o.cache is not None:
            write_text(o.cache, json.dumps({**key, "images": used, "ranges": ranges}, indent=1))
    evaluator = _Evaluator(eval_set, None, meta, o.progress)
    quantized, cmp, reverted, _ = _quantize_within_budget(base, ranges, evaluator, o.max_drop, o.sensitivity_images,
                                                          tgt, keep_float=subpixel)
    excluded = [r.node for r in reverted]
    high = high_precision(o)
    if high == "fp16":   # checked on the images that measured the mIoU (only the tensorrt target takes fp16)
        quantized = fp16_elsewhere(quantized, evaluator.inputs(o.sensitivity_images))
    elif tgt.trt_ready:
        _check_ready(quantized)
    meta.precision = "int8"
    set_metadata(quantized, meta, {PREFIX + "int8": {
        "target": target, "method": method, "calib_split": o.calib_split, "num_images": used, "eval_split": o.eval_split,
        "num_eval_images": len(eval_ids), "miou_fp32": cmp.ref_miou, "miou_int8": cmp.test_miou,
        "excluded": excluded, "reverted": [r.to_dict() for r in reverted], "subpixel_upsampling": subpixel,
        "high_precision": high, "trt_version": o.trt_version}})
    save_onnx(quantized, out)
    seconds = time.perf_counter() - t0
    log.info("wrote %s (int8 Q/DQ, %s elsewhere, %d layers reverted to float for accuracy, %d float by design) in "
             "%.1f s", out, high, len(excluded), len(subpixel), seconds)
    result = Int8Result(out, Path(o.cache) if o.cache is not None else None, cmp.ref_miou, cmp.test_miou, cmp,
                        excluded, high, calibrated, used, method, seconds, calib_ids, eval_ids, reverted, subpixel)
    if o.report is not None:
        write_text(o.report, json.dumps(int8_report(result, o.calib_split, o.eval_split, target), indent=1))
    return result


def int8_report(result: Int8Result, calib_split: str, eval_split: str, target: str) -> Dict[str, Any]:
    """The ``--report`` JSON: which images calibrated and which measured, both mIoUs, the layers reverted to float
    (``reverted``: node and measured cost in mIoU points; ``kept_in_float``: their names) and those float by design."""
    return {"model": str(result.path), "target": target, "method": result.method,
            "calib_split": calib_split, "eval_split": eval_split,
            "calibration_ids": list(result.calibration_ids), "evaluation_ids": list(result.evaluation_ids),
            "calibrated": result.calibrated, "miou_fp32": result.miou_fp32, "miou_int8": result.miou_int8,
            "drop_points": result.drop, "kept_in_float": list(result.excluded),
            "reverted": [r.to_dict() for r in result.reverted], "float_by_design": list(result.float_by_design),
            "high_precision": result.high_precision}


def _check_args(method: str, num_images: int, max_drop: float, eval_images: Optional[int]) -> str:
    m = method.lower()
    if m not in METHODS:
        raise FcnsegError(f"expected a calibration method in {', '.join(METHODS)}, got {method!r}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise FcnsegError(f"expected --num-images >= 1, got {num_images!r}; try 500")
    if not max_drop >= 0:
        raise FcnsegError(f"expected --max-drop >= 0 mIoU points, got {max_drop!r}; try 1.0")
    if eval_images is not None and eval_images < 1:
        raise FcnsegError(f"expected --eval-images >= 1 (or all), got {eval_images!r}")
    return m


def high_precision(o: Int8Options) -> str:
    """What the layers left out of INT8 run in: ``o.high_precision``, or fp16 for TensorRT 10+/RTX and fp32 for
    TensorRT 8.x and the cpu target.

    Raises:
        FcnsegError: an unknown value, or fp16 where the graph cannot carry it (8.x, cpu target).
    """
    trt8 = is_trt8(o.trt_version)
    chosen = (o.high_precision or ("fp32" if trt8 or o.target == "cpu" else "fp16")).lower()
    if chosen not in HIGH_PRECISIONS:
        raise FcnsegError(f"expected --high-precision fp16 or fp32, got {o.high_precision!r}; try fp16")
    if chosen == "fp16" and trt8:
        raise FcnsegError(f"expected --high-precision fp32 for TensorRT {o.trt_version} (it parses opset <= 17, where "
                          "Q/DQ scales are FP32, and mixes INT8 with FP16 by its --fp16 flag), got fp16; try "
                          "--high-precision fp32, or --trt-version 10")
    if chosen == "fp16" and o.target == "cpu":
        raise FcnsegError("expected --high-precision fp32 with --target cpu (ONNX Runtime's INT8 kernels), got fp16; "
                          "try --target tensorrt, whose graph OpenVINO runs in INT8 too")
    return chosen


def is_trt8(version: Optional[str]) -> bool:
    """Whether ``--trt-version`` names a TensorRT before 10 (weakly typed, opset <= 17); None and "rtx" do not.

    Raises:
        FcnsegError: not MAJOR[.MINOR] or rtx.
    """
    if version is None or str(version).lower() == "rtx":
        return False
    major = str(version).split(".")[0]
    if not major.isdigit():
        raise FcnsegError(f"expected --trt-version like {', '.join(TRT_VERSIONS)}, got {version!r}; try 10")
    return int(major) < 10


def for_builder(options: Int8Options, trt_module: Any, also_for: Optional[str] = None) -> Int8Options:
    """``options`` for an INT8 graph that ``trt_module`` builds (``fcn-export trt --int8``): the opset-17 graph
    with FP32 elsewhere when that TensorRT is weakly typed (8.x: its INT8 + FP16 flags mix the precisions) or
    ``also_for`` names an 8.x that must parse it too; as they are when ``options.trt_version`` is set."""
    from .trt_features import detect_features

    if options.trt_version is not None:
        return options
    if also_for is not None and is_trt8(also_for):
        return replace(options, trt_version=also_for, high_precision="fp32")
    features = detect_features(trt_module)
    if features.strongly_typed:
        return options
    version = features.version if features.version[:1].isdigit() else "8"   # no STRONGLY_TYPED flag: before 9.0
    return replace(options, trt_version=version, high_precision="fp32")


def _check_quantizable(model: onnx.ModelProto, meta: ModelMetadata, path: Path, *, trt8: bool = False) -> None:
    require_fp32_graph(model, meta, path, fp16_hint="try quantizing the FP32 export (TensorRT mixes INT8 and FP16 "
                       "by itself)")
    if static_input_shape(model) is not None:
        raise FcnsegError(f"expected dynamic height/width to calibrate on images of any size, got the static "
                          f"input {static_input_shape(model)} in {str(path)!r}; try exporting without --static")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise FcnsegError(f"expected opset >= 13 for per-channel Q/DQ, got {opset}; try `fcn-export onnx --opset 17`")
    if trt8 and opset > TRT8_MAX_OPSET:
        raise FcnsegError(f"expected opset <= {TRT8_MAX_OPSET} for TensorRT 8.x, got {opset} in {str(path)!r}; try "
                          "`fcn-export onnx --trt8`")


# --- quantization -----------------------------------------------------------------------------------------

def quantize_qdq(model: onnx.ModelProto, ranges: Ranges, *, exclude: Sequence[str] = (),
                 only: Sequence[str] = (), target: QuantTarget = TARGETS["tensorrt"]) -> onnx.ModelProto:
    """Insert Q/DQ in ``target``'s layout (TensorRT-ready by default) into a shape-inferred FP32 graph.

    Args:
        model: FP32 graph with value_info (``onnx.shape_inference.infer_shapes``); not modified.
        ranges: tensor -> (min, max), from ``calibrate`` or the cache.
        exclude: Conv/ConvTranspose node names to keep in float.
        only: when given, quantize only these nodes.
        target: the Q/DQ layout (``TARGETS``).
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    data = TensorsData(CalibrationMethod.MinMax, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                                  for k, (lo, hi) in ranges.items()})
    adds: List[ResidualAdd] = []
    if target.placement:
        only, exclude, adds = _placed(model, only, exclude, target.quantized_op_types(), ranges)
    # positional: the keyword names changed across onnxruntime releases, the order did not
    quantizer = QDQQuantizer(copy.deepcopy(model), True, False, QuantType.QInt8,
                             getattr(QuantType, target.activation_type), data, list(only), list(exclude),
                             target.quantized_op_types(), copy.deepcopy(target.extra_options))
    quantizer.quantize_model()
    quantizer.model.topological_sort()   # as quantize_static does before saving; Q/DQ are appended unsorted
    quantized = quantizer.model.model
    drop_main_input_qdq(quantized, adds)
    return quantized


def _placed(model: onnx.ModelProto, only: Sequence[str], exclude: Sequence[str], op_types: Sequence[str],
            ranges: Ranges) -> Tuple[List[str], List[str], List[ResidualAdd]]:
    """(only, exclude) for ONNX Runtime's quantizer under NVIDIA's placement, and the residual Adds: the weighted
    layers asked for, the Adds and MaxPools that go with them (those with calibrated inputs), every other node of
    ``op_types`` excluded."""
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and (not only or n.name in only)
                and n.name not in exclude]
    keep, adds = choose_nodes(model, weighted)
    uncalibrated = {n.name for n in model.graph.node if n.name in keep and n.op_type not in WEIGHTED_OPS
                    and any(name not in ranges for name in n.input)}
    keep, adds = keep - uncalibrated, [a for a in adds if a.node not in uncalibrated]
    # an empty nodes_to_quantize means "all" to ONNX Runtime: exclude the rest instead
    return [], [n.name for n in model.graph.node if n.op_type in op_types and n.name not in keep], adds


def fp16_elsewhere(fp32_elsewhere: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> onnx.ModelProto:
    """A TensorRT Q/DQ graph with FP32 elsewhere lowered to FP16 elsewhere (``qdq_to_fp16``: opset 19), checked
    against its source on ``inputs`` and for TensorRT; a broken lowering is refused (FcnsegError), nothing written.
    ``fcn-export int8``'s default and the Jetson bundle's second INT8 graph."""
    fp16 = qdq_to_fp16(fp32_elsewhere)
    verify_qdq_fp16(fp32_elsewhere, fp16, inputs)
    _check_ready(fp16)
    return fp16


def model_inputs(layout: PairDataset, meta: ModelMetadata, count: int) -> List[np.ndarray]:
    """The first ``count`` images of ``layout``, preprocessed as the model's metadata says (NCHW float32)."""
    return [preprocess(img, size=meta.input_size, mean=meta.mean, std=meta.std) for img, _ in take(layout, count)]


def _check_ready(model: onnx.ModelProto) -> None:
    report = check_trt_ready(model)
    if not report:
        raise FcnsegError(f"expected a TensorRT-ready Q/DQ graph, got:\n{report}\n"
                          "try another onnxruntime version (its quantizer placed these Q/DQ)")


class _Evaluator:
    """mIoU of candidate graphs on the evaluation split, and their outputs on a few of its images."""

    def __init__(self, layout: PairDataset, limit: Optional[int], meta: ModelMetadata, progress: bool) -> None:
        self.layout = layout
        self.limit, self.meta, self.progress = limit, meta, progress

    def confusion(self, model: onnx.ModelProto, desc: str) -> ConfusionMatrix:
        from tqdm import tqdm

        predict = _predictor(model, self.meta)
        n = len(self.layout) if self.limit is None else min(self.limit, len(self.layout))
        bar = (lambda it: tqdm(it, total=n, desc=desc, unit="img", leave=False)) if self.progress else None
        return evaluate(predict, take(self.layout, self.limit), self.meta.num_classes, progress=bar)

    def inputs(self, count: int) -> List[np.ndarray]:
        return model_inputs(self.layout, self.meta, count)


def _predictor(model: onnx.ModelProto, meta: ModelMetadata) -> Any:
    """image -> mask at the image's size: the runtime's ``Segmenter`` on ONNX Runtime CPU."""
    with tempfile.TemporaryDirectory(prefix="fcnseg-eval-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        onnx.save_model(model, str(path))
        return Segmenter.load(path, providers=["cpu"], size=meta.input_size)


class Fallback(NamedTuple):
    """What ``_quantize_within_budget`` chose: the graph, its comparison with FP32, the layers reverted to float
    (costliest first) and the measured cost of every layer ranked (empty when none was needed)."""

    model: onnx.ModelProto
    comparison: MiouComparison
    reverted: List[RevertedLayer]
    costs: Dict[str, float]


def _quantize_within_budget(base: onnx.ModelProto, ranges: Ranges, ev: _Evaluator, max_drop: float,
                            sensitivity_images: int, target: QuantTarget = TARGETS["tensorrt"],
                            keep_float: Sequence[str] = ()) -> Fallback:
    """Quantize every layer but ``keep_float`` (float by design); if the mIoU drop is over budget, measure what
    each quantized layer costs (``measure_costs``) and revert the costliest to float, one at a time, until it is
    within budget."""
    ref = ev.confusion(base, "fp32 mIoU")
    if keep_float:
        log.info("float by design: %s", ", ".join(keep_float))

    def attempt(exclude: Sequence[str], level: int = logging.INFO) -> Tuple[onnx.ModelProto, MiouComparison]:
        q = quantize_qdq(base, ranges, exclude=[*keep_float, *exclude], target=target)
        cmp = compare_miou(ref, ev.confusion(q, f"int8 mIoU ({len(exclude)} reverted)"), tolerance=max_drop,
                           classes=ev.meta.classes)
        log.log(level, "int8 with %d layers reverted to float (latest: %s): mIoU %.2f vs fp32 %.2f (%+.2f points)",
                len(exclude), exclude[-1] if exclude else "none", cmp.test_miou * 100, cmp.ref_miou * 100, cmp.delta)
        return q, cmp

    q, cmp = attempt([])
    if -cmp.delta <= max_drop:
        _log_classes(cmp)
        return Fallback(q, cmp, [], {})
    layers = [n.name for n in base.graph.node if n.op_type in target.ranked_op_types() and n.name not in keep_float]
    if len(layers) > MEASURED_LAYERS:   # e.g. the cpu target's every op: a cheap proxy picks the suspects
        layers = rank_sensitivity(base, ranges, ev.inputs(sensitivity_images), target=target, keep_float=keep_float)
    measured = layers[:MEASURED_LAYERS]
    # each layer's measurement at DEBUG: the sensitivity bar shows the loop, "costliest layers" its outcome
    costs = measure_costs(lambda node: attempt([node], logging.DEBUG)[1], measured, cmp.test_miou,
                          getattr(ev, "progress", False))
    order = sorted(measured, key=lambda k: -costs[k]) + layers[len(measured):]
    reverted: List[RevertedLayer] = []
    for node in order:
        before = cmp.test_miou
        q, cmp = attempt([*(r.node for r in reverted), node])
        reverted.append(RevertedLayer(node, costs.get(node, (cmp.test_miou - before) * 100)))
        if -cmp.delta <= max_drop:
            break
    log.info("reverted to float to stay within %.2f mIoU points: %s", max_drop,
             ", ".join(f"{r.node} ({r.cost:+.2f})" for r in reverted))
    if len(reverted) == len(layers):
        log.warning("warning: every quantizable layer had to stay in float; the graph has no INT8 layers left")
    _log_classes(cmp)
    return Fallback(q, cmp, reverted, costs)


def measure_costs(miou_with_float: Callable[[str], MiouComparison], layers: Sequence[str], int8_miou: float,
                  progress: bool = False) -> Dict[str, float]:
    """Node name -> mIoU points it costs in INT8: the mIoU with it alone reverted to float (``miou_with_float``,
    measured on the evaluation images) minus ``int8_miou`` (every layer in INT8)."""
    from tqdm import tqdm

    costs = {}
    for node in tqdm(layers, desc="int8 sensitivity", unit="layer", disable=None if progress else True):
        costs[node] = (miou_with_float(node).test_miou - int8_miou) * 100
    top = sorted(costs, key=lambda k: -costs[k])[:5]
    log.info("costliest layers in int8 (mIoU points): %s", ", ".join(f"{k} ({costs[k]:+.2f})" for k in top))
    return costs


def rank_sensitivity(base: onnx.ModelProto, ranges: Ranges, inputs: Sequence[np.ndarray], *,
                     target: QuantTarget = TARGETS["tensorrt"], keep_float: Sequence[str] = ()) -> List[str]:
    """Quantizable node names but ``keep_float``, most suspicious first, by a cheap proxy for their mIoU cost: each
    quantized alone, its output error vs FP32 on ``inputs``."""
    ref_sess = ort_session(base)
    key = output_kind(base)
    refs = [run_session(ref_sess, x)[key] for x in inputs]
    errors = {}
    op_types = set(target.ranked_op_types())
    for node in (n.name for n in base.graph.node if n.op_type in op_types and n.name not in keep_float):
        sess = ort_session(quantize_qdq(base, ranges, only=[node], target=target))
        outs = [run_session(sess, x)[key] for x in inputs]
        # logits: mean abs error; masks: fraction of changed labels
        errors[node] = float(np.mean([np.mean(np.abs(o.astype(np.float32) - r)) if key == "logits"
                                      else np.mean(o != r) for o, r in zip(outs, refs)]))
    order = sorted(errors, key=lambda k: -errors[k])
    log.info("most suspicious layers by output error: %s", ", ".join(f"{k} ({errors[k]:.3g})" for k in order[:5]))
    return order


def _log_classes(cmp: MiouComparison) -> None:
    worst = ", ".join(f"{name} {d:+.2f}" for name, d in cmp.worst_classes(3))
    log.info("int8 vs fp32: mIoU %.2f -> %.2f (%+.2f points); largest class changes: %s",
             cmp.ref_miou * 100, cmp.test_miou * 100, cmp.delta, worst)
    names = cmp.classes or [str(i) for i in range(len(cmp.class_delta))]
    log.info("per-class IoU change (points): %s",
             ", ".join(f"{n} {d:+.2f}" for n, d in zip(names, np.nan_to_num(cmp.class_delta))))
