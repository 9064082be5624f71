"""OpenVINO backend: an ``.onnx`` model compiled for the CPU, shared safely between threads.

The model is read once; what a segmentation call does around it is folded into the compiled graph:

- preprocessing: uint8 NHWC images go in, OpenVINO converts, normalises (the model's mean/std) and
  transposes them inside the graph (``PrePostProcessor``), so the runtime only resizes;
- argmax: a graph that ends in logits gets a TopK(1) + Convert(u8) ``mask`` output, so the 21-channel
  full-resolution logits never leave the graph (a second variant keeps them for ``logits=True``).

A float32 NCHW batch still works (the plain graph, as ``Backend`` promises). Each variant is compiled
with dynamic N/H/W once; an input shape seen on two calls in a row gets its own static compilation
(kept for the ``static_shapes`` most recent shapes), which OpenVINO runs faster than the dynamic one.
Compiled models are shared; each thread gets its own infer request per compiled model.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...core.backend_names import PARITY_PRECISION_HINT, PRECISION_HINTS
from ...core.errors import FcnsegError, one_line
from ...core.metadata import ModelMetadata, metadata_from_props
from ...core.onnx_names import GraphOutput, output_names
from .base import INPUT_CHANNELS, BaseBackend

STATIC_SHAPES = 4                  # static compilations kept per variant (0: always the dynamic one)
INSTALL_HINT = "pip install openvino (or fcnseg[openvino])"


def import_openvino() -> Any:
    """Import ``openvino`` or say how to install it."""
    try:
        import openvino
    except (ImportError, OSError) as e:
        raise FcnsegError(f"expected the openvino package to run .onnx models with OpenVINO, got "
                          f"{type(e).__name__}: {one_line(e, 300)}; try `{INSTALL_HINT}` or backend='onnxruntime'") \
            from None
    return openvino


def openvino_available() -> bool:
    """True when ``openvino`` imports (the Segmenter then prefers it on a CPU)."""
    try:
        import_openvino()
    except FcnsegError:
        return False
    return True


def device_precision_hint(device: str = "CPU", core: Any = None) -> str:
    """The hint fcnseg uses when none is given on ``device`` (``default_precision_hint`` of OpenVINO's own);
    ``core``: an ``openvino.Core`` to ask (default: a new one)."""
    core = core if core is not None else import_openvino().Core()
    return default_precision_hint(core.get_property(device, "INFERENCE_PRECISION_HINT").get_type_name())


def read_onnx(path: str) -> Any:
    """Read an ``.onnx`` with OpenVINO's ONNX frontend (not every frontend in turn, as ``Core.read_model`` does)."""
    from openvino.frontend import FrontEndManager

    try:
        frontend = FrontEndManager().load_by_framework("onnx")
        return frontend.convert(frontend.load(str(path)))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses for unreadable graphs
        raise FcnsegError(f"could not load {str(path)!r} with OpenVINO ({ov_message(e)}); "
                          "expected a valid .onnx model, e.g. written by fcn-export") from None


def ov_message(error: BaseException) -> str:
    """The informative line of an OpenVINO error (its first lines name the C++ source files that raised it)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
    return (useful or lines or [type(error).__name__])[0][:300]


class _Compiled:
    """One compiled model and its per-thread infer requests (dropped together when evicted)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._local = threading.local()

    def request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req


class OpenVinoBackend(BaseBackend):
    """Runs an exported ``.onnx`` model with OpenVINO on the CPU.

    Args:
        model_path: the ``.onnx`` file; its ``fcnseg.*`` ``metadata_props`` become ``metadata``.
        num_threads: ``INFERENCE_NUM_THREADS``; None lets OpenVINO use every physical core.
        precision_hint: ``INFERENCE_PRECISION_HINT`` for the layers not in INT8: "f32" or "bf16" (faster on
            CPUs with AVX-512 BF16 / AMX, not bit-exact); None: OpenVINO's own default for the device, bf16 where
            the CPU has it, else f32 (see ``default_precision_hint``). "f32" gives exact parity.
        static_shapes: how many input shapes get a static compilation (0: only the dynamic one).
        device: OpenVINO device name.

    ``infer`` takes uint8 NHWC images (normalised in the graph; what ``Segmenter`` sends, see
    ``accepts_uint8``) or a float32 NCHW batch, and returns ``{"mask": (N, h, w) uint8}`` (or
    ``{"logits": ...}`` when ``outputs=("logits",)`` is asked).
    """

    name = "openvino"
    thread_safe = True
    accepts_uint8 = True        # Segmenter may send resized uint8 NHWC images instead of normalised floats
    selects_outputs = True      # infer(batch, outputs=("logits",)) returns logits instead of the mask

    def __init__(self, model_path: Union[str, "os.PathLike[str]"], *, num_threads: Optional[int] = None,
                 precision_hint: Optional[str] = None, static_shapes: int = STATIC_SHAPES,
                 device: str = "CPU") -> None:
        super().__init__()
        ov = import_openvino()
        self._ov = ov
        self.path = str(model_path)
        self.num_threads = num_threads
        self.device = device
        self.static_shapes = int(static_shapes)
        self._core = ov.Core()
        self._model = read_onnx(self.path)
        self.metadata = _read_metadata(self._model, self.path)
        self.precision_hint = _check_hint(precision_hint) if precision_hint else device_precision_hint(device,
                                                                                                      self._core)
        self.outputs = _output_names(self._model, self.path)
        self.metadata.argmax = "logits" not in self.outputs
        dims = self._model.inputs[0].get_partial_shape()
        # NCHW with ints where the graph fixes a dimension (a static export), None where it is dynamic
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in dims)
        self.max_batch = self.input_shape[0] if self.input_shape and self.input_shape[0] else None
        self._dynamic_input = not dims.is_static
        self._lock = threading.Lock()
        self._variants: Dict[Tuple[str, str], Any] = {}
        self._dynamic: Dict[Tuple[str, str], _Compiled] = {}
        self._static: "OrderedDict[tuple, _Compiled]" = OrderedDict()
        self._last_shape: Dict[Tuple[str, str], tuple] = {}
        if self._dynamic_input:
            self._compiled(("u8", "mask"), None)   # compile now: errors at load, not at the first call

    @property
    def static_shapes_compiled(self) -> List[tuple]:
        """Input shapes that have their own static compilation now (least recently used first)."""
        with self._lock:
            return [key[2] for key in self._static]

    def infer(self, batch: np.ndarray, *, outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        """Run uint8 NHWC images or a float32 NCHW batch; return ``{"mask": uint8}``, or logits when asked.

        Args:
            batch: (N, H, W, 3) uint8 RGB (normalised in the graph) or (N, 3, H, W) float32, normalised.
            outputs: ``("logits",)`` for the class scores; default the (in-graph) argmax mask.
        """
        want = "logits" if outputs and "logits" in outputs else "mask"
        if want == "logits" and "logits" not in self.outputs:
            raise FcnsegError(f"expected a model with a 'logits' output, got {sorted(self.outputs)} in "
                              f"{self.path!r}; try a model exported without --argmax")
        self._local.want = want
        return super().infer(batch)

    def _check_input(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC RGB images pass as they are; anything else gets the base NCHW float check."""
        x = np.asarray(batch)
        if x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == INPUT_CHANNELS and x.shape[0] >= 1:
            return np.ascontiguousarray(x)
        return super()._check_input(x)

    def _infer(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        key = ("u8" if x.dtype == np.uint8 else "f32", getattr(self._local, "want", "mask"))
        req = self._compiled(key, x.shape).request()
        t0 = time.perf_counter()
        try:
            req.infer({0: x})
        except Exception as e:  # shape errors from the plugin
            raise FcnsegError(f"OpenVINO could not run {self.path!r} on an input of shape {tuple(x.shape)} "
                              f"({ov_message(e)}); try another image size (fcn-predict/fcn-eval --size, "
                              "fcn-bench --shape)") from None
        self._set_timing(infer=time.perf_counter() - t0)   # the CPU plugin needs no host/device copies
        # Copy out of the request's buffers: the next call on this thread reuses them.
        return {key[1]: np.array(req.get_output_tensor(0).data)}

    def _compiled(self, key: Tuple[str, str], shape: Optional[tuple]) -> _Compiled:
        """The dynamic compilation of a variant, or the static one for a shape used twice in a row."""
        with self._lock:
            if shape is not None and self.static_shapes > 0:
                skey = key + (shape,)
                if skey in self._static:
                    self._static.move_to_end(skey)
                    return self._static[skey]
                repeated = self._last_shape.get(key) == shape
                self._last_shape[key] = shape
                if repeated or not self._dynamic_input:
                    self._static[skey] = self._compile(key, shape)
                    while len(self._static) > self.static_shapes * 2:   # two variants may be in use
                        self._static.popitem(last=False)
                    return self._static[skey]
            if key not in self._dynamic:
                self._dynamic[key] = self._compile(key, None)
            return self._dynamic[key]

    def _compile(self, key: Tuple[str, str], shape: Optional[tuple]) -> _Compiled:
        if key not in self._variants:
            self._variants[key] = self._variant(*key)
        model = self._variants[key]
        if shape is not None:
            model = model.clone()
            model.reshape({model.inputs[0]: self._ov.PartialShape(list(shape))})
        try:
            return _Compiled(self._core.compile_model(model, self.device, self._config()))
        except Exception as e:
            raise FcnsegError(f"OpenVINO could not compile {self.path!r} for {self.device}"
                              f"{' at input shape ' + str(tuple(shape)) if shape else ''} ({ov_message(e)}); "
                              "expected a graph from fcn-export; try backend='onnxruntime'") from None

    def _config(self) -> Dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hint

        ov = self._ov
        cfg: Dict[str, Any] = {hint.performance_mode: hint.PerformanceMode.LATENCY,
                               hint.inference_precision: ov.Type.bf16 if self.precision_hint == "bf16"
                               else ov.Type.f32}
        if self.num_threads:
            cfg[props.inference_num_threads] = int(self.num_threads)
        return cfg

    def _variant(self, kind: str, output: str) -> Any:
        """The read model with one output (mask or logits) and, for kind "u8", preprocessing in the graph."""
        ov = self._ov
        model = self._model.clone()
        results = {name: r for r in model.get_results() for name in r.input_value(0).get_names()
                   if name in self.outputs.values()}
        names = {v: k for k, v in self.outputs.items()}
        by_key = {names[n]: r for n, r in results.items()}
        if output in by_key:
            keep = by_key[output]
        else:   # a logits graph: append the argmax
            keep = _argmax_result(by_key["logits"].input_value(0))
        model = ov.Model([keep], model.get_parameters(), "fcnseg")
        return _fold_preprocessing(model, self.metadata) if kind == "u8" else model

    def _close(self) -> None:
        """Drop the compiled models and their requests."""
        with self._lock:
            self._static.clear()
            self._dynamic.clear()
            self._variants.clear()


def _argmax_result(logits: Any) -> Any:
    """Result node of uint8 argmax over the channel axis of ``logits`` (N, C, H, W) -> (N, H, W)."""
    import openvino.opset13 as ops

    top = ops.topk(logits, ops.constant(np.int64(1)), axis=1, mode="max", sort="none", index_element_type="i32")
    mask = ops.convert(ops.squeeze(top.output(1), ops.constant(np.array([1], np.int64))), "u8")
    mask.output(0).set_names({"mask"})
    return ops.result(mask)


def _fold_preprocessing(model: Any, meta: ModelMetadata) -> Any:
    """uint8 NHWC RGB in; convert, normalise with the model's mean/std and transpose inside the graph."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    # (x / 255 - mean) / std == (x - 255 mean) / (255 std)
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([255.0 * m for m in meta.mean]).scale([255.0 * s for s in meta.std])
    return ppp.build()


def _check_hint(hint: str) -> str:
    value = hint.lower()
    if value not in PRECISION_HINTS:
        raise FcnsegError(f"expected a precision hint in {', '.join(PRECISION_HINTS)}, got {hint!r}; "
                          f"try --precision-hint {PARITY_PRECISION_HINT}")
    return value


def default_precision_hint(device_default: str) -> str:
    """The hint when none is given: the device's own, as OpenVINO itself picks it (bf16 on CPUs with AVX-512 BF16
    or AMX, else f32), for every graph; f32 where the device names another type (f16 on a GPU).

    bf16 was measured within the FP16 parity tolerance on FP32, FP16 and INT8 graphs (docs/cpu.md) and runs FP32
    graphs about 1.7x faster there; ``precision_hint="f32"`` (``--precision-hint f32``) keeps exact parity.
    """
    return device_default if device_default in PRECISION_HINTS else PARITY_PRECISION_HINT


def _read_metadata(model: Any, path: str) -> ModelMetadata:
    """ONNX ``metadata_props`` as OpenVINO keeps them (rt_info "framework"), read like ONNX Runtime's."""
    props: Dict[str, str] = {}
    if model.has_rt_info(["framework"]):
        props = {str(k): str(v) for k, v in model.get_rt_info(["framework"]).value.items()}
    shape = model.outputs[0].get_partial_shape()
    channels = shape[1].get_length() if shape.rank.is_static and len(shape) == 4 and shape[1].is_static else None
    return metadata_from_props(props, path, channels)


def _output_names(model: Any, path: str) -> Dict[str, str]:
    """Map "logits"/"mask" to OpenVINO's output names (``output_names``)."""
    return output_names([_graph_output(o) for o in model.outputs], path)


def _graph_output(output: Any) -> GraphOutput:
    shape = output.get_partial_shape()
    rank = shape.rank.get_length() if shape.rank.is_static else None
    return GraphOutput((output.get_any_name(),) + tuple(sorted(output.get_names())), rank, str(shape))
