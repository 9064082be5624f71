"""Calibration for INT8: which images calibrate and which measure, the reader that feeds them, the ranges.

Images are preprocessed exactly as at inference (``fcnseg.runtime.preprocess.preprocess``) and fed one at a
time, so their sizes may differ. Ranges (tensor -> (min, max)) are computed with ONNX Runtime's calibrators
and kept in a JSON cache keyed by model, method and images, so a second quantization skips calibration.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import onnx

from ..core.data_source import SourceLike
from ..core.errors import FcnsegError
from ..core.metadata import ModelMetadata
from ..runtime import open_image, preprocess
from ..datasets import PairDataset, for_model
from .onnx_graph import PathLike
from .qdq_placement import PLACED_OPS

try:  # the base class gives ORT's reader protocol (get_next, iteration); fall back to a plain object
    from onnxruntime.quantization import CalibrationDataReader
except ImportError:  # pragma: no cover - onnxruntime is a dependency
    CalibrationDataReader = object  # type: ignore[assignment,misc]

log = logging.getLogger("fcnseg.export")

METHODS = {"entropy": "Entropy", "minmax": "MinMax", "percentile": "Percentile"}
Ranges = Dict[str, Tuple[float, float]]


class VOCCalibrationReader(CalibrationDataReader):  # type: ignore[misc,valid-type]
    """ONNX Runtime calibration reader over a VOC split, preprocessed exactly as at inference.

    Args:
        layout: the images to read (a split, or the calibration part of one: ``split_layouts``).
        metadata: the model's ``ModelMetadata`` (input size, mean, std, class count).
        num_images: at most this many images, in list order.
        input_name: the graph's input name.
        progress: show a tqdm bar.
    """

    def __init__(self, layout: PairDataset, metadata: ModelMetadata, *, num_images: int = 500,
                 input_name: str = "input", progress: bool = True) -> None:
        from tqdm import tqdm

        self.layout = layout
        self.metadata = metadata
        self.input_name = input_name
        self.count = min(num_images, len(self.layout))
        self._next = 0
        self._bar = tqdm(total=self.count, desc=f"calibrating on {layout.split}", unit="img", disable=not progress)

    def __len__(self) -> int:
        return self.count

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._next >= self.count:
            self._bar.close()
            return None
        image = _read_rgb(self.layout.image_path(self._next))   # labels are not needed to calibrate
        m = self.metadata
        x = preprocess(image, size=m.input_size, mean=m.mean, std=m.std)
        self._next += 1
        self._bar.update(1)
        return {self.input_name: x}


def _read_rgb(path: Path) -> np.ndarray:
    """A calibration image through the project's one reader (stored pixels, as the dataset's labels are)."""
    if not Path(path).is_file():
        raise FcnsegError(f"expected the calibration image {path}, which does not exist (listed in the split file)")
    return np.asarray(open_image(path, exif=False).convert("RGB"))


class _OneShot(CalibrationDataReader):  # type: ignore[misc,valid-type]
    """A reader of one feed: calibrating image by image lets every image keep its own size."""

    def __init__(self, feed: Dict[str, np.ndarray]) -> None:
        self.feed: Optional[Dict[str, np.ndarray]] = feed

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        feed, self.feed = self.feed, None
        return feed

def split_layouts(root: SourceLike, calib_split: str, eval_split: str, num_images: int, eval_images: Optional[int],
                  num_classes: int) -> Tuple[PairDataset, PairDataset]:
    """(calibration images, evaluation images) as layouts, each split read once: never the same image in both.

    With one split for both, its ids are shuffled with a fixed seed (the same list gives the same parts);
    calibration takes ``num_images`` of them, but at most half, and evaluation the rest (the first
    ``eval_images`` of the rest when given). With two splits, any id of the evaluation split that is also
    in the calibration part is left out of the evaluation.
    """
    calib_layout = for_model(root, calib_split, num_classes)
    eval_layout = for_model(root, eval_split, num_classes) if eval_split != calib_split else calib_layout
    calib, evaluation = calib_layout.ids, eval_layout.ids if eval_layout is not calib_layout else None
    if evaluation is None:
        order = [calib[i] for i in np.random.RandomState(0).permutation(len(calib))]
        n = min(num_images, len(calib) // 2)
        if n < 1:
            raise FcnsegError(f"expected at least 2 images in split {calib_split!r} to calibrate on one part and "
                              f"evaluate on the other, got {len(calib)}; try --eval-split with another split")
        if n < num_images:
            log.warning("warning: calibrating on %d of the %d %s images (not %d) so that the other %d measure "
                        "the INT8 accuracy", n, len(calib), calib_split, num_images, len(calib) - n)
        calib_part, rest = sorted(order[:n]), sorted(order[n:])
    else:
        calib_part = calib[:num_images]
        seen = set(calib_part)
        rest = [i for i in evaluation if i not in seen]
    if not rest:
        raise FcnsegError(f"expected evaluation images in split {eval_split!r} apart from the calibration images, "
                          "got none; try another --eval-split or fewer --num-images")
    return calib_layout.subset(calib_part), eval_layout.subset(rest[:eval_images] if eval_images else rest)

def calibrate(model: onnx.ModelProto, reader: VOCCalibrationReader, method: str = "entropy", *,
              op_types: Sequence[str] = PLACED_OPS) -> Ranges:
    """Collect activation ranges of the tensors around ``op_types`` nodes, image by image.

    Returns:
        tensor name -> (min, max) as the calibrator computed them (entropy/percentile: the clipped range).
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="fcnseg-calib-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path))
        calibrator = create_calibrator(path, list(op_types), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, METHODS[method]),
                                       extra_options={"symmetric": True} if method == "percentile" else {})
        seen = 0
        for feed in iter(reader.get_next, None):
            # the histogram calibrators print a line per call; the progress bar says enough
            with contextlib.redirect_stdout(io.StringIO()):
                calibrator.collect_data(_OneShot(feed))
            seen += 1
        if not seen:
            raise FcnsegError(f"expected calibration images in split {reader.layout.split!r}, got none; "
                              "try --calib-split with a non-empty list or --num-images >= 1")
        with contextlib.redirect_stdout(io.StringIO()):
            data = calibrator.compute_data()
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.items()}


def cached_ranges(cache: Optional[PathLike], key: Dict[str, Any]) -> Tuple[Optional[Ranges], bool, int]:
    """(ranges, calibrated, images) from a matching cache; (None, True, 0) when calibration must run."""
    if cache is None or not Path(cache).is_file():
        return None, True, 0
    try:
        doc = json.loads(Path(cache).read_text())
        ranges = {k: (float(v[0]), float(v[1])) for k, v in doc["ranges"].items()}
        stale = [k for k in key if doc.get(k) != key[k]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        log.warning("warning: calibration cache %s is unreadable (%s); recalibrating", cache, type(e).__name__)
        return None, True, 0
    if stale:
        log.warning("warning: calibration cache %s was made for another %s; recalibrating",
                    cache, ", ".join(k.replace("_", " ") for k in stale))
        return None, True, 0
    log.info("calibration ranges of %d tensors from cache %s", len(ranges), cache)
    return ranges, False, int(doc.get("images", key["num_images"]))
