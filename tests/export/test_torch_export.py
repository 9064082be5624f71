"""Checkpoint -> ONNX: parity with PyTorch at odd shapes and batch 2, dynamic dims, argmax, metadata, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fcnseg.export import torch_export as oe
from fcnseg.export.check import check_trt_ready
from fcnseg.export.fp16 import convert_fp16
from fcnseg.export.onnx_graph import read_metadata
from fcnseg.export.torch_export import export_onnx
from fcnseg.core.errors import FcnsegError
from fcnseg.eval.parity import compare_logits
from fcnseg.train.checkpoint import model_from_checkpoint

REQUIRED = [(1, 97, 131), (1, 375, 500), (1, 520, 520), (2, 97, 131)]
# The dilated ResNet-50/101 FCNs cost ~10x FCN-8s/ResNet18 per pixel on a CPU: odd shapes, smaller.
HEAVY = [(1, 97, 131), (2, 65, 81)]


def _torch_vs_file(ckpt, path, shapes, random_input):
    """Independent of export_onnx's own verification: a fresh ORT session on the file vs. the checkpoint's model."""
    model, _ = model_from_checkpoint(ckpt)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for i, (n, h, w) in enumerate(shapes):
        x = random_input(n, h, w, seed=100 + i)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))["out"].numpy()
        got = sess.run(["logits"], {"input": x})[0]
        assert got.shape == (n, 21, h, w)
        results.append(compare_logits(ref, got, atol=1e-3, min_agreement=0.999))
    return results


def _assert_parity(result, shapes):
    assert [c.shape for c in result.comparisons] == [(n, 21, h, w) for n, h, w in shapes]
    for c in result.comparisons:
        assert c.max_abs <= 1e-3 and c.argmax_agreement >= 0.999, str(c)


def test_fcn8s_resnet18_matches_pytorch_at_required_shapes(r18_ckpt, tmp_path, random_input):
    result = export_onnx(r18_ckpt, tmp_path / "r18.onnx", verify_shapes=REQUIRED)
    _assert_parity(result, REQUIRED)
    independent = _torch_vs_file(r18_ckpt, result.path, [(1, 97, 131), (2, 61, 77)], random_input)
    assert all(independent), [str(c) for c in independent]
    assert check_trt_ready(result.path), str(check_trt_ready(result.path))


@pytest.mark.slow
# ResNet-101 ends in the same head as ResNet-50: one FP16 conversion of that head is enough.
@pytest.mark.parametrize("arch, fp16", [("fcn_resnet50", True), ("fcn_resnet101", False)])
def test_dilated_fcn_matches_pytorch_and_converts_to_fp16(arch, fp16, checkpoint_factory, tmp_path, random_input):
    ckpt = checkpoint_factory(tmp_path / f"{arch}.pth", arch, aux_loss=True)
    result = export_onnx(ckpt, tmp_path / f"{arch}.onnx", verify_shapes=HEAVY)
    _assert_parity(result, HEAVY)
    model = onnx.load(str(result.path))
    assert [o.name for o in model.graph.output] == ["logits"]          # aux head dropped
    assert not any("aux_classifier" in i.name for i in model.graph.initializer)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes, "the dilated FCN upsamples with one bilinear Resize"
    for node in resizes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["mode"] == b"linear"
        assert attrs["coordinate_transformation_mode"] in (b"half_pixel", b"pytorch_half_pixel")
        assert len(node.input) == 4 and node.input[3], "Resize should be fed sizes, not scales"
    report = check_trt_ready(model)
    assert report and not report.warnings, str(report)
    if not fp16:
        return
    # the graph ends in a Resize kept in FP32: the FP16 step must cope with a blocked op at the output
    half = convert_fp16(result.path, tmp_path / f"{arch}_fp16.onnx", verify_shapes=HEAVY[:1])
    last = onnx.load(str(half.path)).graph.node[-1]
    assert last.op_type == "Resize" and half.comparisons[0].argmax_agreement >= 0.99
    assert check_trt_ready(half.path)


def test_input_and_output_dims_are_symbolic(r18_onnx, random_input):
    model = onnx.load(str(r18_onnx))
    (inp,), (out,) = model.graph.input, model.graph.output
    in_dims = inp.type.tensor_type.shape.dim
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.HasField("dim_param") for d in in_dims] == [True, False, True, True]
    assert in_dims[1].dim_value == 3
    assert out.name == "logits"
    assert [d.HasField("dim_param") for d in out.type.tensor_type.shape.dim] == [True, False, True, True]
    sess = ort.InferenceSession(str(r18_onnx), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 70, 90), (3, 33, 47)]:  # shapes never seen at export time
        assert sess.run(None, {"input": random_input(n, h, w)})[0].shape == (n, 21, h, w)


def test_static_shape_is_fixed(r18_ckpt, tmp_path):
    result = export_onnx(r18_ckpt, tmp_path / "static.onnx", static_hw=(64, 96))
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 96]
    assert [c.shape for c in result.comparisons] == [(1, 21, 64, 96)]
    assert check_trt_ready(result.path)
    # the metadata says what the runtime must feed (issue 9): any image is resized to exactly 64x96
    assert result.metadata.input_hw == [64, 96] and result.metadata.input_size == 64
    from fcnseg.runtime import Segmenter

    seg = Segmenter.load(result.path)
    assert seg.input_hw == (64, 96) and seg(np.zeros((50, 200, 3), np.uint8)).shape == (50, 200)


def test_argmax_graph_outputs_uint8_mask(r18_argmax_onnx, r18_ckpt, random_input):
    model = onnx.load(str(r18_argmax_onnx))
    (out,) = model.graph.output
    assert out.name == "mask" and out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert len(out.type.tensor_type.shape.dim) == 3
    ops = [n.op_type for n in model.graph.node]
    assert ops[-2:] == ["ArgMax", "Cast"]
    x = random_input(2, 70, 90)
    mask = ort.InferenceSession(str(r18_argmax_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    torch_model, _ = model_from_checkpoint(r18_ckpt)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x))["out"].argmax(1).numpy()
    assert mask.dtype == np.uint8 and mask.shape == (2, 70, 90)
    assert (mask == ref).mean() >= 0.999
    assert read_metadata(model)[0].argmax is True
    report = check_trt_ready(model)
    assert report and any("UINT8" in w for w in report.warnings), str(report)


def test_metadata_round_trip(r18_onnx):
    model = onnx.load(str(r18_onnx))
    meta, props = read_metadata(model)
    assert (meta.arch, meta.num_classes, meta.precision, meta.argmax) == ("fcn8s_resnet18", 21, "fp32", False)
    assert meta.classes[15] == "person" and len(meta.palette) == 21
    assert meta.input_size == 64 and meta.miou == 0.5
    assert meta.mean == [0.485, 0.456, 0.406]
    assert props["fcnseg.min_size"] == 64 and props["fcnseg.max_size"] == 2048
    assert props["fcnseg.source"]["opset"] == 17 and model.producer_name == "fcnseg"
    assert model.opset_import[0].version == 17


def test_raw_state_dict_arch_is_told_from_its_keys(checkpoint_factory, tmp_path):
    raw = checkpoint_factory(tmp_path / "raw.pth", raw=True)
    with pytest.raises(FcnsegError, match="got one of fcn8s_resnet18 .*; try --arch fcn8s_resnet18"):
        export_onnx(raw, tmp_path / "raw.onnx", arch="fcn8s_resnet34", verify=False)
    result = export_onnx(raw, tmp_path / "raw.onnx", verify_shapes=[(1, 64, 64)])
    assert result.path.is_file() and read_metadata(onnx.load(str(result.path)))[0].arch == "fcn8s_resnet18"
    assert check_trt_ready(result.path)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 5}, "expected a checkpoint with 5 classes, got 21"),
    ({"arch": "fcn_resnet18"}, "expected --arch to be one of"),
    ({"arch": "fcn8s_resnet34"}, "try --arch fcn8s_resnet18"),
    ({"opset": 9}, "expected an opset in 13..20"),
    ({"verify_shapes": [(1, 32, 32)]}, "H, W in 64..2048"),
])
def test_bad_options_write_nothing(r18_ckpt, tmp_path, kwargs, match):
    out = tmp_path / "bad.onnx"
    with pytest.raises(FcnsegError, match=match):
        export_onnx(r18_ckpt, out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_verification_failure_writes_nothing(r18_ckpt, tmp_path, monkeypatch):
    real = oe.compare_logits
    monkeypatch.setattr(oe, "compare_logits", lambda ref, test, **kw: real(ref, test + 1.0, **kw))
    with pytest.raises(FcnsegError, match="expected ONNX Runtime to match PyTorch"):
        export_onnx(r18_ckpt, tmp_path / "off.onnx", verify_shapes=SMALL)
    assert list(tmp_path.iterdir()) == []


SMALL = [(1, 64, 80)]
