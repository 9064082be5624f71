"""Synthetic segmentation datasets in the layouts users bring: the embedded default data, since none can be
downloaded here.

``synthesize(root)`` writes a synthetic PASCAL VOC 2012 under ``ROOT/VOCdevkit/VOC2012/{JPEGImages,
SegmentationClass, ImageSets/Segmentation}`` exactly as VOC lays it out: JPEG images, palette PNG labels (values
0..20 and 255) and the split lists. ``layout=`` writes the same kind of samples as CVAT's "Segmentation mask 1.1"
export, Cityscapes, ADE20K, image/mask folder pairs, labelme polygons or COCO instances (``SYNTH_LAYOUTS``), and
``classes=`` draws N classes (or a ``ClassMap``'s) instead of VOC's 21.

Each of the 20 object classes is a (shape, hue, texture) combination (see ``CLASS_STYLES``). Each of ten hues
is shared by two classes, which then differ in texture and shape, so a colour lookup is not enough.
Backgrounds are cluttered with gradients, noise and low-saturation distractor shapes that carry the same
shapes and textures as the classes (but not their colours). Objects overlap, are cut by the image border and
get a void (255) ring along every object boundary, like VOC's. In the polygon layouts (labelme, COCO) objects
do not overlap, so each polygon is exactly what the image shows of its object.
"""

from __future__ import annotations

import colorsys
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Dict, Iterator, List, NamedTuple, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..core.atomic import atomic_path, write_text
from ..core.class_map import VOID_COLOUR, ClassMap
from ..core.errors import FcnsegError
from ..core.output_guard import check_output_dir
from ..core.classes import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, voc_palette

__all__ = ["ClassStyle", "CLASS_STYLES", "THIN_CLASSES", "SYNTH_LAYOUTS", "PolygonShape", "synthesize",
           "synth_class_map", "parse_classes", "split_samples", "render_sample", "render_polygon_sample",
           "render_thin_sample"]

PathLike = Union[str, "os.PathLike[str]"]
ClassesLike = Union[None, int, ClassMap]

SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring")
HUES = tuple(36.0 * i for i in range(10))
TEXTURES = ("solid", "stripes", "dots")
JPEG_QUALITY = 90
# Written first into the dataset's folder (VOCdevkit/VOC2012 for voc and cvat, ROOT for the other layouts):
# the folder is ours, and may be written again (in the same layout).
MARKER = ".fcnseg-synth.json"
# Sizes relative to the shorter image side: object radius range, texture period range.
_RADIUS = (0.16, 0.32)
_PERIOD = (0.05, 0.08)

SYNTH_LAYOUTS = ("voc", "cvat", "cityscapes", "ade20k", "folder", "labelme", "coco")
# Layouts whose label ids are bounded by the benchmark's own table (Cityscapes' 19 train ids, ADE20K's 150).
_MAX_CLASSES = {"cityscapes": 19, "ade20k": 150}


@dataclass(frozen=True)
class ClassStyle:
    """How one class looks: its outline, its hue (degrees) and its surface pattern."""

    name: str
    shape: str
    hue: float
    texture: str


def _class_styles() -> tuple[ClassStyle, ...]:
    # Classes k and k+10 (k = 0..9) share hue k: one is solid, the other striped or dotted, and their
    # shapes differ (k%6 vs (k+4)%6), so telling them apart takes texture or shape, not colour.
    styles = []
    for k in range(NUM_CLASSES - 1):
        texture = "solid" if k < len(HUES) else ("stripes", "dots")[k % 2]
        styles.append(ClassStyle(VOC_CLASSES[k + 1], SHAPES[k % len(SHAPES)], HUES[k % len(HUES)], texture))
    return tuple(styles)


CLASS_STYLES: tuple[ClassStyle, ...] = _class_styles()


MAX_NUMBERED = len(CLASS_STYLES) + 1   # classes=N: background and one class per object style


