"""Models: output sizes for odd inputs, torchvision state-dict compatibility, pretrained loading, FCN-8s upsampling
alignment, dynamic-H/W ONNX export and a training step."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from fcnseg.core.errors import FcnsegError
from fcnseg.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.train.models import (MODELS, BilinearUpsample, fcn8s_resnet18, fcn_resnet50, get_model,
                                 load_pretrained)

SIZES = {
    "fcn_resnet50": [(97, 131), (375, 500)],
    "fcn_resnet101": [(97, 131)],
    "fcn8s_resnet18": [(97, 131), (375, 500), (33, 47), (1, 1)],
    "fcn8s_resnet34": [(97, 131), (375, 500)],
}


@pytest.fixture(scope="module")
def built():
    """One eval-mode model with aux head per architecture, built on first use."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = get_model(name, num_classes=5, aux_loss=True).eval()
        return cache[name]
    return get


@pytest.mark.parametrize("name,hw", [(n, hw) for n, sizes in SIZES.items() for hw in sizes])
def test_output_is_a_dict_at_input_size(built, name, hw):
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        y = built(name)(x)
    assert type(y) is dict and set(y) == {"out", "aux"}
    for v in y.values():
        assert v.shape == (1, 5, *hw) and torch.isfinite(v).all()


def test_no_aux_head_unless_asked():
    with torch.no_grad():
        y = fcn8s_resnet18(num_classes=3).eval()(torch.randn(1, 3, 40, 56))
    assert list(y) == ["out"]


@pytest.mark.parametrize("name,aux", [("fcn_resnet50", True), ("fcn_resnet101", False)])
def test_torchvision_state_dict_fits_exactly(name, aux):
    torch.manual_seed(1)
    tv = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None, aux_loss=aux).eval()
    ours = get_model(name, num_classes=21, aux_loss=aux).eval()
    result = ours.load_state_dict(tv.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)["out"], tv(x)["out"])


def test_get_model_rejects_unknown_name_and_bad_class_count():
    with pytest.raises(FcnsegError, match=r"expected one of fcn_resnet50, fcn_resnet101, fcn8s_resnet18, "
                                          r"fcn8s_resnet34; got 'fcn_vgg16'"):
        get_model("fcn_vgg16")
    with pytest.raises(FcnsegError, match="positive integer"):
        get_model("fcn8s_resnet18", num_classes=0)
    assert list(MODELS) == ["fcn_resnet50", "fcn_resnet101", "fcn8s_resnet18", "fcn8s_resnet34"]


def test_imagenet_resnet_weights_load_into_fcn8s_backbone(tmp_path):
    torch.manual_seed(2)
    src = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(src, path)
    model = fcn8s_resnet18(pretrained=path)
    own = model.backbone.state_dict()
    for k, v in own.items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(v, src[k], rtol=0, atol=0)
    assert set(own) == {k for k in src if not k.startswith("fc.")}


def test_wrong_or_bad_weights_raise_and_load_nothing(tmp_path):
    resnet34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), resnet34)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    model = fcn8s_resnet18()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for path, pattern in [(resnet34, "ImageNet ResNet state dict.*unexpected"), (junk, "could not read"),
                          (other, "expected a segmentation state dict"), (tmp_path / "nope.pth", "does not exist")]:
        with pytest.raises(FcnsegError, match=pattern) as info:
            load_pretrained(model, path)
        assert str(path) in str(info.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_full_state_dict_with_other_class_count_skips_only_heads(tmp_path):
    torch.manual_seed(3)
    src = fcn8s_resnet18(num_classes=21, aux_loss=True)
    path = tmp_path / "fcn8s21.pth"
    save_checkpoint({"model": src.state_dict(), "arch": "fcn8s_resnet18"}, path)
    with pytest.warns(UserWarning, match="do not fit 5 classes"):
        model = fcn8s_resnet18(num_classes=5, pretrained=path)
    sd, ref = model.state_dict(), src.state_dict()
    skipped = {k for k in sd if sd[k].shape != ref[k].shape}
    assert skipped == {"score_fr.weight", "score_fr.bias", "score_pool4.weight", "score_pool4.bias",
                       "score_pool3.weight", "score_pool3.bias", "upscore2.up.weight",
                       "upscore_pool4.up.weight", "upscore8.up.weight"}
    for k in set(sd) - skipped:
        assert torch.equal(sd[k], ref[k]), k


def test_torchvision_fcn_weights_load_without_aux(tmp_path):
    torch.manual_seed(4)
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True)
    path = tmp_path / "fcn_resnet50_coco.pth"
    torch.save(tv.state_dict(), path)
    model = fcn_resnet50(pretrained=path)
    assert model.aux_classifier is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k


def test_checkpoint_reader_finds_fcn8s_class_count(tmp_path):
    path = tmp_path / "raw.pth"
    save_checkpoint(fcn8s_resnet18(num_classes=7).state_dict(), path)
    assert load_checkpoint(path).num_classes == 7
    model, ckpt = model_from_checkpoint(path, arch="fcn8s_resnet18")
    assert ckpt.num_classes == 7 and model.score_fr.out_channels == 7


@pytest.mark.parametrize("factor", [2, 8])
def test_bilinear_init_is_aligned_interpolation(factor):
    up = BilinearUpsample(3, factor)
    n = 6
    ramp = torch.arange(n, dtype=torch.float32)
    x = (ramp[:, None] + 10 * ramp[None, :]).expand(1, 3, n, n).contiguous()
    like = torch.empty(1, 1, factor * n - 1, factor * n - 2)   # sizes short of a whole stride
    with torch.no_grad():
        y = up(x, like)
        flat = up(torch.full((1, 3, n, n), 2.5), like)
    assert y.shape == (1, 3, *like.shape[-2:])
    # A coarse pixel i sits on fine pixel factor*i; past the last centre the value stays at the edge's.
    rows = torch.clamp(torch.arange(like.shape[-2]) / factor, max=n - 1)
    cols = torch.clamp(torch.arange(like.shape[-1]) / factor, max=n - 1)
    torch.testing.assert_close(y[0, 1], rows[:, None] + 10 * cols[None, :])
    torch.testing.assert_close(flat, torch.full_like(flat, 2.5))


def test_fcn8s_onnx_export_keeps_height_and_width_dynamic():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(5)
    model = fcn8s_resnet18(num_classes=4).eval()
    with torch.no_grad():  # zero-init skip scores would hide a misaligned skip path
        for conv in (model.score_pool3, model.score_pool4):
            conv.weight.normal_(0, 0.1)
    buf = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated and notes unfolded slices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["out"],
                          dynamic_axes={"input": axes, "out": axes})
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 33, 47), (2, 3, 97, 131)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x)["out"].numpy()
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_one_sgd_step_lowers_the_loss_and_trains_the_upsampling():
    torch.manual_seed(6)
    model = fcn8s_resnet18(num_classes=3, aux_loss=True).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    target[:, :4] = 255
    # A random-init ResNet on a batch of two has steep gradients (conv1 ~40): a small step stays in the linear regime.
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def loss_fn() -> torch.Tensor:
        y = model(x)
        return F.cross_entropy(y["out"], target, ignore_index=255) + F.cross_entropy(y["aux"], target, ignore_index=255)

    for m in model.modules():  # dropout off so both evaluations see the same network
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    loss = loss_fn()
    loss.backward()
    assert model.upscore8.up.weight.grad.abs().sum() > 0 and model.score_pool3.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert loss_fn().item() < loss.item()
