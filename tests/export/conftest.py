"""Shared export fixtures: random-weight checkpoints, a tiny synthetic VOC and the graphs exported from them.

Nothing is trained: the graphs only need to be the networks' real structure. The checkpoints record a small
``base_size`` so that evaluation and calibration (which resize images to it) stay fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from fcnseg.export.torch_export import export_onnx
from fcnseg.train.checkpoint import save_checkpoint
from fcnseg.train.models import get_model

BASE_SIZE = 64          # recorded in the test checkpoints: images are resized to it before inference
SMALL_SHAPES = [(1, 64, 80)]


def make_checkpoint(path, arch: str = "fcn8s_resnet18", *, num_classes: int = 21, aux_loss: bool = False,
                    seed: int = 0, raw: bool = False, **info):
    """A random-weight checkpoint in our format (or a raw state dict with ``raw=True``)."""
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=num_classes, aux_loss=aux_loss)
    _randomize_bn(model, seed)
    if raw:
        save_checkpoint(model.state_dict(), path)
    else:
        save_checkpoint({"model": model.state_dict(), "arch": arch, "num_classes": num_classes,
                         "base_size": BASE_SIZE, "epoch": 0, "args": {"model": arch}, **info}, path)
    return path


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm non-trivial statistics and the skip scores non-zero weights, so folding and every path count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        for m in model.modules():
            # residual branches start small (as zero_init_residual does, but not zero) so that 33 random
            # ResNet-101 blocks do not blow logits up to 1e4, where a 1e-3 absolute tolerance means nothing
            last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else \
                getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None
            if last_bn is not None:
                last_bn.weight.mul_(0.2)
        for name in ("score_pool4", "score_pool3"):
            conv = getattr(model, name, None)
            if conv is not None:
                conv.weight.normal_(0, 0.01, generator=g)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="session")
def r18_ckpt(export_dir):
    return make_checkpoint(export_dir / "fcn8s_resnet18.pth", miou=0.5)


@pytest.fixture(scope="session")
def r18_onnx(r18_ckpt, export_dir):
    """fcn8s_resnet18 exported with dynamic N/H/W (verified at one small shape; full parity is its own test)."""
    return export_onnx(r18_ckpt, export_dir / "fcn8s_resnet18.onnx", verify_shapes=SMALL_SHAPES).path


@pytest.fixture(scope="session")
def r18_argmax_onnx(r18_ckpt, export_dir):
    return export_onnx(r18_ckpt, export_dir / "fcn8s_resnet18_argmax.onnx", argmax=True,
                       verify_shapes=[(2, 64, 80)]).path


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory):
    """A synthetic VOC layout with a handful of small images and an empty split list."""
    from fcnseg.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("voc")
    synthesize(root, num_train=1, num_val=6, size=48, seed=3, progress=False)
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/empty.txt").write_text("")
    return root


@pytest.fixture(scope="session")
def r18_int8(r18_onnx, tiny_voc, export_dir):
    """The INT8 Q/DQ graph of fcn8s_resnet18 (minmax calibration, cached)."""
    from fcnseg.export.int8 import quantize_int8

    return quantize_int8(r18_onnx, export_dir / "fcn8s_resnet18_int8.onnx", calib_root=tiny_voc, num_images=4,
                         method="minmax", cache=export_dir / "calib.json", eval_images=3, max_drop=100.0,
                         progress=False)


@pytest.fixture(scope="session")
def checkpoint_factory():
    """``make_checkpoint`` as a fixture (test modules do not import conftest)."""
    return make_checkpoint


@pytest.fixture(scope="session")
def random_input():
    """(n, h, w, seed=0) -> a reproducible NCHW float32 batch."""
    def make(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)
    return make