def synthesize(root: PathLike, *, num_train: int = 200, num_val: int = 50, size: int = 160, seed: int = 0,
               progress: bool = True, thin_structures: bool = False, layout: str = "voc",
               classes: ClassesLike = None) -> Path:
    """Write a synthetic segmentation dataset under ``root`` in ``layout``.

    Images are written first and the files naming them (split lists, COCO annotations, class files) last, each
    atomically, so an interrupted run never leaves a list naming a missing file. The same arguments give
    byte-identical files.

    Layouts (``SYNTH_LAYOUTS``; ``fcnseg.datasets.open_dataset(root, split)`` reads the first five):

    - ``voc``: ``root/VOCdevkit/VOC2012`` with palette PNG labels. With classes other than VOC's, the class
      map is written to ``root/classes.json``: read the dataset with ``--classes ROOT/classes.json``.
    - ``cvat``: the same tree with colour PNG labels and CVAT's ``labelmap.txt`` in ``VOC2012/``.
    - ``cityscapes``: ``leftImg8bit/`` and ``gtFine/`` (real label ids: class k is train id k).
    - ``ade20k``: ``ADEChallengeData2016/`` (class k stored as k+1, void as 0) and its ``objectInfo150.csv``.
    - ``folder``: ``images/<split>/``, colour ``masks/<split>/`` and ``classes.json``.
    - ``labelme``: ``<split>/<id>.jpg`` with labelme 5 polygon files ``<id>.json``, and ``labelmap.txt``.
    - ``coco``: ``images/<split>/`` and ``annotations/instances_<split>.json`` (category k: class k).

    Args:
        root: destination folder.
        num_train: number of ``train`` images.
        num_val: number of ``val`` images (every class is drawn in ``val`` when it has enough objects).
        size: approximate image height; widths vary from 0.75x to 1.33x of it.
        seed: random seed.
        progress: show a progress bar.
        thin_structures: draw only lines 1-4 pixels wide on the cluttered backdrop, the classes of
            ``THIN_CLASSES`` (cracks, wires, roads), to measure what resizing a large image loses
            (``mode="slide"``); not in the polygon layouts.
        layout: one of ``SYNTH_LAYOUTS``.
        classes: None (VOC's 21; Cityscapes' 19 for ``cityscapes``), N (2..21: background and the first N-1
            of ``CLASS_STYLES``) or a ``ClassMap`` (class 0 is the background; the others cycle through
            ``CLASS_STYLES``).

    Returns:
        ``root`` as a Path: the folder to pass as ``--data-path``.

    Raises:
        FcnsegError: for non-positive counts, a size under 32 pixels, an unknown layout or classes it cannot
            store; when ``root`` is a file, or holds a dataset that synthesize did not write (no ``MARKER``
            file) or a synthetic one of another layout, which it never writes into.
    """
    _check_arguments(num_train, num_val, size, layout)
    class_map = synth_class_map(classes, layout)
    if thin_structures and (layout in _POLYGON_LAYOUTS or class_map.num_classes <= len(THIN_CLASSES)):
        raise FcnsegError(f"expected thin_structures with a raster layout and 4 or more classes, got layout "
                          f"{layout!r} with {class_map.num_classes} classes; try layout='voc' without classes")
    root = Path(root)
    writer = _WRITERS[layout](root, class_map)
    _check_root(root, writer, num_train, num_val)
    write_text(writer.marker_dir() / MARKER, json.dumps(_marker(num_train, num_val, size, seed, thin_structures,
                                                                 layout, class_map)))
    splits = {"train": [writer.image_id("train", j, j + 1) for j in range(num_train)],
              "val": [writer.image_id("val", j, num_train + j + 1) for j in range(num_val)]}
    with tqdm(total=num_train + num_val, desc=f"synthesizing {layout}", unit="img", disable=not progress) as bar:
        for split_index, (split, ids) in enumerate(splits.items()):
            for image_id, (rng, objects) in zip(ids, split_samples(seed, split_index, len(ids),
                                                                    class_map.num_classes)):
                if thin_structures:
                    writer.write(split, image_id, *render_thin_sample(rng, size=size))
                elif writer.polygons:
                    writer.write(split, image_id, *render_polygon_sample(rng, size=size, classes=objects))
                else:
                    writer.write(split, image_id, *render_sample(rng, size=size, classes=objects))
                bar.update(1)
    writer.finish(splits)
    return root


def _check_arguments(num_train: int, num_val: int, size: int, layout: str) -> None:
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("size", size, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FcnsegError(f"expected {name} to be an integer >= {low}, got {value!r}")
    if layout not in SYNTH_LAYOUTS:
        raise FcnsegError(f"expected layout to be one of {', '.join(SYNTH_LAYOUTS)}, got {layout!r}; try 'voc'")


def _marker(num_train: int, num_val: int, size: int, seed: int, thin_structures: bool, layout: str,
            class_map: ClassMap) -> dict:
    marker: Dict[str, object] = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
                                 "thin_structures": thin_structures}
    if layout != "voc" or class_map != ClassMap.voc():   # the default call's marker stays as it always was
        marker.update(layout=layout, classes=list(class_map.names))
    return marker


def synth_class_map(classes: ClassesLike = None, layout: str = "voc") -> ClassMap:
    """The classes ``synthesize`` draws for ``classes`` (see there) in ``layout``.

    Raises:
        FcnsegError: not None, an int 2..21 or a ``ClassMap``; under 2 classes, an ignore index other than 255,
            or more classes than the layout stores (Cityscapes 19, ADE20K 150).
    """
    if classes is None:
        return _cityscapes_classes() if layout == "cityscapes" else ClassMap.voc()
    if isinstance(classes, ClassMap):
        class_map = classes
    elif isinstance(classes, int) and not isinstance(classes, bool) and 2 <= classes <= MAX_NUMBERED:
        class_map = _numbered_classes(classes)
    else:
        raise FcnsegError(f"expected classes N between 2 and {MAX_NUMBERED} or a ClassMap, got {classes!r}; "
                          "try classes=4")
    limit = _MAX_CLASSES.get(layout, 255)
    if not 2 <= class_map.num_classes <= limit or class_map.ignore_index != IGNORE_INDEX:
        raise FcnsegError(f"expected 2 to {limit} classes with ignore index {IGNORE_INDEX} for layout {layout!r}, "
                          f"got {class_map.num_classes} with ignore index {class_map.ignore_index} from "
                          f"{class_map.source or 'the class map'}; try fewer classes or another layout")
    return class_map


