"""Checkpoints of torchvision's references/segmentation/train.py load as they are (weights_only=True) and export."""

import argparse

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torchvision.models.segmentation import fcn_resnet50

from fcnseg.train.checkpoint import model_from_checkpoint
from fcnseg.train.models import get_model


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A checkpoint in the reference's layout: args is an argparse.Namespace, the optimizer has its own groups."""
    torch.manual_seed(0)
    model = fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True, num_classes=21).eval()
    groups = [{"params": [p for p in model.backbone.parameters()]},
              {"params": [p for p in model.classifier.parameters()]},
              {"params": [p for p in model.aux_classifier.parameters()], "lr": 0.2}]
    optimizer = torch.optim.SGD(groups, lr=0.02, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda x: (1 - x / 1000) ** 0.9)
    args = argparse.Namespace(data_path="/datasets01/COCO/022719/", dataset="coco", model="fcn_resnet50",
                              aux_loss=True, device="cuda", batch_size=4, epochs=30, workers=16, lr=0.02,
                              momentum=0.9, weight_decay=1e-4, lr_warmup_epochs=0, output_dir=".", resume="",
                              weights=None, weights_backbone="ResNet50_Weights.IMAGENET1K_V1", amp=False)
    path = tmp_path_factory.mktemp("reference") / "model_29.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 29, "args": args}, path)
    return path, model


def test_exports_to_onnx_matching_torchvisions_model(reference, tmp_path, one_thread):
    import onnxruntime as ort

    from fcnseg.export.cli import main as export_main

    path, model = reference
    onnx_path = tmp_path / "model.onnx"
    result = CliRunner().invoke(export_main, ["onnx", str(path), "-o", str(onnx_path), "--min-size", "32",
                                              "--no-verify"])
    assert result.exit_code == 0, result.output
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)["out"].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == expected.shape == (1, 21, 64, 80)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_loads_for_eval_and_as_pretrained_weights(reference, one_thread):
    path, model = reference
    loaded, ckpt = model_from_checkpoint(path)  # what fcn-eval's PyTorch backend and fcn-export call
    assert (ckpt.arch, ckpt.num_classes, ckpt.info["args"]["model"]) == ("fcn_resnet50", 21, "fcn_resnet50")
    assert ckpt.metadata().num_classes == 21
    pretrained = get_model("fcn_resnet50", num_classes=21, aux_loss=True, pretrained=path)
    for own in (loaded.state_dict(), pretrained.state_dict()):
        assert all(torch.equal(own[k], v) for k, v in model.state_dict().items())
