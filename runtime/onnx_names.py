"""The ONNX graph conventions export writes and the runtime reads, in one place.

Every fcnseg graph has one NCHW float32 input named ``input`` and an output ``logits`` (N, C, H, W) or, with
in-graph argmax, ``mask`` (N, H, W). Opsets: 17 by default (TensorRT 8.x parses up to 17, 10.x up to 20).
"""

INPUT_NAME = "input"
LOGITS_NAME = "logits"
MASK_NAME = "mask"
OUTPUT_NAMES = (LOGITS_NAME, MASK_NAME)
DEFAULT_OPSET = 17            # parsed by TensorRT 8.5+ (8.x stops at 17), 10.x (9-20) and 11.x
TRT8_MAX_OPSET, TRT10_MAX_OPSET = 17, 20
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel Q/DQ; 20: the TorchScript exporter's last opset
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