def _numbered_classes(n: int) -> ClassMap:
    """Background and the first ``n - 1`` object styles, in VOC's names and colours."""
    if n == NUM_CLASSES:
        return ClassMap.voc()
    names = ("background",) + tuple(s.name for s in CLASS_STYLES[:n - 1])
    colours = tuple(tuple(int(v) for v in c) for c in voc_palette(n))
    return ClassMap(names, colours, source=f"fcn-data synth --classes {n}")


def _cityscapes_classes() -> ClassMap:
    from .layouts import cityscapes_class_map_and_lut

    return cityscapes_class_map_and_lut()[0]


def parse_classes(text: str) -> Union[int, ClassMap]:
    """``--classes``: a class count N (2..21) or a class file (``ClassMap.read``).

    Raises:
        FcnsegError: neither a count in range nor an existing file (or an unreadable class file).
    """
    value = text.strip()
    if value.isdigit() and 2 <= int(value) <= MAX_NUMBERED:
        return int(value)
    if not value.isdigit() and Path(value).is_file():
        return ClassMap.read(value)
    raise FcnsegError(f"expected --classes N between 2 and {MAX_NUMBERED} or a class file, got {text!r}; "
                      "try --classes 4 or --classes classes.json")


def _check_root(root: Path, writer: _Writer, num_train: int, num_val: int) -> None:
    """Refuse a file, any dataset content synthesize did not write, and a synthetic dataset it would spoil,
    before writing anything."""
    check_output_dir(root, "ROOT", what="a folder (new or empty)",
                     first_file=str((writer.marker_dir() / MARKER).relative_to(root)))
    for folder in (root, root / "VOCdevkit" / "VOC2012"):
        if (folder / MARKER).is_file():
            _check_marker(folder, _read_marker(folder / MARKER), writer, num_train, num_val)
    for folder, paths in writer.owned():
        if (folder / MARKER).is_file():
            continue
        found = [p for path in paths for p in _entries(path)]
        if found:
            raise FcnsegError(f"expected ROOT to be new or to hold a dataset written by fcn-data synth, got "
                              f"{str(folder)!r} holding {len(found)} files it did not write (e.g. "
                              f"{found[0].relative_to(root)}); try another ROOT, this one is left untouched")


def _check_marker(folder: Path, marker: dict, writer: _Writer, num_train: int, num_val: int) -> None:
    """A synthetic dataset is written over only in its own layout, and with other counts only where split
    lists name the samples (elsewhere the old extra images would stay and be read)."""
    old = marker.get("layout", "voc")
    if old != writer.name:
        raise FcnsegError(f"expected ROOT to be new or to hold a synthetic {writer.name} dataset, got a synthetic "
                          f"{old} dataset in {str(folder)!r}; try another ROOT, this one is left untouched")
    counts = (marker.get("num_train"), marker.get("num_val"))
    if not writer.lists and counts != (num_train, num_val):
        raise FcnsegError(f"expected ROOT to be new or to hold a synthetic {writer.name} dataset of {num_train} "
                          f"train + {num_val} val images, got one of {counts[0]} + {counts[1]} in {str(folder)!r}; "
                          "try another ROOT (the old images would stay), this one is left untouched")


def _read_marker(path: Path) -> dict:
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _entries(path: Path) -> List[Path]:
    """The content of ``path``: its entries when a folder, itself when a file."""
    if path.is_dir():
        return list(path.iterdir())
    return [path] if path.is_file() else []


def split_samples(seed: int, split_index: int, count: int,
                  num_classes: int = NUM_CLASSES) -> Iterator[tuple]:
    """(random generator, object classes) of each image of a split, as ``synthesize`` draws them: rendering
    with them again gives the same samples (``split_index``: 0 for train, 1 for val)."""
    classes = _class_schedule(np.random.default_rng([seed, split_index, 0]), count, num_classes)
    for i in range(count):
        yield np.random.default_rng([seed, split_index, i + 1]), classes[i]


