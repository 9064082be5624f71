"""Model metadata that travels with an exported model (ONNX ``metadata_props`` or an engine's sidecar JSON).

Every value is stored as a JSON string under a ``fcnseg.`` key so any ONNX tool shows it and the
runtime can read it back without guessing.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping, Optional

from .errors import FcnsegError, one_line
from .class_map import ClassMap
from .classes import BASE_SIZE, MEAN, STD, VOC_CLASSES, voc_palette

PREFIX = "fcnseg."


@dataclass
class ModelMetadata:
    """What a deployed model needs besides its weights.

    Attributes:
        arch: model name from ``fcnseg.train.models.MODELS``.
        num_classes: number of output classes.
        classes: class names, index = class id.
        palette: one [r, g, b] per class, for colourised masks.
        mean / std: normalisation applied to RGB in [0, 1].
        input_size: shorter side the image is resized to before inference (the eval preset's base size).
        input_range: pixel range before normalisation ("0-1": uint8 divided by 255).
        precision: "fp32", "fp16" or "int8".
        argmax: True when the graph ends in ArgMax and outputs a uint8 ``mask`` instead of ``logits``.
        miou: validation mIoU recorded at training time, if known.
        min_size / max_size: the input height/width range the graph is declared for (``fcn-export onnx
            --min-size/--max-size``); the runtime refuses a ``size`` outside it. None: not declared.
        input_hw: [H, W] of a graph with a static input (``--static``): images are resized to exactly this.
    """

    arch: str = "unknown"
    num_classes: int = len(VOC_CLASSES)
    classes: list = field(default_factory=lambda: list(VOC_CLASSES))
    palette: list = field(default_factory=lambda: voc_palette(len(VOC_CLASSES)).tolist())
    mean: list = field(default_factory=lambda: list(MEAN))
    std: list = field(default_factory=lambda: list(STD))
    input_size: Optional[int] = BASE_SIZE
    input_range: str = "0-1"
    precision: str = "fp32"
    argmax: bool = False
    miou: Optional[float] = None
    min_size: Optional[int] = None
    max_size: Optional[int] = None
    input_hw: Optional[list] = None

    def __post_init__(self) -> None:
        # Defaults describe VOC's 21 classes; another class count gets generic names and distinct colours.
        if len(self.classes) != self.num_classes:
            self.classes = list(ClassMap.generic(self.num_classes).names)
        if len(self.palette) < self.num_classes:
            self.palette = ClassMap(tuple(self.classes), tuple(tuple(c) for c in self.palette)).palette().tolist()

    @classmethod
    def for_classes(cls, class_map: ClassMap, **fields_: object) -> "ModelMetadata":
        """Metadata carrying ``class_map``'s names and colours (other fields as given)."""
        return cls(num_classes=class_map.num_classes, classes=list(class_map.names),  # type: ignore[arg-type]
                   palette=[list(c) for c in class_map.colours], **fields_)

    def class_map(self) -> ClassMap:
        """The model's classes as a ``ClassMap`` (names and colours)."""
        return ClassMap(tuple(self.classes), tuple(tuple(int(v) for v in c) for c in self.palette[:self.num_classes]),
                        source=f"the model ({self.arch})")

    def with_classes(self, class_map: ClassMap) -> "ModelMetadata":
        """This metadata with ``class_map``'s names and colours (``--classes FILE`` on a loaded model).

        Raises:
            FcnsegError: the map's class count differs from the model's.
        """
        if class_map.num_classes != self.num_classes:
            raise FcnsegError(f"expected a class file with the model's {self.num_classes} classes, got "
                              f"{class_map.num_classes} in {class_map.source}; try a file with "
                              f"{self.num_classes} names")
        return replace(self, classes=list(class_map.names), palette=[list(c) for c in class_map.colours])

    def to_props(self) -> dict[str, str]:
        """Encode as string key/value pairs for ONNX ``metadata_props``."""
        return {PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> "ModelMetadata":
        """Decode from ``metadata_props`` (unknown keys ignored, missing ones default)."""
        names = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in props.items():
            name = key[len(PREFIX):] if key.startswith(PREFIX) else None
            if name in names:
                kwargs[name] = json.loads(value)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelMetadata":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def metadata_from_props(props: Mapping[str, str], source: str, channels: object = None) -> ModelMetadata:
    """``ModelMetadata.from_props`` for a model file's props; unreadable values become one ``FcnsegError``.

    Shared by the ONNX Runtime and OpenVINO backends (``source`` names the file in the message). A model
    without fcnseg metadata (exported by another tool) takes its class count from its output ``channels``
    (when that is a number), with generic names: see ``without_metadata``.
    """
    if not any(k.startswith(PREFIX) for k in props):
        return without_metadata(source, channels)
    try:
        return ModelMetadata.from_props(props)
    except (ValueError, TypeError) as e:
        raise FcnsegError(f"expected fcnseg.* metadata_props holding JSON in {source!r}, got unreadable values "
                          f"({one_line(e, 300)}); try re-exporting with fcn-export") from None


def without_metadata(source: str, channels: object = None) -> ModelMetadata:
    """Defaults for a model that carries no fcnseg metadata, its class count taken from its output channels.

    One line on stderr says what was assumed (``--classes FILE`` gives the names).
    """
    n = channels if isinstance(channels, int) and not isinstance(channels, bool) and 0 < channels <= 255 else None
    meta = ModelMetadata(num_classes=n) if n is not None else ModelMetadata()
    how = f"{meta.num_classes} classes from its output channels" if n is not None else \
        f"{meta.num_classes} VOC classes (its output has no class dimension)"
    warnings.warn(f"{source}: no fcnseg metadata; assuming {how}, ImageNet mean/std and size {meta.input_size}; "
                  "pass --classes FILE for the class names, or export with fcn-export to record them",
                  NoMetadataWarning, stacklevel=3)
    return meta


class NoMetadataWarning(UserWarning):
    """A model file without fcnseg metadata was loaded with assumed classes and normalisation."""
