"""Inference backends: OpenVINO and ONNX Runtime (``.onnx``), TensorRT (``.plan``/``.engine``), PyTorch (``.pth``).

Only the ``Backend`` protocol is imported here. Each backend module imports its inference library
(openvino, onnxruntime, tensorrt, torch) itself and is imported by ``fcnseg.runtime.segmenter`` only when a model
of its kind is loaded, so the runtime needs numpy and pillow alone.
"""

from .base import Backend

__all__ = ["Backend"]
