"""Segmentation models: torchvision's dilated FCN-ResNet and an FCN-8s skip net on a ResNet backbone.

Every model's ``forward(x)`` takes an NCHW batch and returns a plain dict ``{"out": logits}`` (plus
``"aux"`` when built with ``aux_loss=True``), logits being (N, C, H, W) at the input's own H and W for any
H and W. All build with random weights; ``pretrained=PATH`` loads a local file (there is no download).

FCN-8s geometry: a torchvision ResNet's stride-2 layers (7x7/pad 3, 3x3/pad 1, 1x1/pad 0) put pixel ``i``
of a stage at pixel ``2 * i`` of the stage before it, so the grids share their first pixel centre. The
upsampling layers therefore use odd bilinear kernels (``2f - 1`` taps, padding ``f - 1``) that put coarse
pixel ``i`` exactly on fine pixel ``f * i``; the paper's even kernels (2f taps) would land it half a pixel
off, which no integer crop can fix. Each upsampling first repeats the last row and column, so the fine
pixels beyond the last coarse centre (up to ``f - 1`` of them when a size is not a multiple of the stride)
are extrapolated as a constant instead of fading towards zero, then crops to the skip tensor's (or the
input's) size, taken from its shape so that the ONNX graph keeps H and W dynamic.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import resnet18, resnet34, segmentation as tv_seg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCN, FCNHead

from ..core.errors import FcnsegError
from .weights import classes_from_state, read_checkpoint, state_dict_of

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["FCN8s", "TorchvisionFCN", "MODELS", "get_model", "fcn_resnet50", "fcn_resnet101",
           "fcn8s_resnet18", "fcn8s_resnet34", "bilinear_kernel", "load_pretrained", "LoadReport"]


class TorchvisionFCN(FCN):
    """torchvision's FCN (same modules, same state dict) returning a plain dict instead of an OrderedDict."""

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # noqa: D102
        return dict(super().forward(x))


def _warn_reinitialised(report: "LoadReport") -> None:
    if report.reinitialised:
        warnings.warn(f"{report.path!r}: kept the initial values of {len(report.reinitialised)} tensors that do not "
                      f"fit {report.classes} classes (file has {report.file_classes}) or that the file lacks: "
                      f"{report.reinitialised[:6]}", UserWarning, stacklevel=3)


def bilinear_kernel(factor: int) -> Tensor:
    """The (2f-1)x(2f-1) bilinear interpolation kernel that upsamples by ``factor`` with aligned pixel centres."""
    taps = 1.0 - (torch.arange(2 * factor - 1, dtype=torch.float32) - (factor - 1)).abs() / factor
    return taps[:, None] * taps[None, :]


class BilinearUpsample(nn.Module):
    """Learnable ConvTranspose2d upsampling by ``factor``, initialised to bilinear interpolation per class.

    ``forward(x, size)`` returns a tensor of exactly ``size`` (H, W) whose pixel ``f * i`` sits on ``x``'s
    pixel ``i``; ``size`` must be at most ``f * x``'s size (it always is for the ceil-divided ResNet grid).
    """

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, 2 * factor - 1, stride=factor, padding=factor - 1,
                                     bias=False)
        with torch.no_grad():
            self.up.weight.zero_()
            # Identity across classes: each class map is interpolated on its own, as in the paper's init.
            for c in range(channels):
                self.up.weight[c, c] = bilinear_kernel(factor)

    def forward(self, x: Tensor, like: Tensor) -> Tensor:
        """Upsample ``x`` and crop it to the spatial size of ``like``."""
        # Repeat the last row/column so the fine pixels past the last coarse centre see its value on both taps
        # (concatenation rather than F.pad(mode="replicate"), whose CUDA backward is not deterministic).
        x = torch.cat([x, x[:, :, -1:]], dim=2)
        x = torch.cat([x, x[:, :, :, -1:]], dim=3)
        y = self.up(x)
        return y[:, :, : like.shape[-2], : like.shape[-1]]


