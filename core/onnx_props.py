"""Read an ONNX file's ``fcnseg.*`` metadata with the standard library alone.

On a Jetson the runtime has numpy and pillow, TensorRT from JetPack, and usually neither ``onnx`` nor
``onnxruntime`` (neither has wheels for JetPack 5's Python 3.8 with numpy 1.17). The metadata still has to
be readable there: ``build_engine.sh`` in a device bundle writes an engine's sidecar from it, and tools
list what a bundled graph is. ``ModelProto.metadata_props`` is field 14 of a protobuf message, so this
module walks the file's top-level fields, seeking past the graph (weights are never read into memory),
and decodes only the ``StringStringEntryProto`` key/value pairs.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Dict, Iterator, Optional, Tuple, Union

from .errors import FcnsegError
from .metadata import ModelMetadata, metadata_from_props

PathLike = Union[str, "os.PathLike[str]"]

METADATA_PROPS = 14          # ModelProto.metadata_props in onnx.proto
ENTRY_KEY, ENTRY_VALUE = 1, 2  # StringStringEntryProto.key / .value
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5   # protobuf wire types


class _Malformed(Exception):
    pass


def _varint(f: BinaryIO) -> Optional[int]:
    """The next base-128 varint; None at a clean end of file."""
    result = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            if shift:
                raise _Malformed("file ends inside a varint")
            return None
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def _fields(f: BinaryIO, size: int, *, keep: Tuple[int, ...]) -> Iterator[Tuple[int, bytes]]:
    """Yield (field number, bytes) for the length-delimited fields numbered in ``keep``; skip every other."""
    while True:
        tag = _varint(f)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            _varint(f)
        elif wire in (FIXED64, FIXED32):
            f.seek(8 if wire == FIXED64 else 4, io.SEEK_CUR)
        elif wire == LENGTH:
            length = _varint(f)
            if length is None or f.tell() + length > size:
                raise _Malformed(f"field {number} runs past the end of the file")
            if number in keep:
                yield number, f.read(length)
            else:
                f.seek(length, io.SEEK_CUR)
        else:
            raise _Malformed(f"unexpected wire type {wire} for field {number}")
        if f.tell() > size:
            raise _Malformed("file ends inside a field")


def _entry(data: bytes) -> Dict[int, str]:
    return {number: value.decode("utf-8")
            for number, value in _fields(io.BytesIO(data), len(data), keep=(ENTRY_KEY, ENTRY_VALUE))}


def read_onnx_props(path: PathLike) -> Dict[str, str]:
    """All of an ONNX file's ``metadata_props`` as a dict (no onnx/onnxruntime needed).

    Raises:
        FcnsegError: the file is missing or is not a protobuf-encoded ONNX model.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            props = {}
            for _, data in _fields(f, size, keep=(METADATA_PROPS,)):
                entry = _entry(data)
                props[entry.get(ENTRY_KEY, "")] = entry.get(ENTRY_VALUE, "")
            return props
    except OSError as e:
        raise FcnsegError(f"could not read {str(path)!r} ({e}); expected an .onnx file written by fcn-export") from None
    except (_Malformed, UnicodeDecodeError) as e:
        raise FcnsegError(f"expected an ONNX model (protobuf) in {str(path)!r}, got unreadable data ({e}); "
                          "try the .onnx file written by fcn-export") from None


def read_onnx_metadata(path: PathLike) -> ModelMetadata:
    """The ``ModelMetadata`` an exported ONNX carries (defaults for keys it lacks).

    Example:
        >>> read_onnx_metadata("bundle/fcn_fp16.onnx").classes[:2]
        ['background', 'aeroplane']
    """
    return metadata_from_props(read_onnx_props(path), str(path))
