"""Inference backends: ONNX Runtime (``.onnx``), TensorRT (``.plan``/``.engine``) and PyTorch (``.pth``).

Only the ``Backend`` protocol is imported here. Each backend module imports its inference library
(onnxruntime, tensorrt, torch) itself and is imported by ``fcnseg.runtime.segmenter`` only when a model
of its kind is loaded, so the runtime needs numpy and pillow alone.
"""

from .base import Backend

__all__ = ["Backend"]
