"""A synthetic PASCAL VOC 2012: the embedded default dataset, since the real one cannot be downloaded here.

``synthesize(root)`` writes ``ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}``
exactly as VOC lays it out: JPEG images, palette PNG labels (values 0..20 and 255) and the split lists.

Each of the 20 object classes is a (shape, hue, texture) combination (see ``CLASS_STYLES``). Each of ten hues
is shared by two classes, which then differ in texture and shape, so a colour lookup is not enough.
Backgrounds are cluttered with gradients, noise and low-saturation distractor shapes that carry the same
shapes and textures as the classes (but not their colours). Objects overlap, are cut by the image border and
get a void (255) ring along every object boundary, like VOC's.
"""

from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..core.atomic import atomic_path, write_text
from ..core.errors import FcnsegError
from ..core.output_guard import check_output_dir
from ..core.classes import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, voc_palette

__all__ = ["ClassStyle", "CLASS_STYLES", "THIN_CLASSES", "synthesize", "render_sample", "render_thin_sample"]

PathLike = Union[str, "os.PathLike[str]"]

SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring")
HUES = tuple(36.0 * i for i in range(10))
TEXTURES = ("solid", "stripes", "dots")
JPEG_QUALITY = 90
# Written into VOCdevkit/VOC2012 first: the folder is ours, and may be written again.
MARKER = ".fcnseg-synth.json"
# Sizes relative to the shorter image side: object radius range, texture period range.
_RADIUS = (0.16, 0.32)
_PERIOD = (0.05, 0.08)


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


def synthesize(root: PathLike, *, num_train: int = 200, num_val: int = 50, size: int = 160, seed: int = 0,
               progress: bool = True, thin_structures: bool = False) -> Path:
    """Write a synthetic VOC 2012 segmentation dataset under ``root``.

    Images are written first and the split lists last (each file atomically), so an interrupted run never
    leaves a list naming a missing file. The same arguments give byte-identical files.

    Args:
        root: destination; the dataset goes to ``root/VOCdevkit/VOC2012``.
        num_train: number of ``train`` images.
        num_val: number of ``val`` images (every class is drawn in ``val`` when it has 4 or more images).
        size: approximate image height; widths vary from 0.75x to 1.33x of it.
        seed: random seed.
        progress: show a progress bar.
        thin_structures: draw only lines 1-4 pixels wide on the cluttered backdrop, the classes of
            ``THIN_CLASSES`` (cracks, wires, roads), to measure what resizing a large image loses
            (``mode="slide"``).

    Returns:
        ``root`` as a Path: the folder to pass as ``--data-path``.

    Raises:
        FcnsegError: for non-positive counts or a size under 32 pixels; when ``root`` is a file, or holds a
            dataset that synthesize did not write (no ``MARKER`` file), which it never writes into.
    """
    for name, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1), ("size", size, 32)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise FcnsegError(f"expected {name} to be an integer >= {low}, got {value!r}")
    root = Path(root)
    base = root / "VOCdevkit" / "VOC2012"
    _check_root(root, base)
    write_text(base / MARKER, json.dumps({"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
                                          "thin_structures": thin_structures}))
    splits = {"train": [f"synth_{i:06d}" for i in range(1, num_train + 1)],
              "val": [f"synth_{i:06d}" for i in range(num_train + 1, num_train + num_val + 1)]}
    with tqdm(total=num_train + num_val, desc="synthesizing VOC", unit="img", disable=not progress) as bar:
        for split_index, (split, ids) in enumerate(splits.items()):
            classes = _class_schedule(np.random.default_rng([seed, split_index, 0]), len(ids))
            for i, image_id in enumerate(ids):
                rng = np.random.default_rng([seed, split_index, i + 1])
                image, label = render_thin_sample(rng, size=size) if thin_structures else \
                    render_sample(rng, size=size, classes=classes[i])
                _write_sample(base, image_id, image, label)
                bar.update(1)
    lists = base / "ImageSets" / "Segmentation"
    for split, ids in (*splits.items(), ("trainval", splits["train"] + splits["val"])):
        write_text(lists / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return root


def _check_root(root: Path, base: Path) -> None:
    """Refuse a file, and any VOC-like content synthesize did not write, before writing anything."""
    check_output_dir(root, "ROOT", what="a folder (new or empty)", first_file=str((base / MARKER).relative_to(root)))
    for folder in (base, root):
        if (folder / MARKER).is_file():
            continue
        found = [p for sub in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass")
                 if (folder / sub).is_dir() for p in (folder / sub).iterdir()]
        if found:
            raise FcnsegError(f"expected ROOT to be new or to hold a dataset written by fcn-data synth, got "
                              f"{str(folder)!r} holding {len(found)} files it did not write (e.g. "
                              f"{found[0].relative_to(folder)}); try another ROOT, this one is left untouched")


def _class_schedule(rng: np.random.Generator, num_images: int) -> list:
    """The classes of each image: 2-5 objects, classes dealt from shuffled decks so every class is used."""
    counts = rng.choice([2, 3, 4, 5], size=num_images, p=[0.2, 0.35, 0.3, 0.15])
    # Small splits get extra objects (up to 6 an image) until there is room for all 20 classes.
    while counts.sum() < NUM_CLASSES - 1 and counts.min() < 6:
        counts[int(np.argmin(counts))] += 1
    decks = np.concatenate([rng.permutation(NUM_CLASSES - 1) + 1
                            for _ in range(-(-int(counts.sum()) // (NUM_CLASSES - 1)))])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [decks[bounds[j]:bounds[j + 1]].tolist() for j in range(num_images)]


def render_sample(rng: np.random.Generator, *, size: int, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image with objects of ``classes`` (ids 1..20).

    Returns:
        (HxWx3 uint8 image, HxW uint8 label with 255 on the boundary rings).
    """
    h, w = _image_hw(rng, size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = _background(rng, h, w, yy, xx)
    owner = np.zeros((h, w), dtype=np.uint8)
    radii = np.sort(rng.uniform(*_RADIUS, size=len(classes)) * min(h, w))[::-1]
    placed = [0]
    for cls, radius in zip(classes, radii):
        style = CLASS_STYLES[cls - 1]
        mask = _place(rng, style.shape, radius, owner, len(placed))
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


def _shape_mask(rng: np.random.Generator, shape: str, radius: float, h: int, w: int) -> np.ndarray:
    """Rasterise ``shape`` at a random centre, aspect and rotation."""
    aspect = np.exp(rng.uniform(-0.35, 0.35))
    angle = rng.uniform(0, 2 * np.pi)
    centre = rng.uniform([0.08 * w, 0.08 * h], [0.92 * w, 0.92 * h])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = np.array([radius * aspect, radius / aspect])
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for outline, fill in _outlines(shape):
        pts = (outline * scale) @ rot.T + centre
        draw.polygon([tuple(p) for p in pts.tolist()], fill=fill)
    return np.asarray(canvas) > 0


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


def _write_sample(base: Path, image_id: str, image: np.ndarray, label: np.ndarray) -> None:
    with atomic_path(base / "JPEGImages" / f"{image_id}.jpg") as tmp:
        Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    png = Image.fromarray(label)
    png.putpalette(voc_palette(256).tobytes())
    with atomic_path(base / "SegmentationClass" / f"{image_id}.png") as tmp:
        png.save(tmp, format="PNG")