def _class_schedule(rng: np.random.Generator, num_images: int, num_classes: int = NUM_CLASSES) -> list:
    """The classes of each image: 2-5 objects, classes dealt from shuffled decks so every class is used."""
    objects = num_classes - 1
    counts = rng.choice([2, 3, 4, 5], size=num_images, p=[0.2, 0.35, 0.3, 0.15])
    # Small splits get extra objects (up to 6 an image) until there is room for every class.
    while counts.sum() < objects and counts.min() < 6:
        counts[int(np.argmin(counts))] += 1
    decks = np.concatenate([rng.permutation(objects) + 1 for _ in range(-(-int(counts.sum()) // objects))])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [decks[bounds[j]:bounds[j + 1]].tolist() for j in range(num_images)]


def _style(cls: int) -> ClassStyle:
    """The look of class ``cls`` (1..): past the 20 styles, they repeat."""
    return CLASS_STYLES[(cls - 1) % len(CLASS_STYLES)]


def render_sample(rng: np.random.Generator, *, size: int, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image with objects of ``classes`` (ids 1..).

    Returns:
        (HxWx3 uint8 image, HxW uint8 label with 255 on the boundary rings).
    """
    return _render(rng, size, classes, _place)


class PolygonShape(NamedTuple):
    """One object of a polygon sample: its class, outline and how many pixels it covers.

    The outline is (K, 2) x, y in COCO's continuous frame, where pixel (x, y) covers [x, x+1) x [y, y+1):
    within [0, W] x [0, H], and the object's pixels are those whose centre lies inside it.
    """

    label: int
    points: np.ndarray
    area: int


def render_polygon_sample(rng: np.random.Generator, *, size: int,
                          classes: list) -> tuple[np.ndarray, np.ndarray, List[PolygonShape]]:
    """Draw one image whose objects are single polygons that do not overlap (objects that find no free room
    are left out), as labelme and COCO store them; a ring is one polygon, its hole joined to the rim.

    Returns:
        (HxWx3 uint8 image, HxW uint8 label with 255 on the boundary rings, the objects' polygons).
    """
    found: List[Optional[tuple]] = []

    def place(rng: np.random.Generator, shape: str, radius: float, owner: np.ndarray, count: int) -> np.ndarray:
        mask, polygon = _place_polygon(rng, shape, radius, owner)
        found.append(None if polygon is None else (polygon, int(mask.sum())))
        return mask

    image, label = _render(rng, size, classes, place)
    shapes = [PolygonShape(cls, *f) for cls, f in zip(classes, found) if f is not None]
    return image, label, shapes


def _render(rng: np.random.Generator, size: int, classes: list,
            place: Callable[..., np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    h, w = _image_hw(rng, size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(rng, h, w, yy, xx)
    owner = np.zeros((h, w), dtype=np.uint8)
    radii = np.sort(rng.uniform(*_RADIUS, size=len(classes)) * min(h, w))[::-1]
    placed = [0]
    for cls, radius in zip(classes, radii):
        style = _style(cls)
        mask = place(rng, style.shape, radius, owner, len(placed))
        if mask.any():
            image[mask] = _texture(rng, style, mask, yy, xx, radius, saturated=True)
        owner[mask] = len(placed)
        placed.append(cls)
    image += rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)
    label = np.asarray(placed, dtype=np.uint8)[owner]
    label[_boundary(owner, 1 if size < 256 else 2)] = IGNORE_INDEX
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


# Thin structures (label id, what it stands for, width range in pixels, gray level range, count range): dark
# cracks, bright wires and mid-gray roads, each class by its width and brightness, on the cluttered backdrop.
THIN_CLASSES = ((1, "crack", (1, 2), (20, 60), (2, 5)), (2, "wire", (2, 3), (215, 250), (1, 4)),
                (3, "road", (3, 4), (110, 150), (1, 3)))


def render_thin_sample(rng: np.random.Generator, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of thin polylines (``THIN_CLASSES``) on a cluttered backdrop; no void rings (a 1-pixel
    line would vanish under one).

    Returns:
        (HxWx3 uint8 image, HxW uint8 label with ids 0..3).
    """
    h, w = _image_hw(rng, size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = Image.fromarray(np.clip(_background(rng, h, w, yy, xx) + 0.5, 0, 255).astype(np.uint8))
    label = Image.new("L", (w, h), 0)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for cls, _, widths, grays, counts in THIN_CLASSES:
        for _ in range(int(rng.integers(counts[0], counts[1] + 1))):
            points = _polyline(rng, h, w)
            width = int(rng.integers(widths[0], widths[1] + 1))
            gray = int(rng.integers(grays[0], grays[1] + 1))
            draw_image.line(points, fill=(gray, gray, gray), width=width)
            draw_label.line(points, fill=cls, width=width)
    noisy = np.asarray(image, np.float32) + rng.normal(0.0, 3.0, size=(h, w, 3)).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8), np.asarray(label)


def _polyline(rng: np.random.Generator, h: int, w: int) -> list:
    """A wandering line across the image: 4-8 points, each step at most a third of the image away."""
    y, x = rng.uniform(0, h), rng.uniform(0, w)
    points = [(x, y)]
    for _ in range(int(rng.integers(3, 8))):
        x = float(np.clip(x + rng.uniform(-w, w) / 3, 0, w - 1))
        y = float(np.clip(y + rng.uniform(-h, h) / 3, 0, h - 1))
        points.append((x, y))
    return points


def _image_hw(rng: np.random.Generator, size: int) -> tuple[int, int]:
    h = size + int(rng.integers(-4, 5))
    w = int(round(h * np.exp(rng.uniform(np.log(0.75), np.log(1.33)))))
    # Keep sizes off multiples of 32 so nothing downstream silently relies on them.
    return h + (h % 32 == 0), w + (w % 32 == 0)


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A low-saturation backdrop: tinted gradient, blotchy low-frequency noise and distractor shapes."""
    base = np.array(_hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.75)), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
    image = base + (ramp - ramp.mean())[..., None] * rng.uniform(-90, 90)
    coarse = rng.normal(0.0, 1.0, size=(4, 5)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    image += blotch[..., None] * rng.uniform(8, 25)
    for _ in range(int(rng.integers(2, 7))):
        style = ClassStyle("clutter", str(rng.choice(SHAPES)), rng.uniform(0, 360), str(rng.choice(TEXTURES)))
        radius = rng.uniform(0.08, 0.3) * min(h, w)
        mask = _shape_mask(rng, style.shape, radius, h, w)
        if mask.any():
            image[mask] = _texture(rng, style, mask, yy, xx, radius, saturated=False)
    return image


def _place(rng: np.random.Generator, shape: str, radius: float, owner: np.ndarray, count: int) -> np.ndarray:
    """A mask for a new object that leaves every earlier object at least half visible (shrinking on retries)."""
    h, w = owner.shape
    visible = np.bincount(owner.ravel(), minlength=count)
    min_area = 0.25 * np.pi * radius * radius
    mask = np.zeros((h, w), dtype=bool)
    for attempt in range(12):
        mask = _shape_mask(rng, shape, radius * 0.9 ** attempt, h, w)
        covered = np.bincount(owner[mask], minlength=count)
        if mask.sum() >= min_area * 0.9 ** (2 * attempt) and np.all(covered[1:] <= 0.5 * visible[1:count]):
            break
    return mask


def _place_polygon(rng: np.random.Generator, shape: str, radius: float,
                   owner: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """A polygon for a new object on free pixels only (shrinking on retries) and its mask; (empty, None) when
    none fits."""
    h, w = owner.shape
    min_area = 0.25 * np.pi * radius * radius
    for attempt in range(12):
        to_image = _pose(rng, radius * 0.9 ** attempt, h, w)
        # Rounded as written to the annotation files, and rasterised from the rounded points.
        polygon = np.clip(np.round(_clip(to_image(_one_polygon(shape)), w, h), 2), 0, None) + 0.0
        mask = _fill(polygon, h, w)
        if len(polygon) >= 3 and mask.sum() >= min_area * 0.9 ** (2 * attempt) and not owner[mask].any():
            return mask, polygon
    return np.zeros((h, w), dtype=bool), None


def _shape_mask(rng: np.random.Generator, shape: str, radius: float, h: int, w: int) -> np.ndarray:
    """Rasterise ``shape`` at a random centre, aspect and rotation."""
    to_image = _pose(rng, radius, h, w)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for outline, fill in _outlines(shape):
        draw.polygon([tuple(p) for p in to_image(outline).tolist()], fill=fill)
    return np.asarray(canvas) > 0


def _pose(rng: np.random.Generator, radius: float, h: int, w: int) -> Callable[[np.ndarray], np.ndarray]:
    """A random centre, aspect and rotation: unit outlines -> image coordinates."""
    aspect = np.exp(rng.uniform(-0.35, 0.35))
    angle = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform([0.08 * w, 0.08 * h], [0.92 * w, 0.92 * h])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.array([radius * aspect, radius / aspect])
    return lambda outline: (outline * scale) @ rot.T + centre


def _one_polygon(shape: str) -> np.ndarray:
    """``shape`` as one unit-radius polygon: a ring's hole is joined to its rim by a cut of zero width."""
    parts = _outlines(shape)
    if len(parts) == 1:
        return parts[0][0]
    (rim, _), (hole, _) = parts
    return np.concatenate([rim, rim[:1], hole[:1], hole[:0:-1], hole[:1]])


def _clip(polygon: np.ndarray, xmax: float, ymax: float) -> np.ndarray:
    """``polygon`` cut to the rectangle [0, xmax] x [0, ymax] (Sutherland-Hodgman)."""
    for axis, limit, below in ((0, 0.0, False), (0, xmax, True), (1, 0.0, False), (1, ymax, True)):
        inside = polygon[:, axis] <= limit if below else polygon[:, axis] >= limit
        out = []
        for j in range(len(polygon)):
            p, q = polygon[j - 1], polygon[j]
            if inside[j - 1] != inside[j]:
                out.append(p + (limit - p[axis]) / (q[axis] - p[axis]) * (q - p))
            if inside[j]:
                out.append(q)
        polygon = np.array(out, dtype=np.float64).reshape(-1, 2)
    return polygon


def _fill(polygon: np.ndarray, h: int, w: int) -> np.ndarray:
    """The pixels whose centre (x + 0.5, y + 0.5) lies inside ``polygon`` (even-odd rule), as COCO's
    ``pycocotools`` rasterises it."""
    mask = np.zeros((h, w), dtype=bool)
    if len(polygon) < 3:
        return mask
    x0, y0 = np.maximum(np.floor(polygon.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(polygon.max(axis=0)).astype(int), (w, h))
    ys = np.arange(y0, y1)[:, None] + 0.5
    xs = np.arange(x0, x1)[None, :] + 0.5
    inside = np.zeros((len(ys), xs.shape[1]), dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0)):
        crosses = (ay > ys) != (by > ys)
        if crosses.any():   # horizontal edges never cross: their division is never used
            with np.errstate(divide="ignore", invalid="ignore"):
                inside ^= crosses & (xs < ax + (ys - ay) * (bx - ax) / (by - ay))
    mask[y0:y1, x0:x1] = inside
    return mask


def _outlines(shape: str) -> list:
    """Unit-radius polygons of ``shape`` as (vertices, fill); a fill of 0 cuts a hole."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "ellipse":
        return [(circle, 1)]
    if shape == "ring":
        return [(circle, 1), (circle * 0.5, 0)]
    if shape == "rectangle":
        return [(np.array([[-1, -0.75], [1, -0.75], [1, 0.75], [-1, 0.75]]), 1)]
    if shape == "triangle":
        a = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return [(np.stack([np.cos(a), np.sin(a)], axis=1) * 1.2, 1)]
    if shape == "star":
        a = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.2, 0.5)
        return [(np.stack([np.cos(a) * r, np.sin(a) * r], axis=1), 1)]
    if shape == "cross":
        arm, w = 1.0, 0.35  # arm length, half arm width
        return [(np.array([[-w, -arm], [w, -arm], [w, -w], [arm, -w], [arm, w], [w, w], [w, arm], [-w, arm],
                           [-w, w], [-arm, w], [-arm, -w], [-w, -w]]), 1)]
    raise ValueError(f"unknown shape {shape!r}")


def _texture(rng: np.random.Generator, style: ClassStyle, mask: np.ndarray, yy: np.ndarray, xx: np.ndarray,
             radius: float, *, saturated: bool) -> np.ndarray:
    """RGB values (float32, one row per pixel of ``mask``) of a shaded, patterned surface."""
    hue = style.hue + rng.uniform(-6, 6)
    sat = rng.uniform(0.6, 0.95) if saturated else rng.uniform(0.0, 0.15)
    val = rng.uniform(0.65, 1.0) if saturated else rng.uniform(0.25, 0.9)
    bright = np.array(_hsv(hue, sat, val), np.float32)
    dark = np.array(_hsv(hue, sat, val * rng.uniform(0.35, 0.55)), np.float32)
    x, y = xx[mask], yy[mask]
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = y * np.cos(angle) - x * np.sin(angle)
    period = max(3.0, float(rng.uniform(*_PERIOD)) * min(mask.shape))
    if style.texture == "stripes":
        on = (u / period) % 1.0 < 0.5
    elif style.texture == "dots":
        # Bright dots on the dark tone: on average darker than stripes, which are darker than solid.
        on = ((u / period) % 1.0 - 0.5) ** 2 + ((v / period) % 1.0 - 0.5) ** 2 < 0.1
    else:
        on = np.ones(u.shape, dtype=bool)
    shade = 1.0 + rng.uniform(-0.15, 0.15) * (u - u.mean()) / max(radius, 1.0)
    return np.where(on[:, None], bright, dark) * shade[:, None]


def _boundary(owner: np.ndarray, r: int) -> np.ndarray:
    """Pixels within ``r`` of a change of object id: VOC's void ring around each object."""
    h, w = owner.shape
    padded = np.pad(owner, r, mode="edge")
    edge = np.zeros((h, w), dtype=bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy or dx:
                edge |= padded[r + dy:r + dy + h, r + dx:r + dx + w] != owner
    return edge


def _hsv(hue_deg: float, sat: float, val: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360) / 360.0, min(sat, 1.0), min(val, 1.0))
    return r * 255.0, g * 255.0, b * 255.0


# ---------------------------------------------------------------- writers, one per layout

def _save_jpeg(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY)


def _save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def _write_sample(base: Path, image_id: str, image: np.ndarray, label: Image.Image) -> None:
    """One VOC-layout pair: ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png``."""
    _save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", image)
    _save_png(base / "SegmentationClass" / f"{image_id}.png", label)


def _class_colours(class_map: ClassMap) -> np.ndarray:
    """(N, 3) uint8: the class colours."""
    return np.asarray(class_map.colours[:class_map.num_classes], dtype=np.uint8).reshape(-1, 3)


def _colour_table(class_map: ClassMap) -> np.ndarray:
    """(256, 3) uint8: label value -> colour (the class colours, VOC's void colour at 255)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:class_map.num_classes] = _class_colours(class_map)
    table[IGNORE_INDEX] = VOID_COLOUR
    return table


class _Writer:
    """How one layout stores the samples (``write``) and the files naming them (``finish``).

    Attributes:
        name: the layout (``SYNTH_LAYOUTS``).
        lists: split lists name the samples, so a re-run with other counts leaves no stray sample.
        polygons: samples are polygons (``render_polygon_sample``), not label images.
        tops: the paths under ``root`` it writes, which must hold nothing it did not write.
    """

    name = ""
    lists = False
    polygons = False
    tops: tuple = ()

    def __init__(self, root: Path, class_map: ClassMap) -> None:
        self.root, self.class_map = root, class_map

    def marker_dir(self) -> Path:
        return self.root

    def owned(self) -> List[tuple]:
        """(folder whose ``MARKER`` makes them ours, paths) pairs."""
        return [(self.root, [self.root / t for t in self.tops])]

    def image_id(self, split: str, index: int, number: int) -> str:
        """The id of the ``index``-th image of ``split`` (``number``: its 1-based place in the dataset)."""
        return f"synth_{number:06d}"

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        raise NotImplementedError

    def finish(self, splits: Dict[str, List[str]]) -> None:
        """Write what names the samples, after all of them are written."""


class _VocWriter(_Writer):
    """PASCAL VOC 2012: palette PNG labels; ``classes.json`` beside ``VOCdevkit/`` for other classes."""

    name, lists = "voc", True
    SUBS = ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass")

    def marker_dir(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"

    def owned(self) -> List[tuple]:
        base = self.marker_dir()
        return [(base, [base / s for s in self.SUBS] + [self.root / "classes.json"]),
                (self.root, [self.root / s for s in self.SUBS])]

    def label_image(self, label: np.ndarray) -> Image.Image:
        png = Image.fromarray(label)
        palette = voc_palette(256)
        palette[:self.class_map.num_classes] = _class_colours(self.class_map)
        png.putpalette(palette.tobytes())
        return png

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        _write_sample(self.marker_dir(), image_id, image, self.label_image(label))

    def finish(self, splits: Dict[str, List[str]]) -> None:
        lists = self.marker_dir() / "ImageSets" / "Segmentation"
        for split, ids in (*splits.items(), ("trainval", splits["train"] + splits["val"])):
            write_text(lists / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        self.write_classes()

    def write_classes(self) -> None:
        classes = self.root / "classes.json"
        if self.class_map != ClassMap.voc():
            _write_json(classes, self.class_map.to_json_obj())
        elif classes.is_file():     # ours (_check_root refused any other): from a run with other classes
            classes.unlink()


class _CvatWriter(_VocWriter):
    """CVAT's "Segmentation mask 1.1" export: the VOC tree, colour PNG labels and ``labelmap.txt``."""

    name = "cvat"

    def owned(self) -> List[tuple]:
        base = self.marker_dir()
        return [(base, [base / s for s in self.SUBS] + [base / "labelmap.txt"]),
                (self.root, [self.root / s for s in self.SUBS])]

    def label_image(self, label: np.ndarray) -> Image.Image:
        return Image.fromarray(_colour_table(self.class_map)[label], mode="RGB")

    def write_classes(self) -> None:
        write_text(self.marker_dir() / "labelmap.txt", self.class_map.labelmap_text())


class _CityscapesWriter(_Writer):
    """Cityscapes: PNG images, ``gtFine`` label ids (class k is train id k, void is 0 "unlabeled") and colours."""

    name = "cityscapes"
    tops = ("leftImg8bit", "gtFine")
    CITIES: ClassVar[Dict[str, tuple]] = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}

    def __init__(self, root: Path, class_map: ClassMap) -> None:
        from .layouts import cityscapes_class_map_and_lut

        super().__init__(root, class_map)
        own, train_ids = cityscapes_class_map_and_lut()
        self.label_ids = np.zeros(256, dtype=np.uint8)        # void -> 0, "unlabeled"
        for k in range(own.num_classes):
            self.label_ids[k] = np.flatnonzero(train_ids == k)[0]
        self.colours = np.zeros((256, 4), dtype=np.uint8)     # unlabeled is black, as in gtFine_color
        self.colours[:own.num_classes, :3] = _class_colours(own)
        self.colours[:, 3] = 255

    def image_id(self, split: str, index: int, number: int) -> str:
        city = self.CITIES[split][index % 2]
        return f"{city}/{city}_{index:06d}_000019"

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        city, stem = image_id.split("/")
        _save_png(self.root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", Image.fromarray(image))
        gt = self.root / "gtFine" / split / city
        _save_png(gt / f"{stem}_gtFine_labelIds.png", Image.fromarray(self.label_ids[label], mode="L"))
        _save_png(gt / f"{stem}_gtFine_color.png", Image.fromarray(self.colours[label], mode="RGBA"))


class _Ade20kWriter(_Writer):
    """ADE20K (SceneParsing): class k stored as k+1, void as 0 ("other"), and ``objectInfo150.csv``."""

    name = "ade20k"
    tops = ("ADEChallengeData2016",)
    FOLDERS: ClassVar[Dict[str, str]] = {"train": "training", "val": "validation"}
    ROWS = 150

    def __init__(self, root: Path, class_map: ClassMap) -> None:
        super().__init__(root, class_map)
        self.pixels = np.zeros(256, dtype=np.int64)
        self.images = {split: np.zeros(256, dtype=np.int64) for split in self.FOLDERS}

    def image_id(self, split: str, index: int, number: int) -> str:
        return f"ADE_{split}_{index + 1:08d}"

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        base, folder = self.root / "ADEChallengeData2016", self.FOLDERS[split]
        stored = np.where(label == IGNORE_INDEX, 0, label.astype(np.int32) + 1).astype(np.uint8)
        _save_jpeg(base / "images" / folder / f"{image_id}.jpg", image)
        _save_png(base / "annotations" / folder / f"{image_id}.png", Image.fromarray(stored, mode="L"))
        counts = np.bincount(stored.ravel(), minlength=256)
        self.pixels += counts
        self.images[split] += counts > 0

    def finish(self, splits: Dict[str, List[str]]) -> None:
        names = list(self.class_map.names)
        taken = set(names)
        for k in range(len(names), self.ROWS):   # fillers: the reader wants all 150 rows
            name = f"class_{k}"
            while name in taken:
                name += "_"
            names.append(name)
            taken.add(name)
        ratio = self.pixels / max(int(self.pixels.sum()), 1)
        out = io.StringIO()
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(["Idx", "Ratio", "Train", "Val", "Name"])
        for k, name in enumerate(names, start=1):
            rows.writerow([k, f"{ratio[k]:.4f}", int(self.images["train"][k]), int(self.images["val"][k]), name])
        write_text(self.root / "ADEChallengeData2016" / "objectInfo150.csv", out.getvalue())


class _FolderWriter(_Writer):
    """Image and colour mask folders per split, with the class file ``classes.json``."""

    name = "folder"
    tops = ("images", "masks", "classes.json")

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        _save_jpeg(self.root / "images" / split / f"{image_id}.jpg", image)
        colours = Image.fromarray(_colour_table(self.class_map)[label], mode="RGB")
        _save_png(self.root / "masks" / split / f"{image_id}.png", colours)

    def finish(self, splits: Dict[str, List[str]]) -> None:
        _write_json(self.root / "classes.json", self.class_map.to_json_obj())


class _LabelmeWriter(_Writer):
    """labelme 5: ``<split>/<id>.jpg`` beside ``<id>.json`` polygon files, and the class file ``labelmap.txt``
    (names and colours; not JSON, which would read as one more labelme file). The points are the COCO files'
    numbers (``PolygonShape``), as labelme's own labelme2coco copies them."""

    name, polygons = "labelme", True
    tops = ("train", "val", "labelmap.txt")

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        folder = self.root / split
        _save_jpeg(folder / f"{image_id}.jpg", image)
        _write_json(folder / f"{image_id}.json", {
            "version": "5.2.1", "flags": {},
            "shapes": [{"label": self.class_map.names[s.label], "points": s.points.tolist(), "group_id": None,
                        "description": "", "shape_type": "polygon", "flags": {}} for s in shapes],
            "imagePath": f"{image_id}.jpg", "imageData": None,
            "imageHeight": int(image.shape[0]), "imageWidth": int(image.shape[1])})

    def finish(self, splits: Dict[str, List[str]]) -> None:
        write_text(self.root / "labelmap.txt", self.class_map.labelmap_text())


class _CocoWriter(_Writer):
    """COCO instances: ``images/<split>/`` and ``annotations/instances_<split>.json``; category k is class k
    (the background is implicit)."""

    name, polygons = "coco", True
    tops = ("images", "annotations")

    def __init__(self, root: Path, class_map: ClassMap) -> None:
        super().__init__(root, class_map)
        self.images: Dict[str, list] = {"train": [], "val": []}
        self.annotations: Dict[str, list] = {"train": [], "val": []}

    def write(self, split: str, image_id: str, image: np.ndarray, label: np.ndarray,
              shapes: Sequence[PolygonShape] = ()) -> None:
        _save_jpeg(self.root / "images" / split / f"{image_id}.jpg", image)
        number = len(self.images[split]) + 1
        self.images[split].append({"id": number, "file_name": f"{image_id}.jpg",
                                   "height": int(image.shape[0]), "width": int(image.shape[1])})
        for s in shapes:
            low, high = s.points.min(axis=0), s.points.max(axis=0)
            self.annotations[split].append({
                "id": len(self.annotations[split]) + 1, "image_id": number, "category_id": int(s.label),
                "segmentation": [s.points.ravel().tolist()], "area": float(s.area),
                "bbox": np.round([*low, *(high - low)], 2).tolist(), "iscrowd": 0})

    def finish(self, splits: Dict[str, List[str]]) -> None:
        categories = [{"id": k, "name": n, "supercategory": "object"}
                      for k, n in enumerate(self.class_map.names) if k > 0]
        for split in splits:
            _write_json(self.root / "annotations" / f"instances_{split}.json", {
                "info": {"description": "fcn-data synth"}, "licenses": [], "images": self.images[split],
                "annotations": self.annotations[split], "categories": categories})


_WRITERS: Dict[str, Callable[[Path, ClassMap], _Writer]] = {
    "voc": _VocWriter, "cvat": _CvatWriter, "cityscapes": _CityscapesWriter, "ade20k": _Ade20kWriter,
    "folder": _FolderWriter, "labelme": _LabelmeWriter, "coco": _CocoWriter,
}
_POLYGON_LAYOUTS = tuple(name for name, writer in _WRITERS.items() if getattr(writer, "polygons", False))
