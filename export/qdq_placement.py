"""Which nodes get Q/DQ in the TensorRT layout, as NVIDIA places them.

TensorRT's "Q/DQ Layer-Placement Recommendations" (developer guide, explicit quantization) and NVIDIA
ModelOpt's ONNX INT8 mode put Q/DQ on:

- every weighted layer (Conv, ConvTranspose): its activation input (per tensor) and its weight (per channel);
- each residual Add: its residual input, never its main input, the output of the Conv that TensorRT fuses the
  Add into. The Add then runs in that INT8 convolution's epilogue with an INT8 residual, instead of as a
  separate float layer. For a ResNet block whose skip is the block input, that input already carries the
  Q/DQ of the next Conv; a downsampling block's skip (a 1x1 Conv's output) gets its own;
- MaxPool between quantized layers (ResNet's stem: Conv -> Relu -> MaxPool -> Conv): its input, and its output
  with the same scale, so the pooling runs in INT8 rather than on a float round trip between two INT8 layers.

ONNX Runtime's QDQ quantizer inserts the pairs (it quantizes both inputs of an Add and shares a MaxPool's
scale); ``choose_nodes`` says which Add and MaxPool nodes it may touch, and ``drop_main_input_qdq`` then
removes the pair it puts on each Add's main input, as ModelOpt's ``remove_partial_input_qdq`` does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

import onnx

WEIGHTED_OPS = ("Conv", "ConvTranspose")
PLACED_OPS = WEIGHTED_OPS + ("Add", "MaxPool")   # what the TensorRT layout quantizes (and calibrates)
FUSING_OPS = ("Conv",)                             # what TensorRT fuses a following residual Add into


@dataclass(frozen=True)
class ResidualAdd:
    """An Add TensorRT fuses into the Conv producing ``main``; ``residual`` is its other input (gets Q/DQ)."""

    node: str
    main: str
    residual: str


def choose_nodes(model: onnx.ModelProto, weighted: Iterable[str]) -> Tuple[Set[str], List[ResidualAdd]]:
    """The nodes to quantize when the weighted layers ``weighted`` are: those, the residual Adds fused into one of
    them (``residual_adds``, also returned) and the MaxPools between them (``pools_between``)."""
    chosen = set(weighted)
    adds = residual_adds(model, chosen)
    return chosen | {a.node for a in adds} | set(pools_between(model, chosen)), adds


def residual_adds(model: onnx.ModelProto, quantized: Set[str]) -> List[ResidualAdd]:
    """Adds of two computed tensors whose main input comes straight from one of the ``quantized`` Convs.

    The main input is the one produced by a Conv; when both are (a downsampling block: the block's last Conv and
    the 1x1 Conv on its skip), the one farther from where the two branches meet, as ModelOpt decides.
    """
    producer = _producers(model)
    found = []
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        sources = [producer.get(name) for name in node.input]
        if any(p is None or p.op_type == "Constant" for p in sources):
            continue   # a bias or a graph input: no residual branch
        convs = [i for i, p in enumerate(sources) if p is not None and p.op_type in FUSING_OPS]
        if not convs:
            continue
        main = convs[0] if len(convs) == 1 else _longer_branch(producer, node.input[0], node.input[1])
        conv = sources[main]
        if conv is not None and conv.name in quantized:
            found.append(ResidualAdd(node.name, node.input[main], node.input[1 - main]))
    return found


def pools_between(model: onnx.ModelProto, quantized: Set[str]) -> List[str]:
    """MaxPool nodes fed by a quantized Conv (through a Relu at most) and feeding a quantized Conv."""
    producer = _producers(model)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "MaxPool":
            continue
        src = producer.get(node.input[0])
        if src is not None and src.op_type == "Relu":
            src = producer.get(src.input[0])
        fed = src is not None and src.op_type in WEIGHTED_OPS and src.name in quantized
        feeds = any(c.op_type in WEIGHTED_OPS and c.name in quantized for c in consumers.get(node.output[0], []))
        if fed and feeds:
            found.append(node.name)
    return found


def drop_main_input_qdq(model: onnx.ModelProto, adds: Iterable[ResidualAdd]) -> int:
    """Reconnect each Add's main input to the Conv output past the Q/DQ pair ONNX Runtime put there (in place);
    pairs nothing else reads are removed. Returns the number of inputs reconnected."""
    nodes = {n.name: n for n in model.graph.node}
    producer = _producers(model)
    moved = 0
    for add in adds:
        node = nodes.get(add.node)
        if node is None:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] == add.main:
                node.input[i] = add.main
                moved += 1
    _remove_unread_qdq(model)
    return moved


def _remove_unread_qdq(model: onnx.ModelProto) -> None:
    graph = model.graph
    while True:
        read = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  and not any(o in read for o in n.output)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    used = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def _producers(model: onnx.ModelProto) -> Dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _distances(producer: Dict[str, onnx.NodeProto], tensor: str) -> Dict[str, int]:
    """Node name -> number of nodes between it and ``tensor`` (0: its producer), going back to the inputs."""
    start = producer.get(tensor)
    if start is None:
        return {}
    dist = {start.name: 0}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for name in node.input:
            p = producer.get(name)
            if p is not None and p.name not in dist:
                dist[p.name] = dist[node.name] + 1
                todo.append(p)
    return dist


def _longer_branch(producer: Dict[str, onnx.NodeProto], a: str, b: str) -> int:
    """0 or 1: which of tensors ``a``, ``b`` is farther from their nearest common ancestor (the main branch)."""
    da, db = _distances(producer, a), _distances(producer, b)
    common: Optional[str] = min((n for n in da if n in db), key=lambda n: da[n] + db[n], default=None)
    if common is None:
        return 0
    return 0 if da[common] >= db[common] else 1
