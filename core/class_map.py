"""A dataset's classes: names, colours and the ignore index, read from the files users bring.

One ``ClassMap`` travels from the dataset through training (the checkpoint), export (ONNX metadata, engine
sidecar, Triton labels file, Jetson bundle) to the runtime (overlays, legends, ``--stats``) and evaluation
(per-class tables). VOC's 21 classes are the default.

Class files (``ClassMap.read``):

- JSON or YAML: ``{"classes": [{"name": "road", "color": [128, 64, 128]}, ...], "ignore_index": 255}``, or a
  plain list of names (``["background", "crack"]``) or of ``{"name", "color"}`` entries; colours are optional
  (missing ones come from the generated palette);
- CVAT's ``labelmap.txt`` (its "Segmentation mask 1.1" export): ``name:r,g,b:parts:actions`` per line, ``#``
  comments;
- a plain text file: one class name per line.

Colours past a map's own come from ``distinct_colours``: VOC's bit-interleaved palette with every colour the
map already uses skipped, so each class keeps a colour no other class has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from .errors import FcnsegError, import_optional

Colour = Tuple[int, int, int]
PathLike = Union[str, "Path"]
VOID_COLOUR: Colour = (224, 224, 192)   # VOC's colour for index 255 (object borders, "difficult")
CLASS_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".txt")
MAX_CLASSES = 255                       # uint8 masks: 0..254, 255 is the ignore index


def distinct_colours(n: int, used: Iterable[Sequence[int]] = ()) -> List[Colour]:
    """``n`` colours, none of them in ``used`` and none repeated (VOC's palette order, then a hue walk)."""
    taken = {tuple(int(v) for v in c) for c in used}
    out: List[Colour] = []
    for c in voc_palette(256)[1:]:          # entry 0 (black) is the usual background colour
        if len(out) >= n:
            return out
        colour = (int(c[0]), int(c[1]), int(c[2]))
        if colour not in taken and colour != VOID_COLOUR:
            out.append(colour)
            taken.add(colour)
    i = 0
    while len(out) < n:                     # past 255 new colours: walk the hues by the golden ratio
        h = (i * 0.618033988749895) % 1.0
        colour = tuple(int(255 * v) for v in _hsv_to_rgb(h, 0.65, 0.55 + 0.4 * ((i // 7) % 2)))
        if colour not in taken:
            out.append(colour)          # type: ignore[arg-type]
            taken.add(colour)           # type: ignore[arg-type]
        i += 1
    return out


def _hsv_to_rgb(h: float, s: float, v: float) -> Tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, s, v)


@dataclass(frozen=True)
class ClassMap:
    """Class names (index = class id), one colour each, and the label value that marks pixels to ignore.

    Attributes:
        names: the class names.
        colours: one (r, g, b) per class; all distinct.
        ignore_index: the label value that is not scored (255 for VOC and Cityscapes' trainIds).
        source: where the map came from (a file, "VOC", "generic"), for messages.
    """

    names: Tuple[str, ...]
    colours: Tuple[Colour, ...] = ()
    ignore_index: int = IGNORE_INDEX
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not names:
            raise FcnsegError(f"expected at least one class in {self.source or 'the class map'}, got none; "
                              "try a class file with one name per line")
        if len(names) > MAX_CLASSES:
            raise FcnsegError(f"expected at most {MAX_CLASSES} classes (uint8 masks, 255 = ignore), got "
                              f"{len(names)} in {self.source or 'the class map'}")
        given = [_colour(c, self.source) for c in self.colours][:len(names)]
        colours = given + distinct_colours(len(names) - len(given), given)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colours", tuple(colours))
        self._check_unique()

    def _check_unique(self) -> None:
        for what, values in (("names", self.names), ("colours", self.colours)):
            seen: Dict[Any, int] = {}
            for i, v in enumerate(values):
                if v in seen:
                    shown = v if what == "names" else ",".join(str(c) for c in v)
                    raise FcnsegError(f"expected distinct class {what} in {self.source or 'the class map'}, got "
                                      f"{shown!r} for classes {seen[v]} and {i}; rename or recolour one of them")
                seen[v] = i

    # ------------------------------------------------------------------ constructors
    @classmethod
    def voc(cls) -> "ClassMap":
        """PASCAL VOC's 21 classes in VOC's colours (the default)."""
        return cls(VOC_CLASSES, tuple(tuple(int(v) for v in c) for c in voc_palette(len(VOC_CLASSES))),
                   source="VOC")

    @classmethod
    def generic(cls, n: int, source: str = "generic") -> "ClassMap":
        """``n`` classes named ``class_0..``, with distinct colours (a model that carries no names)."""
        if n == len(VOC_CLASSES):
            return cls.voc()
        colours = tuple(tuple(int(v) for v in c) for c in voc_palette(min(n, MAX_CLASSES)))
        return cls(tuple(f"class_{i}" for i in range(n)), colours, source=source)

    @classmethod
    def read(cls, path: PathLike) -> "ClassMap":
        """A class file: JSON, YAML, CVAT's ``labelmap.txt`` or one name per line (see the module docstring).

        Raises:
            FcnsegError: a missing or unreadable file, no classes, duplicate names or colours.
        """
        p = Path(path)
        if not p.is_file():
            raise FcnsegError(f"expected a class file (JSON, YAML, labelmap.txt or one name per line), got "
                              f"{str(p)!r} which does not exist; check --classes")
        text = p.read_text(encoding="utf-8", errors="replace")
        if p.suffix.lower() == ".json":
            return cls.from_obj(_parse_json(text, p), str(p))
        if p.suffix.lower() in (".yaml", ".yml"):
            yaml = import_optional("yaml", "PyYAML for YAML class files", "`pip install pyyaml`, or a JSON file")
            try:
                return cls.from_obj(yaml.safe_load(text), str(p))
            except yaml.YAMLError as e:
                raise FcnsegError(f"expected a YAML class file, got unreadable {str(p)!r} ({str(e).splitlines()[0]})")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if any(":" in ln for ln in lines):
            return cls(*_parse_labelmap(lines, p), source=str(p))
        return cls(tuple(lines), source=str(p))

    @classmethod
    def from_obj(cls, obj: Any, source: str = "") -> "ClassMap":
        """A class map from parsed JSON/YAML (see the module docstring for the shapes)."""
        ignore = IGNORE_INDEX
        if isinstance(obj, Mapping):
            ignore = obj.get("ignore_index", IGNORE_INDEX)
            if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255:
                raise FcnsegError(f"expected ignore_index an integer 0..255 in {source!r}, got {ignore!r}; try 255")
            obj = obj.get("classes")
        if not isinstance(obj, list):
            raise FcnsegError(f"expected a list of classes (or {{\"classes\": [...]}}) in {source!r}, got "
                              f"{type(obj).__name__}; see docs/datasets.md for the class file format")
        names, colours = [], []
        for entry in obj:
            if isinstance(entry, Mapping):
                names.append(str(entry.get("name", "")))
                colour = entry.get("color", entry.get("colour"))
                if colour is not None:
                    colours.append(_colour(colour, source))
            else:
                names.append(str(entry))
        if colours and len(colours) != len(names):
            raise FcnsegError(f"expected a colour for every class or for none in {source!r}, got {len(colours)} "
                              f"colours for {len(names)} classes")
        return cls(tuple(names), tuple(colours), ignore, source=source)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassMap":
        return cls(tuple(d["names"]), tuple(tuple(c) for c in d.get("colours", ())),
                   int(d.get("ignore_index", IGNORE_INDEX)), source=str(d.get("source", "")))

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self, n: Optional[int] = None) -> np.ndarray:
        """(n, 3) uint8 colours: the map's own, then distinct generated ones (default n: the class count)."""
        n = self.num_classes if n is None else n
        own = list(self.colours[:n])
        return np.asarray(own + distinct_colours(n - len(own), own), dtype=np.uint8).reshape(-1, 3)

    def to_dict(self) -> Dict[str, Any]:
        return {"names": list(self.names), "colours": [list(c) for c in self.colours],
                "ignore_index": self.ignore_index, "source": self.source}

    def to_json_obj(self) -> Dict[str, Any]:
        """The JSON class file's content (``ClassMap.read`` reads it back)."""
        return {"classes": [{"name": n, "color": list(c)} for n, c in zip(self.names, self.colours)],
                "ignore_index": self.ignore_index}

    def labelmap_text(self) -> str:
        """CVAT's ``labelmap.txt`` for this map (the VOC-layout exports' class file)."""
        rows = [f"{n}:{','.join(str(v) for v in c)}::" for n, c in zip(self.names, self.colours)]
        return "# label:color_rgb:parts:actions\n" + "\n".join(rows) + "\n"

    def labels_text(self) -> str:
        """One name per line (Triton's ``label_filename``)."""
        return "\n".join(self.names) + "\n"

    # ------------------------------------------------------------------ colour masks
    def encode_colours(self, rgb: np.ndarray, source: str = "") -> np.ndarray:
        """An HxWx3 colour label image -> HxW uint8 class ids (VOC's void colour -> the ignore index).

        Raises:
            FcnsegError: colours that are no class's, named with how many pixels have them.
        """
        ids, unknown = self.lookup_colours(rgb)
        if unknown:
            shown = ", ".join(f"({r},{g},{b})" for r, g, b in unknown[:3])
            where = f" {self.source}" if self.source else ""
            raise FcnsegError(f"expected only the colours of the class map{where} in colour labels, "
                              f"got {len(unknown)} others ({shown}) in {source or 'a label image'}; add them to "
                              "the class file or fix the labels")
        return ids

    def lookup_colours(self, rgb: np.ndarray) -> Tuple[np.ndarray, List[Colour]]:
        """(class ids with unknown colours at the ignore index, the unknown colours)."""
        arr = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        code = (arr[..., 0].astype(np.int32) << 16) | (arr[..., 1].astype(np.int32) << 8) | arr[..., 2]
        values, inverse = np.unique(code.ravel(), return_inverse=True)
        table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.colours)}
        void = (VOID_COLOUR[0] << 16) | (VOID_COLOUR[1] << 8) | VOID_COLOUR[2]
        lut = np.full(len(values), self.ignore_index, dtype=np.uint8)
        unknown: List[Colour] = []
        for j, v in enumerate(values.tolist()):
            if v in table:
                lut[j] = table[v]
            elif v != void:
                unknown.append(((v >> 16) & 255, (v >> 8) & 255, v & 255))
        return lut[inverse].reshape(code.shape), unknown


def _colour(value: Any, source: str) -> Colour:
    """``[r, g, b]`` of integers 0..255 as a tuple, or a one-line error naming the class file."""
    try:
        colour = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= v <= 255 for v in colour) or isinstance(value, str):
        raise FcnsegError(f"expected colours of three values 0..255 in {source or 'the class map'}, got {value!r}; "
                          "try [128, 64, 128]")
    return colour   # type: ignore[return-value]


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FcnsegError(f"expected a JSON class file, got unreadable {str(path)!r} ({e})") from None


def _parse_labelmap(lines: Sequence[str], path: Path) -> Tuple[Tuple[str, ...], Tuple[Colour, ...]]:
    """CVAT ``labelmap.txt`` rows ``name:r,g,b:parts:actions`` -> names and colours."""
    names, colours = [], []
    for ln in lines:
        parts = ln.split(":")
        try:
            colour = tuple(int(v) for v in parts[1].split(","))
        except (IndexError, ValueError):
            raise FcnsegError(f"expected labelmap rows like 'road:128,64,128::' in {str(path)!r}, got {ln!r}") from None
        if len(colour) != 3:
            raise FcnsegError(f"expected three colour values in {str(path)!r}, got {ln!r}")
        names.append(parts[0].strip())
        colours.append(colour)
    return tuple(names), tuple(colours)   # type: ignore[return-value]
