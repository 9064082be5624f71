"""Fold weight ``QuantizeLinear`` nodes into int8 initializers (the layout NVIDIA ModelOpt writes).

ONNX Runtime's quantizer with ``AddQDQPairToWeight=True`` stores every weight as a float32 initializer
followed by QuantizeLinear -> DequantizeLinear, so the INT8 file is as large as the FP32 one. TensorRT
(and ONNX Runtime, OpenVINO) read the same graph with the QuantizeLinear already applied: an int8
initializer feeding the DequantizeLinear. ``fold_weight_quantizers`` computes that initializer exactly as
QuantizeLinear would (round half to even, add the zero point, saturate to int8), so outputs do not change
and the file is about 4x smaller.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

INT8_RANGE = (-128, 127)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace each QuantizeLinear of a constant float initializer by its int8 result, in place.

    Only int8 QuantizeLinear nodes whose input, scale and zero point are initializers are folded (weights);
    activation quantizers are left alone. Float initializers no other node reads are removed.

    Returns:
        The number of QuantizeLinear nodes folded.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: Dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    folded: List[onnx.NodeProto] = []
    for node in graph.node:
        q = _quantized_weight(node, inits)
        if q is None:
            continue
        tensor = numpy_helper.from_array(q, node.output[0])
        graph.initializer.append(tensor)
        folded.append(node)
        readers[node.input[0]] -= 1
    for node in folded:
        graph.node.remove(node)
    unused = {name for name, count in readers.items() if count == 0 and name in inits}
    for tensor in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(tensor)
    return len(folded)


def _quantized_weight(node: onnx.NodeProto, inits: Dict[str, onnx.TensorProto]) -> Optional[np.ndarray]:
    """QuantizeLinear(x, scale, zero_point) computed on constants, or None when it is not a weight quantizer."""
    if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") or len(node.input) < 3:
        return None
    x, scale, zp = (inits.get(name) for name in node.input[:3])
    if x is None or scale is None or zp is None or zp.data_type != TensorProto.INT8:
        return None
    if x.data_type != TensorProto.FLOAT or scale.data_type != TensorProto.FLOAT:
        return None
    w, s, z = (numpy_helper.to_array(t) for t in (x, scale, zp))
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if s.ndim == 1 and s.size > 1:   # per-channel: broadcast along ``axis``
        shape = [1] * w.ndim
        shape[axis % w.ndim] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    q = np.rint(w.astype(np.float32) / s) + z.astype(np.int32)
    return np.clip(q, *INT8_RANGE).astype(np.int8)
