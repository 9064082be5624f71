"""fcnseg's torch-free runtime: ``Segmenter`` runs an exported model with numpy (and pillow) alone.

ONNX Runtime, OpenVINO and TensorRT are imported only when a model of their kind is loaded. The names below are
the runtime's public API: the other stages (export, eval, benchmarks, serving) import the runtime through them
and through ``fcnseg.runtime.backends`` / ``fcnseg.runtime.video`` only.

Example:
    >>> from fcnseg.runtime import Segmenter, overlay
    >>> seg = Segmenter.load("fcn_resnet50.onnx")
    >>> mask = seg(image)                      # HxW uint8 class ids, at the image's size
    >>> picture = overlay(image, mask)
"""

from ..core.errors import FcnsegError
from ..core.metadata import ModelMetadata
from ..core.metrics import ConfusionMatrix
from .postprocess import colorize, legend, open_image, overlay, overlay_with_legend, save_image
from .preprocess import preprocess, resize_mask
from .rebuild import engine_for_gpu
from .segmenter import Segmenter, choose_backend, load_backend
from .tiling import Tiling, tile_count

__all__ = ["Segmenter", "colorize", "overlay", "overlay_with_legend", "legend", "open_image", "save_image",
           "preprocess", "resize_mask", "load_backend", "choose_backend", "Tiling", "tile_count", "FcnsegError",
           "ModelMetadata", "ConfusionMatrix", "engine_for_gpu"]
