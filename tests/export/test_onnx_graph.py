"""Helpers of export/onnx_graph.py on graphs of every provenance: ours, ours with null sizes, and foreign ones."""

from __future__ import annotations

import warnings

import onnx

from fcnseg.core.metadata import ModelMetadata
from fcnseg.export.onnx_graph import DEFAULT_VERIFY_SHAPES, default_verify_shapes, fcnseg_props


def test_verify_shapes_within_the_declared_range_or_all(tmp_path, conv_onnx_factory):
    """A declared 64..200 range keeps the shapes inside it; null sizes (not declared) and a graph without fcnseg
    metadata take them all, quietly (was a TypeError on null)."""
    ranged = onnx.load(str(conv_onnx_factory(tmp_path / "r.onnx", ModelMetadata(num_classes=3, min_size=64,
                                                                                 max_size=200))))
    assert default_verify_shapes(ranged) == [s for s in DEFAULT_VERIFY_SHAPES if 64 <= min(s[1:]) and max(s[1:]) <= 200]
    nulls = onnx.load(str(conv_onnx_factory(tmp_path / "n.onnx", ModelMetadata(num_classes=3))))
    assert fcnseg_props(nulls)["fcnseg.min_size"] is None
    foreign = onnx.load(str(tmp_path / "n.onnx"))
    del foreign.metadata_props[:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default_verify_shapes(nulls) == default_verify_shapes(foreign) == list(DEFAULT_VERIFY_SHAPES)
    assert fcnseg_props(foreign) == {}
