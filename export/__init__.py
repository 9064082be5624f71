"""fcnseg's export stage: checkpoint -> ONNX (FP32, FP16, INT8 Q/DQ) -> TensorRT engine.

Precision is decided in ONNX, where ONNX Runtime can check it on a CPU; the TensorRT build
(``fcnseg.export.tensorrt``) only parses what these steps wrote. torch is imported only by ``export_onnx``.

Example:
    >>> from fcnseg.export import export_onnx, convert_fp16, quantize_int8, check_trt_ready
    >>> onnx_path = export_onnx("model_best.pth", "fcn.onnx").path
    >>> fp16_path = convert_fp16(onnx_path).path
    >>> int8 = quantize_int8(onnx_path, calib_root="data", num_images=500, cache="calib.json")
    >>> assert check_trt_ready(int8.path)
"""

from .check import CheckReport, Violation, check_trt_ready
from .fp16 import Fp16Result, convert_fp16
from .calibration import VOCCalibrationReader
from .int8 import Int8Result, quantize_int8
from .onnx_graph import load_onnx, read_metadata
from .torch_export import ExportResult, export_onnx

__all__ = ["export_onnx", "ExportResult", "convert_fp16", "Fp16Result", "quantize_int8", "Int8Result",
           "VOCCalibrationReader", "check_trt_ready", "CheckReport", "Violation", "load_onnx", "read_metadata"]
