"""fcnseg's torch-free runtime: ``Segmenter`` runs an exported model with numpy (and pillow) alone.

ONNX Runtime, TensorRT and PyTorch are imported only when a model of their kind is loaded.

Example:
    >>> from fcnseg.runtime import Segmenter, overlay
    >>> seg = Segmenter.load("fcn_resnet50.onnx")
    >>> mask = seg(image)                      # HxW uint8 class ids, at the image's size
    >>> picture = overlay(image, mask)
"""

from .errors import FcnsegError
from .metadata import ModelMetadata
from .metrics import ConfusionMatrix
from .postprocess import colorize, legend, overlay
from .segmenter import Segmenter

__all__ = ["Segmenter", "colorize", "overlay", "legend", "FcnsegError", "ModelMetadata", "ConfusionMatrix"]
