"""Large-stride upsampling ConvTranspose -> Conv + DepthToSpace (sub-pixel convolution), for INT8 graphs.

OpenVINO's CPU plugin runs a non-grouped ConvolutionBackpropData in INT8 only up to stride 3
(``Deconvolution::canBeExecutedInInt8`` in its intel_cpu plugin); FCN-8s's final x8 upsampling
(``fcnseg.train.models.BilinearUpsample``: kernel 15, stride 8) therefore ran in f32 there, a large part of
the FCN-8s INT8 time, and the crop after it (a Slice that is never a no-op, the deconvolution giving
``f * n + 1`` rows) on a reference kernel (figures: docs/cpu.md).

A ConvTranspose with stride ``f``, kernel ``2f - 1`` and padding ``f - 1`` is a 2x2 Conv with ``f * f * C``
output channels followed by ``DepthToSpace(f)``: output row ``f * q + t`` reads input rows ``q`` (tap
``t + f - 1``) and ``q + 1`` (tap ``t - 1``, when ``t >= 1``). Without padding that Conv gives ``f * (n - 1)``
rows, one fewer than the ConvTranspose: the last row (and column), which ``BilinearUpsample`` always crops
(its crop size is at most ``f`` times the rows before the replicated last one). So the rewrite applies only to
BilinearUpsample's subgraph: the input is the last row/column replicated (``Concat(x, Slice(x))``) and the
output reaches the rest of the graph only through Slices from 0 on both spatial axes. TensorRT parses Conv and
DepthToSpace, and the crop becomes a no-op when the image size is a multiple of ``f`` (520 = 8 x 65).

``quantize_int8`` keeps that Conv in float: OpenVINO then runs it as a bf16/f32 Conv, as fast as in INT8,
while its INT8 kernel for this signed 21-channel input drifted from ONNX Runtime's result (the measured times
and mIoU deltas: docs/cpu.md).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPENVINO_INT8_MAX_DECONV_STRIDE = 3   # larger strides run in f32 on OpenVINO's CPU plugin (non-grouped)


def subpixel_upsampling(model: onnx.ModelProto, *, min_stride: int = OPENVINO_INT8_MAX_DECONV_STRIDE + 1
                        ) -> List[str]:
    """Rewrite each BilinearUpsample ConvTranspose with stride >= ``min_stride`` as Conv + DepthToSpace, in place.

    Args:
        model: an FP32 graph (before quantization); modified in place. Shape information of the rewritten
            tensors is dropped (run ``onnx.shape_inference.infer_shapes`` again when needed).
        min_stride: rewrite only strides at least this large (the default: those OpenVINO cannot run in INT8).

    Returns:
        The names of the Conv nodes that replace them (empty: the graph is unchanged).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    consts = {name: numpy_helper.to_array(t) for name, t in inits.items()
              if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)}   # Slice starts/axes/steps
    consts.update({n.output[0]: numpy_helper.to_array(_attrs(n)["value"]) for n in graph.node
                   if n.op_type == "Constant" and "value" in _attrs(n)})
    done, outputs = [], set()
    for node in list(graph.node):
        f = _bilinear_stride(node, inits, producers, consumers, consts)
        if f is None or f < min_stride:
            continue
        done.append(_replace(graph, node, f, inits))
        outputs.add(node.output[0])   # now one row/column shorter: its inferred shape no longer holds
    if done:
        used = {name for n in graph.node for name in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        kept_info = [v for v in graph.value_info if v.name not in outputs]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return done


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _bilinear_stride(node: onnx.NodeProto, inits: dict, producers: dict, consumers: dict, consts: dict
                     ) -> Optional[int]:
    """The stride ``f`` when ``node`` is BilinearUpsample's ConvTranspose (see the module docstring), else None."""
    if node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    weight = inits[node.input[1]]
    if len(weight.dims) != 4 or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits):
        return None
    a = _attrs(node)
    strides = list(a.get("strides", [1, 1]))
    f = strides[0]
    plain = (a.get("group", 1) == 1 and list(a.get("dilations", [1, 1])) == [1, 1]
             and not any(a.get("output_padding", [])) and "output_shape" not in a
             and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
    if not plain or strides != [f, f] or f < 2 or list(weight.dims[2:]) != [2 * f - 1] * 2 \
            or list(a.get("pads", [0] * 4)) != [f - 1] * 4:
        return None
    if not _replicates_last(node.input[0], producers) or _crop_axes(node.output[0], consumers, consts) != {2, 3}:
        return None
    return f


def _replicates_last(name: str, producers: dict) -> bool:
    """``name`` is ``Concat([x, Slice(x)])`` along W of the same along H (BilinearUpsample's replicate pad)."""
    for axis in (3, 2):
        cat = producers.get(name)
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 2 or _attrs(cat).get("axis") not in (
                axis, axis - 4):
            return False
        last = producers.get(cat.input[1])
        if last is None or last.op_type != "Slice" or last.input[0] != cat.input[0]:
            return False
        name = cat.input[0]
    return True


def _crop_axes(name: str, consumers: dict, consts: dict) -> Set[int]:
    """Spatial axes cropped from index 0 by the chain of single Slices that is ``name``'s only reader."""
    axes: Set[int] = set()
    while True:
        readers = consumers.get(name, [])
        if len(readers) != 1 or readers[0].op_type != "Slice" or len(readers[0].input) < 4:
            return axes
        sl = readers[0]
        starts, ax = (_ints(consts.get(sl.input[i])) for i in (1, 3))
        steps = _ints(consts.get(sl.input[4])) if len(sl.input) > 4 and sl.input[4] else None
        if starts is None or ax is None or any(starts) or (steps is not None and any(s != 1 for s in steps)):
            return axes
        axes |= {a % 4 for a in ax}
        name = sl.output[0]


def _ints(value: Optional[np.ndarray]) -> Optional[List[int]]:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def _replace(graph: onnx.GraphProto, node: onnx.NodeProto, f: int, inits: dict) -> str:
    """Conv (2x2, DCR channel order) + DepthToSpace(f) in place of ``node``, same input and output names."""
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)   # (C_in, C_out, 2f-1, 2f-1)
    c_in, c_out = w.shape[:2]
    conv_w = np.zeros((f, f, c_out, c_in, 2, 2), np.float32)   # DCR: channel (t * f + u) * C_out + o
    for t in range(f):
        for kh, r in ((0, t + f - 1), (1, t - 1)):
            for u in range(f):
                for kw, s in ((0, u + f - 1), (1, u - 1)):
                    if r >= 0 and s >= 0:
                        conv_w[t, u, :, :, kh, kw] = w[:, :, r, s].T
    base = node.name or node.output[0]
    w_name = f"{node.input[1]}_subpixel"
    graph.initializer.append(numpy_helper.from_array(conv_w.reshape(f * f * c_out, c_in, 2, 2), w_name))
    inputs = [node.input[0], w_name]
    if len(node.input) > 2 and node.input[2]:
        b = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(np.tile(b, f * f), f"{node.input[2]}_subpixel"))
        inputs.append(f"{node.input[2]}_subpixel")
    mid = f"{node.output[0]}_subpixel"
    conv = helper.make_node("Conv", inputs, [mid], name=base.replace("ConvTranspose", "Conv") + "_subpixel",
                            kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 0, 0])
    d2s = helper.make_node("DepthToSpace", [mid], [node.output[0]], name=f"{base}_depth_to_space", blocksize=f,
                           mode="DCR")
    index = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(index, d2s)
    graph.node.insert(index, conv)
    return conv.name
