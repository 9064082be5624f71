"""``Segmenter``: image in, class mask out, on any backend, with numpy (and pillow) alone.

The backend is chosen by file suffix and imported only then: ``.onnx`` -> OpenVINO when it is installed
(the fastest CPU engine) else ONNX Runtime, ``.plan`` / ``.engine`` -> TensorRT, ``.pth`` -> PyTorch (the
training reference); ``backend=`` overrides the choice. Preprocessing is
``fcnseg.runtime.preprocess.preprocess`` (torchvision's segmentation eval preset); masks are resized
back to each image's original size with nearest-neighbour resizing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .backends.base import Backend
from ..core.backend_names import BACKEND_NAMES  # noqa: F401 (re-exported)
from ..core.class_map import ClassMap
from ..core.errors import FcnsegError
from ..core.output_guard import check_readable
from ..core.metadata import ModelMetadata
from .preprocess import pil_to_array, preprocess, resize_mask, resize_rgb, to_rgb_uint8
from .rebuild import engine_for_gpu
from .tiling import Tiling, check_mode, slide
from ..core.sidecar import EngineSidecar
from .backends.openvino import OpenVinoBackend, openvino_available
from .backends.onnxruntime import OnnxRuntimeBackend

PathLike = Union[str, "os.PathLike[str]"]
SUFFIXES = {".onnx": "ONNX Runtime", ".plan": "TensorRT", ".engine": "TensorRT", ".pth": "PyTorch",
            ".pt": "PyTorch"}
# Backends that can open each kind of file, the automatic choice's candidates in order of preference.
BACKENDS = {".onnx": ("openvino", "onnxruntime"), ".plan": ("tensorrt",), ".engine": ("tensorrt",),
            ".pth": ("pytorch",), ".pt": ("pytorch",)}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TIMING_KEYS = ("preprocess", "h2d", "infer", "d2h", "postprocess")
SLIDE_BATCH = 2   # tiles per call when the backend sets none: on a CPU larger batches cost memory, not time
BACKEND_ENTRY_POINTS = "fcnseg.backends"   # backends outside the runtime: the PyTorch reference (fcnseg.train)


class Segmenter:
    """Semantic segmentation with an exported model; safe to share between threads.

    Args:
        backend: an object following ``fcnseg.runtime.backends.base.Backend``.
        size: shorter side images are resized to before inference; None uses ``metadata.input_size``,
            0 disables resizing (the network then sees the original size).
        mode: "resize" (the image at ``size``), "whole" (at its own size, within the model's declared range)
            or "slide" (at its own size in overlapping ``tile`` x ``tile`` tiles every ``stride`` pixels,
            blended; ``fcnseg.runtime.tiling``), for large images whose detail resizing would lose.
        tile / stride: the sliding window (``mode="slide"``).
        classes: a class file (JSON, YAML, labelmap.txt, one name per line) whose names and colours replace the
            model's in ``metadata`` (legends, overlays, stats); it must have the model's class count.

    Backends that declare ``thread_safe = True`` (OpenVINO, ONNX Runtime) run concurrently; others (TensorRT,
    PyTorch) are called under a lock. ``last_timing`` is kept per thread. A backend that declares
    ``accepts_uint8`` (OpenVINO) gets the resized uint8 images and normalises them inside its graph.

    Example:
        >>> seg = Segmenter.load("fcn.onnx")
        >>> mask = seg(image)            # HxW uint8 class ids at the image's size
    """

    def __init__(self, backend: Backend, *, size: Optional[int] = None, mode: str = "resize",
                 tile: int = Tiling.tile, stride: int = Tiling.stride, classes: Optional[PathLike] = None) -> None:
        self.backend = backend
        meta = getattr(backend, "metadata", None)
        self.metadata: ModelMetadata = meta if meta is not None else ModelMetadata()
        if classes is not None:   # the user's names and colours over the model's own (or its generic ones)
            self.metadata = self.metadata.with_classes(ClassMap.read(classes))
        self.mode = check_mode(mode)
        self.size = None if mode != "resize" else _resolve_size(size, self.metadata.input_size)
        self.input_hw = _static_hw(self.metadata, backend)   # a static graph: every image resized to this
        _check_size_range(self.size, self.metadata, self.input_hw)
        self.tiling = _tiling(mode, tile, stride, self.metadata, self.input_hw)
        self._lock: Optional[threading.Lock] = None if getattr(backend, "thread_safe", False) else threading.Lock()
        self._local = threading.local()
        # A backend that normalises inside its graph (OpenVINO) takes the resized uint8 images as they are.
        self._uint8_input = bool(getattr(backend, "accepts_uint8", False))
        self._selects_outputs = bool(getattr(backend, "selects_outputs", False))

    @classmethod
    def load(cls, path: PathLike, *, backend: Optional[str] = None, providers: Optional[Sequence[str]] = None,
             num_threads: Optional[int] = None, precision_hint: Optional[str] = None, rebuild: str = "never",
             onnx: Optional[PathLike] = None, **options: Any) -> "Segmenter":
        """Open a model file with the fastest backend available for it (or the one named).

        Args:
            path: ``.onnx``, ``.plan``/``.engine`` (metadata from the sidecar ``<plan>.json``) or ``.pth``.
            backend: "openvino", "onnxruntime", "tensorrt" or "pytorch"; None picks by suffix: an ``.onnx``
                runs on OpenVINO when it is installed, unless ONNX Runtime has a GPU provider or
                ``providers`` are given (then ONNX Runtime).
            providers: ONNX Runtime execution providers (full names or cpu/cuda/tensorrt); default
                TensorRT/CUDA when available, else CPU. Only for ``.onnx``.
            rebuild: for an engine that does not fit this GPU or TensorRT version: "never" (a one-line error) or
                "auto" (rebuilt once from its ONNX, cached by GPU and version: ``fcnseg.runtime.rebuild``).
            onnx: the ONNX to rebuild from (default: the one the engine's sidecar names, beside it).
            options: ``size``, ``mode``, ``tile``, ``stride``, ``classes``: see the class docstring.
            num_threads: CPU threads for OpenVINO, ONNX Runtime (intra-op) or PyTorch.
            precision_hint: OpenVINO's precision for the layers not in INT8: "f32" or "bf16" (faster where the
                CPU has BF16 instructions, within the FP16 parity tolerance); default OpenVINO's own for the
                device (bf16 where the CPU has it, else f32); "f32" for exact parity.
        """
        return cls(load_backend(path, backend=backend, providers=providers, num_threads=num_threads,
                                precision_hint=precision_hint, rebuild=rebuild, onnx=onnx), **options)

    def check_image_size(self, hw: Sequence[int]) -> None:
        """Refuse an image of this (H, W) before any work when it would be fed at its own size (``size=0``,
        ``mode="whole"``) outside the model's declared range; resized images and tiles always fit."""
        if self.size is None and self.input_hw is None and self.tiling is None:
            _check_native_size(tuple(hw), self.metadata, self.mode)

    @property
    def last_timing(self) -> Dict[str, float]:
        """Seconds per stage of this thread's last call: preprocess, h2d, infer, d2h, postprocess."""
        return dict(getattr(self._local, "timing", dict.fromkeys(TIMING_KEYS, 0.0)))

    def __call__(self, image: Any, *, logits: bool = False) -> Any:
        """Segment one image or a batch.

        Args:
            image: an HxWx3 uint8 RGB array (HxW grayscale, RGBA, uint16 and float [0, 1] are converted by
                ``to_rgb_uint8``'s rule), an NxHxWxC array, or a list of images of any sizes.
            logits: return the raw class scores instead of a mask: a (C, h, w) float32 array at the
                network's resolution (the resized input's size, or less for a network that downsamples),
                not resized back. Needs a model with a ``logits`` output.

        Returns:
            An HxW uint8 mask at the image's original size; for a list, a list of those; for an
            NxHxWxC array, an NxHxW array. With ``logits=True``, (C, h, w) arrays in the same containers.
        """
        images, kind = _as_images(image)
        if not images:
            return []
        for im in images:
            self.check_image_size(im.shape[:2])
        results = self._slide(images, logits) if self.tiling is not None else self._whole_images(images, logits)
        if kind == "single":
            return results[0]
        return np.stack(results) if kind == "array" else results

    def _whole_images(self, images: List[np.ndarray], logits: bool) -> List[np.ndarray]:
        """Each image's mask (or scores) from one network input per image (``mode`` resize or whole)."""
        t0 = time.perf_counter()
        m = self.metadata
        if self._uint8_input:
            inputs = [resize_rgb(im, size=self.size, hw=self.input_hw)[None] for im in images]
        else:
            inputs = [preprocess(im, size=self.size, mean=m.mean, std=m.std, hw=self.input_hw) for im in images]
        t1 = time.perf_counter()
        outputs, key, timing = self._infer(inputs, logits)
        t2 = time.perf_counter()
        results = outputs if logits else [_to_mask(o, key, im.shape[:2]) for o, im in zip(outputs, images)]
        t3 = time.perf_counter()
        self._local.timing = {"preprocess": t1 - t0, **timing, "postprocess": t3 - t2}
        return results

    def _slide(self, images: List[np.ndarray], logits: bool) -> List[np.ndarray]:
        """Each image's mask from overlapping tiles at its own size (``mode="slide"``)."""
        if logits:
            raise FcnsegError("expected logits=True only with mode resize or whole, got mode slide (its scores "
                              "are blended tile by tile, never held at full size); try mode='whole'")
        timing = dict.fromkeys(TIMING_KEYS, 0.0)
        m = self.metadata
        scores = not m.argmax   # a graph ending in ArgMax gives class ids: tiles vote instead

        def run(tiles: List[np.ndarray]) -> np.ndarray:
            t0 = time.perf_counter()
            batch = np.stack([to_rgb_uint8(t) for t in tiles]) if self._uint8_input else \
                np.concatenate([preprocess(t, mean=m.mean, std=m.std) for t in tiles])
            timing["preprocess"] += time.perf_counter() - t0
            out, t = self._run_backend(batch, scores)
            for k in ("h2d", "infer", "d2h"):
                timing[k] += float(t.get(k, 0.0))
            return out["logits"] if scores and "logits" in out else out[_output_key(out, False)]

        masks = []
        for im in images:
            t0 = time.perf_counter()
            masks.append(slide(to_rgb_uint8(im), run, m.num_classes, self.tiling, votes=not scores,
                               batch=self.backend.max_batch or SLIDE_BATCH))
            timing["postprocess"] += time.perf_counter() - t0
        timing["postprocess"] -= sum(timing[k] for k in ("preprocess", "h2d", "infer", "d2h"))
        self._local.timing = timing
        return masks

    def _infer(self, inputs: List[np.ndarray], logits: bool) -> Tuple[List[np.ndarray], str, Dict[str, float]]:
        """Run inputs in batches of equal shape (sizes may differ); return outputs, their key, summed timings."""
        timing = dict.fromkeys(("h2d", "infer", "d2h"), 0.0)
        key = "logits"
        results: List[Any] = [None] * len(inputs)
        groups: Dict[tuple, List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        step = self.backend.max_batch or len(inputs)
        for idx in groups.values():
            for start in range(0, len(idx), step):
                chunk = idx[start:start + step]
                batch = inputs[chunk[0]] if len(chunk) == 1 else np.concatenate([inputs[i] for i in chunk])
                out, t = self._run_backend(batch, logits)
                key = _output_key(out, logits)
                for j, i in enumerate(chunk):
                    results[i] = out[key][j]
                for k in timing:
                    timing[k] += float(t.get(k, 0.0))
        return results, key, timing

    def _run_backend(self, batch: np.ndarray, logits: bool) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
        # Read last_timing under the same lock as infer, so another thread cannot overwrite it in between.
        guard: ContextManager[Any] = self._lock if self._lock is not None else contextlib.nullcontext()
        with guard:
            if logits and self._selects_outputs:   # the backend computes only what is asked for
                out = self.backend.infer(batch, outputs=("logits",))  # type: ignore[call-arg]
            else:
                out = self.backend.infer(batch)
            return out, dict(self.backend.last_timing)

    def close(self) -> None:
        """Release the backend (sessions, engines, device memory)."""
        self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.metadata
        return (f"Segmenter(backend={self.backend.name!r}, arch={m.arch!r}, classes={m.num_classes}, "
                f"size={self.size}, argmax={m.argmax})")


def load_backend(path: PathLike, *, backend: Optional[str] = None, providers: Optional[Sequence[str]] = None,
                 num_threads: Optional[int] = None, precision_hint: Optional[str] = None, rebuild: str = "never",
                 onnx: Optional[PathLike] = None) -> Backend:
    """Open ``path`` with ``backend``, or the fastest one available for its suffix (see ``Segmenter.load``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    _candidates(p)   # an unknown suffix is refused before the file is looked for
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise FcnsegError(f"expected num_threads >= 1 (or None: the library's default), got {num_threads!r}; "
                          "try --threads 2")
    if not p.is_file():
        raise FcnsegError(f"expected a model file ({', '.join(SUFFIXES)}), got {str(p)!r} which does not exist; "
                          "check the path")
    check_readable(p, "model file")   # "permission denied", not a backend's "not a valid model"
    if providers and suffix != ".onnx":
        raise FcnsegError(f"expected providers only with an .onnx model, got providers {list(providers)} for "
                          f"a {SUFFIXES[suffix]} model {p.name!r}; try leaving out --providers")
    name = choose_backend(p, backend, providers=providers)
    if precision_hint and name != "openvino":
        raise FcnsegError(f"expected a precision hint only with the openvino backend, got {precision_hint!r} for "
                          f"{name} on {p.name!r}; try backend='openvino' (pip install openvino) or no hint")
    if name == "openvino":
        return OpenVinoBackend(p, num_threads=num_threads, precision_hint=precision_hint)
    if name == "onnxruntime":
        return OnnxRuntimeBackend(p, providers=providers, num_threads=num_threads)
    if name == "tensorrt":   # rebuilt first when it does not fit this GPU or TensorRT and rebuild="auto"
        return _tensorrt_backend(p, rebuild=rebuild, onnx=onnx)
    return _plugin_backend(name, p)(p, num_threads=num_threads)


def choose_backend(path: PathLike, backend: Optional[str] = None, *,
                   providers: Optional[Sequence[str]] = None) -> str:
    """The backend that opens ``path``: ``backend`` when it can, else the fastest available one.

    An ``.onnx`` goes to OpenVINO when it imports, unless ONNX Runtime providers are named or ONNX Runtime
    has a GPU provider here; otherwise to ONNX Runtime.
    """
    p = Path(path)
    candidates = _candidates(p)
    if backend is not None:
        if backend not in candidates:
            raise FcnsegError(f"expected a backend in {', '.join(candidates)} for {p.name!r}, got "
                              f"{backend!r}; try leaving out --backend")
        if providers and backend != "onnxruntime":
            raise FcnsegError(f"expected providers only with backend onnxruntime, got {backend!r}; "
                              "try leaving out --providers")
        return backend
    if candidates[0] != "openvino" or providers or _onnxruntime_has_gpu():
        return candidates[-1]
    return "openvino" if openvino_available() else "onnxruntime"


def _candidates(path: Path) -> Tuple[str, ...]:
    """The backends that open ``path``'s kind of file; an unknown suffix is an ``FcnsegError``."""
    candidates = BACKENDS.get(path.suffix.lower())
    if not candidates:
        raise FcnsegError(f"expected a model file ending in one of {', '.join(SUFFIXES)}, got {str(path)!r}; "
                          "try the .onnx or .plan written by fcn-export")
    return candidates


def _onnxruntime_has_gpu() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return any(p in GPU_PROVIDERS for p in onnxruntime.get_available_providers())


def _plugin_backend(name: str, path: Path) -> Any:
    """A backend that lives outside the runtime, found through the ``fcnseg.backends`` entry points.

    The PyTorch reference (``fcnseg.train.backend``) needs torch and the training code, which the runtime wheel
    does not ship; the full ``fcnseg`` declares it in its pyproject.toml, so the runtime never imports training.
    """
    from importlib import metadata

    eps = metadata.entry_points()
    group = eps.select(group=BACKEND_ENTRY_POINTS) if hasattr(eps, "select") else eps.get(BACKEND_ENTRY_POINTS, ())
    for ep in group:
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as e:
                raise FcnsegError(f"expected torch and torchvision to run the checkpoint {path.name!r}, got an "
                                  f"import error ({e}); try `pip install torch torchvision`, or export the model "
                                  "to .onnx and run that") from None
    raise FcnsegError(f"expected fcnseg's training package to run the checkpoint {path.name!r}, got the runtime "
                      "alone; try `pip install fcnseg` (with torch), or `fcn-export onnx` it and run the .onnx")


def _tensorrt_backend(path: Path, *, rebuild: str, onnx: Optional[PathLike]) -> Backend:
    """The engine (or its rebuild for this GPU, ``engine_for_gpu``) on the TensorRT backend; the GPU is asked of
    the driver once for both."""
    try:
        from .backends.tensorrt import TensorRTBackend, probe_gpu
    except ImportError as e:
        raise FcnsegError(f"expected TensorRT and its CUDA bindings to run {path.name!r}, got an import error "
                          f"({e}); try `pip install tensorrt cuda-python` on a machine with an NVIDIA GPU, "
                          "or run the .onnx model with onnxruntime") from None
    gpu = probe_gpu()[0]
    plan = engine_for_gpu(path, rebuild=rebuild, onnx=onnx, gpu=gpu or {})
    sidecar = EngineSidecar.read(plan)   # the one sidecar reader; the backend imports the library it names
    metadata = sidecar.model_metadata() if sidecar is not None else None
    backend = TensorRTBackend(plan, metadata=metadata, gpu=gpu)   # no GPU: the backend asks again, to say why
    if metadata is None:
        # Warned only once the engine loaded, so a missing TensorRT is reported alone.
        warnings.warn(f"no model metadata in a sidecar {plan.name}.json next to {str(plan)!r}: using defaults "
                      "(VOC classes, ImageNet mean/std, size 520); export with fcn-export to record the model's own",
                      stacklevel=4)
    return backend


def _tiling(mode: str, tile: int, stride: int, meta: ModelMetadata,
            static_hw: Optional[Tuple[int, int]]) -> Optional[Tiling]:
    """The sliding window of ``mode="slide"`` (None otherwise), checked against the model."""
    if mode != "slide":
        return None
    if static_hw is not None and tuple(static_hw) != (tile, tile):
        raise FcnsegError(f"expected a model with dynamic height and width for mode slide, got a static "
                          f"{static_hw[0]}x{static_hw[1]} input; try --tile {static_hw[0]} with a square static "
                          "graph, or a graph exported without --static")
    return Tiling(tile, stride).check(meta.min_size or 1, meta.max_size)


def _resolve_size(size: Optional[int], default: Optional[int]) -> Optional[int]:
    if size is None:
        return default
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise FcnsegError(f"expected size to be a positive integer (0: no resizing), got {size!r}")
    return int(size) or None


def _static_hw(meta: ModelMetadata, backend: Any) -> Optional[Tuple[int, int]]:
    """(H, W) of a static-input graph: from the metadata, else from the backend's fixed input shape."""
    if meta.input_hw:
        return int(meta.input_hw[0]), int(meta.input_hw[1])
    shape = tuple(getattr(backend, "input_shape", ()) or ())
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def _check_size_range(size: Optional[int], meta: ModelMetadata, static_hw: Optional[Tuple[int, int]]) -> None:
    """Refuse a size outside the model's declared range before any image is resized to it (no OOM kill)."""
    if size is None or static_hw is not None:
        return
    low, high = meta.min_size or 1, meta.max_size
    if (high is not None and size > high) or size < low:
        fits = meta.input_size if meta.input_size and low <= meta.input_size <= (high or meta.input_size) else None
        raise FcnsegError(f"expected --size within the model's declared input range {low}..{high or 'any'} "
                          f"(fcnseg.min_size/max_size), got {size}; try --size {fits or (high or low)}")


def _check_native_size(hw: Tuple[int, ...], meta: ModelMetadata, mode: str) -> None:
    """Refuse an image fed at its own size (``size=0``, ``mode="whole"``) whose shorter side is outside the
    declared range: a 6000x4000 photo would otherwise take gigabytes and a minute on a model declared for
    64..2048."""
    low, high, short = meta.min_size or 1, meta.max_size, min(int(hw[0]), int(hw[1]))
    if short < low or (high is not None and short > high):
        how, hint = ("--mode whole", "--mode slide (tiles) or --mode resize") if mode == "whole" else \
            ("--size 0", f"--size {meta.input_size or high or low} (resize) or leave out --size")
        raise FcnsegError(f"expected images whose shorter side is within the model's declared input range "
                          f"{low}..{high or 'any'} when fed at their own size ({how}), got {hw[0]}x{hw[1]}; "
                          f"try {hint}")


def _as_array(image: Any) -> np.ndarray:
    """An image as an array; a PIL image of any mode goes through the file reader's rule (``pil_to_array``)."""
    return pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)


def _as_images(image: Any) -> Tuple[List[np.ndarray], str]:
    """Split the input into a list of image arrays; kind is "single", "list" or "array"."""
    if isinstance(image, (list, tuple)):
        return [_as_array(im) for im in image], "list"
    a = _as_array(image)
    if a.ndim == 4:
        if a.shape[0] == 0:
            raise FcnsegError(f"expected at least one image in the batch, got an array of shape {a.shape}")
        return list(a), "array"
    if a.ndim in (2, 3):
        return [a], "single"
    raise FcnsegError(f"expected an HxW or HxWxC image, an NxHxWxC batch or a list of images, got an array of "
                      f"shape {a.shape}; try np.asarray(PIL.Image.open(path).convert('RGB'))")


def _output_key(out: Dict[str, np.ndarray], logits: bool) -> str:
    """Which backend output to use: in-graph "mask" when present (unless logits are asked for), else "logits"."""
    if logits and "logits" not in out:
        raise FcnsegError(f"expected a model with a 'logits' output for logits=True, got outputs {sorted(out)} "
                          "(argmax in the graph); try a model exported without argmax")
    key = "mask" if not logits and "mask" in out else "logits"
    if key not in out:
        raise FcnsegError(f"expected the backend to return 'logits' or 'mask', got {sorted(out)}; "
                          "try re-exporting the model with fcn-export")
    return key


def _to_mask(output: np.ndarray, key: str, hw: Tuple[int, ...]) -> np.ndarray:
    """One image's network output -> HxW uint8 mask at the original size."""
    mask = output if key == "mask" else output.argmax(axis=0)
    return resize_mask(np.ascontiguousarray(mask, dtype=np.uint8), int(hw[0]), int(hw[1]))