class FCN8s(nn.Module):
    """FCN-8s (Long et al., 2015) on a ResNet: scores at 1/32, 1/16 and 1/8 fused by learnable x2, x2, x8 upsampling.

    Args:
        backbone: module returning ``{"pool3": 1/8, "pool4": 1/16, "pool5": 1/32}`` features
            (an ``IntermediateLayerGetter`` over a torchvision ResNet).
        channels: channel counts of pool3, pool4 and pool5.
        num_classes: number of output classes.
        aux_loss: add torchvision's FCNHead on pool4 (layer3), returned as ``"aux"``.
    """

    def __init__(self, backbone: nn.Module, *, channels: tuple[int, int, int], num_classes: int,
                 aux_loss: bool = False) -> None:
        super().__init__()
        c3, c4, c5 = channels
        self.backbone = backbone
        # The FCNHead-like conv stands in for the paper's fc6/fc7; score_fr keeps the paper's name.
        self.head = nn.Sequential(nn.Conv2d(c5, c5 // 4, 3, padding=1, bias=False), nn.BatchNorm2d(c5 // 4),
                                  nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.score_fr = nn.Conv2d(c5 // 4, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        self.upscore2 = BilinearUpsample(num_classes, 2)
        self.upscore_pool4 = BilinearUpsample(num_classes, 2)
        self.upscore8 = BilinearUpsample(num_classes, 8)
        self.aux_classifier = FCNHead(c4, num_classes) if aux_loss else None
        nn.init.kaiming_normal_(self.score_fr.weight, nonlinearity="relu")
        nn.init.zeros_(self.score_fr.get_parameter("bias"))
        # Zero skip scores start the net as FCN-32s and let the finer paths grow in (the paper's recipe).
        for p in (*self.score_pool4.parameters(), *self.score_pool3.parameters()):
            nn.init.zeros_(p)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """Logits ``{"out": (N, C, H, W)}`` at the input's H, W (plus ``"aux"`` when built with it)."""
        f = self.backbone(x)
        score = self.score_fr(self.head(f["pool5"]))
        score = self.upscore2(score, f["pool4"]) + self.score_pool4(f["pool4"])
        score = self.upscore_pool4(score, f["pool3"]) + self.score_pool3(f["pool3"])
        result = {"out": self.upscore8(score, x)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(f["pool4"])
            result["aux"] = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return result


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FcnsegError(f"expected num_classes to be a positive integer, got {num_classes!r}; try 21 for VOC")


def _torchvision_fcn(build: Callable[..., FCN], num_classes: int, aux_loss: bool,
                     pretrained: Optional[PathLike]) -> TorchvisionFCN:
    _check_classes(num_classes)
    tv = build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)
    model = TorchvisionFCN(tv.backbone, tv.classifier, tv.aux_classifier)
    if pretrained is not None:
        _warn_reinitialised(load_pretrained(model, pretrained))
    return model


def _fcn8s(build: Callable[..., nn.Module], num_classes: int, aux_loss: bool,
           pretrained: Optional[PathLike]) -> FCN8s:
    _check_classes(num_classes)
    layers = {"layer2": "pool3", "layer3": "pool4", "layer4": "pool5"}
    backbone = IntermediateLayerGetter(build(weights=None), return_layers=layers)
    model = FCN8s(backbone, channels=(128, 256, 512), num_classes=num_classes, aux_loss=aux_loss)
    if pretrained is not None:
        _warn_reinitialised(load_pretrained(model, pretrained))
    return model


def fcn_resnet50(*, num_classes: int = 21, aux_loss: bool = False,
                 pretrained: Optional[PathLike] = None) -> TorchvisionFCN:
    """torchvision's FCN-ResNet50 (dilated, output stride 8) with a plain-dict output.

    Args:
        num_classes: output classes (21 for VOC).
        aux_loss: add the auxiliary FCNHead on layer3 (output ``"aux"``).
        pretrained: local torchvision FCN state dict (e.g. ``fcn_resnet50_coco-1167a1af.pth``) or ImageNet
            ResNet50 state dict; see :func:`load_pretrained`.
    """
    return _torchvision_fcn(tv_seg.fcn_resnet50, num_classes, aux_loss, pretrained)


def fcn_resnet101(*, num_classes: int = 21, aux_loss: bool = False,
                  pretrained: Optional[PathLike] = None) -> TorchvisionFCN:
    """torchvision's FCN-ResNet101 (dilated, output stride 8); arguments as :func:`fcn_resnet50`."""
    return _torchvision_fcn(tv_seg.fcn_resnet101, num_classes, aux_loss, pretrained)


def fcn8s_resnet18(*, num_classes: int = 21, aux_loss: bool = False,
                   pretrained: Optional[PathLike] = None) -> FCN8s:
    """FCN-8s on ResNet18.

    Args:
        num_classes: output classes (21 for VOC).
        aux_loss: add an FCNHead on layer3 (output ``"aux"``).
        pretrained: local ImageNet ResNet18 state dict (e.g. ``resnet18-f37072fd.pth``) or a full FCN-8s
            state dict; see :func:`load_pretrained`.
    """
    return _fcn8s(resnet18, num_classes, aux_loss, pretrained)


def fcn8s_resnet34(*, num_classes: int = 21, aux_loss: bool = False,
                   pretrained: Optional[PathLike] = None) -> FCN8s:
    """FCN-8s on ResNet34; arguments as :func:`fcn8s_resnet18` (ImageNet weights: ``resnet34-b627a593.pth``)."""
    return _fcn8s(resnet34, num_classes, aux_loss, pretrained)


MODELS: Dict[str, Callable[..., nn.Module]] = {
    "fcn_resnet50": fcn_resnet50,
    "fcn_resnet101": fcn_resnet101,
    "fcn8s_resnet18": fcn8s_resnet18,
    "fcn8s_resnet34": fcn8s_resnet34,
}


def get_model(name: str, *, num_classes: int = 21, aux_loss: bool = False,
              pretrained: Optional[PathLike] = None) -> nn.Module:
    """Build a model by name (a key of :data:`MODELS`); arguments as the factories'."""
    if name not in MODELS:
        raise FcnsegError(f"expected one of {', '.join(MODELS)}; got {name!r}")
    return MODELS[name](num_classes=num_classes, aux_loss=aux_loss, pretrained=pretrained)


@dataclass
class LoadReport:
    """What ``load_pretrained`` loaded into a model, and what kept its initial values.

    Attributes:
        path: the weights file.
        loaded: tensors loaded from the file.
        total: tensors of the model (``num_batches_tracked`` not counted).
        reinitialised: the class layers that do not fit the model's class count (kept at their init: random
            score convolutions, bilinear upsampling), and aux-head tensors the file lacks.
        file_classes / classes: the file's and the model's class counts (None: an ImageNet backbone file).
    """

    path: str
    loaded: int
    total: int
    reinitialised: List[str] = field(default_factory=list)
    file_classes: Optional[int] = None
    classes: Optional[int] = None

    def line(self) -> str:
        """One line for the training log."""
        if self.file_classes is None:
            return (f"pretrained {self.path}: loaded the backbone ({self.loaded} of {self.total} tensors); the "
                    "heads start from their initial values")
        if not self.reinitialised:
            return f"pretrained {self.path}: loaded all {self.loaded} tensors"
        names = ", ".join(sorted({k.rsplit(".", 1)[0] for k in self.reinitialised})[:6])
        return (f"fine-tuning from {self.path}: loaded {self.loaded} of {self.total} tensors, reinitialised "
                f"{len(self.reinitialised)} ({names}) for {self.classes} classes (the file has {self.file_classes})")


def load_pretrained(model: nn.Module, path: PathLike) -> LoadReport:
    """Load a local weights file into ``model`` (a model of this module); say what was loaded.

    Two kinds of file are accepted (a torchvision-reference checkpoint's ``"model"`` is unwrapped):

    * a full segmentation state dict (keys ``backbone.*``): loaded strictly, except that ``aux_classifier.*``
      may be present or absent on either side and, when the file's class count differs from the model's,
      the class-dependent head tensors are skipped (kept at their init): fine-tuning to new classes;
    * an ImageNet ResNet state dict (keys ``conv1.weight``, ``layer1.*``; ``fc.*`` ignored): loaded strictly
      into the backbone; the heads keep their init.

    Raises:
        FcnsegError: unreadable file, or weights of another architecture; nothing is loaded then.
    """
    sd = state_dict_of(read_checkpoint(path), path)
    total = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    if any(k.startswith("backbone.") for k in sd):
        return _load_full(model, dict(sd), path, total)
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
        backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        _load_strict(model.get_submodule("backbone"), backbone, path, "an ImageNet ResNet state dict for this backbone")
        return LoadReport(str(path), sum(1 for k in backbone if not k.endswith("num_batches_tracked")), total)
    raise FcnsegError(f"expected a segmentation state dict (keys 'backbone.*') or an ImageNet ResNet state dict "
                      f"(keys 'conv1.weight', 'layer1.*') in {str(path)!r}, got keys {list(sd)[:3]}")


def _load_full(model: nn.Module, sd: dict, path: PathLike, total: int) -> LoadReport:
    own = model.state_dict()
    has_aux = any(k.startswith("aux_classifier.") for k in own)
    if not has_aux:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    want = classes_from_state(own)
    got = classes_from_state(sd)
    skipped = []
    if got is not None and got != want:
        # Only tensors with a class dimension (score convs, their biases, the per-class upsampling) may differ.
        skipped = [k for k, v in sd.items() if k in own and v.shape != own[k].shape and want in own[k].shape[:2]]
        sd = {k: v for k, v in sd.items() if k not in skipped}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    absent_aux = [k for k in missing if k.startswith("aux_classifier.")]
    _load_strict(model, sd, path, f"a state dict of this architecture ({want} classes)",
                 allowed_missing=set(skipped) | set(absent_aux))
    loaded = sum(1 for k in sd if k in own and not k.endswith("num_batches_tracked"))
    return LoadReport(str(path), loaded, total, skipped + absent_aux, got, want)


def _load_strict(module: nn.Module, sd: Mapping[str, Tensor], path: PathLike, expected: str,
                 allowed_missing: frozenset[str] | set[str] = frozenset()) -> None:
    """Load ``sd`` into ``module`` only if keys and shapes all fit; otherwise raise and change nothing."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and k not in allowed_missing and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise FcnsegError(f"expected {expected} in {str(path)!r}, got {len(missing)} missing keys "
                          f"{missing[:2]}, {len(unexpected)} unexpected {unexpected[:2]} and {len(wrong)} of another "
                          f"shape {wrong[:2]}; try the weights of the same architecture")
    module.load_state_dict(sd, strict=False)
