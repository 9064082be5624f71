"""Polygon annotations -> the VOC layout with a labelmap: CVAT's "Segmentation mask 1.1", layout ``cvat``.

``OUT/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt,
labelmap.txt}``: images re-encoded as JPEG, masks as RGB PNGs in the class colours (VOC's void colour
224,224,192 where pixels are ignored), ``labelmap.txt`` from ``ClassMap.labelmap_text``. ``open_dataset(OUT)``
reads it back.

- ``convert_labelme``: a folder of labelme 5.x JSON files. Shapes are drawn in file order, a later shape over an
  earlier one, as labelme's own ``shapes_to_label`` does. Label ``_background_`` is ``background`` (class 0) and
  ``__ignore__`` is the ignore index, labelme's conventions.
- ``convert_coco``: COCO instances or stuff JSONs, read by ``pycocotools``. Annotations are drawn largest first
  (pixel area of the mask), so a small object lying on a large one stays visible; torchvision's reference
  (``references/segmentation/coco_utils.py``) instead marks every pixel where two instances overlap 255, so a
  cup on a table is ignored rather than learnt. Crowd regions (``iscrowd=1``) are drawn as the ignore index, in
  the same order (a smaller object on a crowd stays visible): a crowd's mask covers the gaps between its members,
  so its pixels are neither the class nor background, and COCO's own evaluation ignores crowds too
  (torchvision's reference draws them as their class). COCO-Stuff's "other" (id 183, the thing pixels of a stuff
  JSON) is ignored unless the class map names it. Polygon parts with fewer than 3 points are dropped and counted
  in the report, as detectron2's COCO reader drops them.

Polygons are rasterised by pycocotools (``frPyObjects`` + ``decode``), COCO's convention: pixel (x, y) is in a
polygon when its centre (x + 0.5, y + 0.5) is, so the rectangle with integer corners (x0, y0)-(x1, y1) covers
columns x0..x1-1 and rows y0..y1-1 (area (x1-x0)*(y1-y0)), where labelme's own PIL drawing also fills column x1
and row y1. Circles become 64-point polygons.

Every input is read and checked (JSON format, labels, points, image files) before anything is written; then, as
``synthesize`` does, a marker file comes first (a later convert may write into the same OUT again; any other
non-empty OUT needs ``force``), old split lists are removed, every file is written atomically and the split
lists come last, so a killed run leaves no list naming a missing file or a mask of other colours (images of an
earlier run that the new one does not write stay, unlisted). Problems met while decoding images (an unreadable
file, a size that disagrees with the JSON) stop the run before the lists.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo
from tqdm import tqdm

from ..core.atomic import atomic_path, write_text
from ..core.class_map import VOID_COLOUR, ClassMap
from ..core.classes import voc_palette
from ..core.errors import FcnsegError, import_optional
from ..core.output_guard import SOFTWARE, check_output_dir
from ..runtime import open_image

__all__ = ["ConvertReport", "convert_labelme", "convert_coco", "split_arg", "MARKER"]

PathLike = Union[str, "os.PathLike[str]"]
ClassesLike = Union[ClassMap, PathLike, None]
Polygon = List[float]                   # x0, y0, x1, y1, ... as pycocotools takes them

VOC_BASE = Path("VOCdevkit") / "VOC2012"
MARKER = ".fcnseg-convert.json"         # written first: the folder is ours and may be written again
JPEG_QUALITY = 95
CIRCLE_POINTS = 64
BACKGROUND = "background"
LABELME_BACKGROUND = "_background_"
LABELME_IGNORE = "__ignore__"
DRAWN_SHAPES = ("polygon", "rectangle", "circle")
SPLIT_FOLDERS = ("train", "val", "test")
STUFF_OTHER = (183, "other")            # COCO-Stuff: every thing pixel of a stuff JSON
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")


# ---------------------------------------------------------------- the report

@dataclass
class ConvertReport:
    """What a conversion wrote.

    Attributes:
        out: the folder holding ``VOCdevkit/`` (``open_dataset(out)`` or ``--data-path``).
        classes: the class map, written as ``labelmap.txt``.
        images: image ids written per split ("trainval" is train + val and not listed here).
        shapes: shapes (labelme) or annotations (COCO) drawn per class name.
        ignored: regions drawn as the ignore index, per reason ("crowd", "other", "__ignore__").
        skipped: shapes not drawn, per shape type ("line", "linestrip", "point") or reason ("invalid polygon").
    """

    out: Path
    classes: ClassMap
    images: Dict[str, List[str]] = field(default_factory=dict)
    shapes: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """A few lines: images per split, classes with their shape counts, ignored and skipped shapes."""
        lines = ["images: " + ", ".join(f"{len(ids)} {split}" for split, ids in self.images.items()),
                 f"classes ({self.classes.num_classes}, shapes drawn): "
                 + ", ".join(f"{n} {self.shapes.get(n, 0)}" for n in self.classes.names)]
        if self.ignored:
            lines.append(f"drawn as ignore ({self.classes.ignore_index}): {_counts(self.ignored)}")
        if self.skipped:
            lines.append(f"skipped (not drawn): {_counts(self.skipped)}")
        return "\n".join(lines)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {key}" for key, n in sorted(counter.items()))


@dataclass
class _Sample:
    """One image to write: its id, its split and how to make its (RGB image, HxW class ids)."""

    id: str
    split: str
    render: Callable[[], Tuple[Image.Image, np.ndarray]]


# ---------------------------------------------------------------- labelme

@dataclass
class _LabelmeFile:
    path: Path
    image: Optional[Path]               # None: the image is the JSON's imageData
    size: Optional[Tuple[int, int]]     # (H, W) recorded in the JSON
    shapes: List[Tuple[str, Polygon]]   # drawn shapes, in file order
    skipped: Counter


def convert_labelme(src: PathLike, out: PathLike, *, classes: ClassesLike = None, val_fraction: float = 0.2,
                    seed: int = 0, force: bool = False, progress: bool = True) -> ConvertReport:
    """Convert a folder of labelme JSON files into the VOC layout with a labelmap under ``out``.

    Args:
        src: the folder, searched recursively for ``*.json``. With top-level ``train/``, ``val/`` (``test/``)
            folders those are the splits; otherwise ``val_fraction`` of the files, drawn with ``seed`` from
            the sorted names, are ``val``.
        out: the output folder (new, empty, or an earlier convert output unless ``force``).
        classes: a ``ClassMap`` or class file; None: "background" then the labels found, sorted.
        val_fraction: the part of the files that go to ``val`` when there are no split folders.
        seed: the seed of that draw.
        force: write into a folder that holds other files.
        progress: show a progress bar.

    Returns:
        The ``ConvertReport``.

    Raises:
        FcnsegError: a missing folder, a JSON that is not labelme's, a shape with too few points, an image that
            cannot be found, a label missing from ``classes``, an output folder that holds other files.
    """
    root = _check_folder(src, "a folder of labelme JSON files", "SRC")
    if not 0.0 <= val_fraction < 1.0:
        raise FcnsegError(f"expected --val-fraction in [0, 1), got {val_fraction}; try 0.2")
    given = _as_class_map(classes)
    out_dir = _check_out(out, force)
    paths = _labelme_paths(root, out_dir)
    files = [_read_labelme(p) for p in paths]
    class_map = _labelme_class_map(files, given, root)
    values = _label_values(files, class_map)
    report = ConvertReport(out_dir, class_map)
    samples = []
    for file, split, sample_id in zip(files, _labelme_splits(root, paths, val_fraction, seed),
                                      _unique_ids([p.relative_to(root) for p in paths])):
        file_values = [values[label] for label, _ in file.shapes]
        _count_labels(report, class_map, [label for label, _ in file.shapes], file_values)
        report.skipped.update(file.skipped)
        samples.append(_Sample(sample_id, split, _labelme_renderer(file, file_values)))
    _write_dataset(out_dir, "labelme", samples, report, progress)
    return report


def _labelme_paths(root: Path, out: Path) -> List[Path]:
    """The JSON files under ``root``, sorted, without hidden ones and without anything under ``out``."""
    out_resolved = out.resolve()
    paths = sorted((p for p in root.rglob("*.json") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)
                    and out_resolved not in p.resolve().parents), key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        raise FcnsegError(f"expected labelme JSON files under {str(root)!r}, got none; try the folder where "
                          "labelme saved its .json files")
    return paths


def _read_labelme(path: Path) -> _LabelmeFile:
    """One labelme JSON, checked: its shapes as polygons, its image file (or None for imageData)."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list) or "imagePath" not in doc:
        hint = "`fcn-data convert coco` for COCO files" if isinstance(doc, dict) and "annotations" in doc else \
            "moving other JSON files out of SRC"
        raise FcnsegError(f"expected a labelme JSON (with 'shapes' and 'imagePath'), got {_describe(doc)} in "
                          f"{str(path)!r}; try {hint}")
    shapes: List[Tuple[str, Polygon]] = []
    skipped: Counter = Counter()
    for i, shape in enumerate(doc["shapes"]):
        kind = (shape.get("shape_type") if isinstance(shape, dict) else None) or "polygon"
        if kind not in DRAWN_SHAPES:
            skipped[kind] += 1
            continue
        label = shape.get("label") if isinstance(shape, dict) else None
        if not isinstance(label, str) or not label:
            raise FcnsegError(f"expected a label in shape {i} of {str(path)!r}, got {label!r}; name it in labelme")
        shapes.append((label, _shape_polygon(path, i, label, kind, shape.get("points"))))
    size = (doc.get("imageHeight"), doc.get("imageWidth"))
    known = all(isinstance(v, int) and v > 0 for v in size)
    return _LabelmeFile(path, _labelme_image(path, doc), size if known else None, shapes, skipped)  # type: ignore


def _shape_polygon(path: Path, index: int, label: str, kind: str, points: Any) -> Polygon:
    """A labelme polygon, rectangle (two corners) or circle (centre, a point on it) as one flat polygon."""
    where = f"shape {index} ({label!r}, {kind}) of {str(path)!r}"
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        pts = np.zeros((0, 0))
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise FcnsegError(f"expected points as [[x, y], ...] in {where}, got {str(points)[:60]}; fix the JSON")
    need = 3 if kind == "polygon" else 2
    if (kind == "polygon" and len(pts) < 3) or (kind != "polygon" and len(pts) != 2):
        raise FcnsegError(f"expected {'3 or more' if need == 3 else 'exactly 2'} points in {where}, got "
                          f"{len(pts)}; redraw or delete the shape in labelme")
    if kind == "rectangle":
        (x0, y0), (x1, y1) = pts
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif kind == "circle":
        radius = float(np.hypot(*(pts[1] - pts[0])))
        t = np.linspace(0.0, 2.0 * math.pi, CIRCLE_POINTS, endpoint=False)
        pts = pts[0] + radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    return pts.reshape(-1).tolist()


def _labelme_image(path: Path, doc: dict) -> Optional[Path]:
    """The image file named by ``imagePath`` (relative to the JSON); None when missing but imageData is there."""
    rel = str(doc.get("imagePath") or "").replace("\\", "/")   # labelme on Windows writes backslashes
    candidate = path.parent / rel if rel else None
    if candidate is not None and candidate.is_file():
        return candidate
    if doc.get("imageData"):
        return None
    raise FcnsegError(f"expected the image {rel or '(empty imagePath)'!s} of {str(path)!r} at "
                      f"{str(candidate) if candidate else 'imagePath'}, got no such file and no imageData; try "
                      "putting the image there, or saving the JSON in labelme with image data")


def _labelme_class_map(files: Sequence[_LabelmeFile], given: Optional[ClassMap], root: Path) -> ClassMap:
    if given is not None:
        return given
    labels = {label for f in files for label, _ in f.shapes} - {BACKGROUND, LABELME_BACKGROUND, LABELME_IGNORE}
    return _palette_map([BACKGROUND, *sorted(labels)], f"the labels in {root}")


def _label_values(files: Sequence[_LabelmeFile], class_map: ClassMap) -> Dict[str, int]:
    """Label -> class id (or the ignore index); labels the class map lacks are one error naming two files."""
    lookup = _name_lookup(class_map)
    unknown: Dict[str, List[Path]] = defaultdict(list)
    for f in files:
        for label in dict.fromkeys(label for label, _ in f.shapes):
            if label not in lookup:
                unknown[label].append(f.path)
    if unknown:
        label, where = sorted(unknown.items())[0]
        more = f" and {len(where) - 2} more files" if len(where) > 2 else ""
        others = f" (and {len(unknown) - 1} other unknown labels)" if len(unknown) > 1 else ""
        raise FcnsegError(f"expected labels of the class map {class_map.source!r}, got {label!r} in "
                          f"{', '.join(repr(str(p)) for p in where[:2])}{more}{others}; add it to the class file "
                          "or fix the label in labelme")
    return lookup


def _labelme_splits(root: Path, paths: Sequence[Path], val_fraction: float, seed: int) -> List[str]:
    """Each file's split: its top-level folder when SRC has train/ or val/, else a seeded draw of val files."""
    tops = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in paths]
    if any(top in SPLIT_FOLDERS for top in tops):
        outside = [p for p, top in zip(paths, tops) if top not in SPLIT_FOLDERS]
        if outside:
            raise FcnsegError(f"expected every JSON under {', '.join(SPLIT_FOLDERS)}/ of {str(root)!r} (it has "
                              f"split folders), got {str(outside[0])!r}; move it into a split folder or out of SRC")
        return tops
    n = len(paths)
    n_val = 0 if val_fraction == 0 or n < 2 else min(max(round(n * val_fraction), 1), n - 1)
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(n)]


def _labelme_renderer(file: _LabelmeFile, values: List[int]) -> Callable[[], Tuple[Image.Image, np.ndarray]]:
    def render() -> Tuple[Image.Image, np.ndarray]:
        image = _labelme_pixels(file)
        w, h = image.size
        if file.size is not None and file.size != (h, w):
            raise FcnsegError(f"expected the image of {str(file.path)!r} to be {file.size[1]}x{file.size[0]} "
                              f"(imageWidth x imageHeight), got {w}x{h}; try the image the JSON was drawn on")
        ids = np.zeros((h, w), dtype=np.uint8)
        for value, (_, polygon) in zip(values, file.shapes):   # file order: a later shape covers earlier ones
            ids[_rasterise([polygon], h, w)] = value
        return image, ids
    return render


def _labelme_pixels(file: _LabelmeFile) -> Image.Image:
    """The RGB image the shapes were drawn on: EXIF orientation applied, as labelme shows and stores it."""
    if file.image is not None:
        return open_image(file.image, exif=True).convert("RGB")
    data = _load_json(file.path).get("imageData")   # re-read: base64 images are not kept in memory
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except (binascii.Error, OSError, ValueError, TypeError, SyntaxError) as e:
        raise FcnsegError(f"expected a base64 image in imageData of {str(file.path)!r}, got undecodable data "
                          f"({e}); try saving the JSON again in labelme, or putting the image at imagePath") from None


# ---------------------------------------------------------------- COCO

def convert_coco(annotations: Union[PathLike, Sequence[Union[PathLike, Tuple[PathLike, str]]]], images: PathLike,
                 out: PathLike, *, split: str = "train", classes: ClassesLike = None, force: bool = False,
                 progress: bool = True) -> ConvertReport:
    """Convert COCO instances or stuff JSONs into the VOC layout with a labelmap under ``out``.

    Args:
        annotations: a JSON file (its split is ``split``), or several, each a path or a (path, split) pair:
            ``[("instances_train2017.json", "train"), ("instances_val2017.json", "val")]``.
        images: the folder holding the images: ``file_name`` is looked up in it, then in its subfolders
            (those starting with the split's name first: ``train2017/``, ``val2017/``).
        out: the output folder (new, empty, or an earlier convert output unless ``force``).
        split: the split of a single JSON given as a path.
        classes: a ``ClassMap`` or class file matching category names; None: "background", then the
            categories sorted by id (class i+1 for the i-th).
        force: write into a folder that holds other files.
        progress: show a progress bar.

    Returns:
        The ``ConvertReport``.

    Raises:
        FcnsegError: a missing file or folder, a JSON that is not COCO's, a category missing from ``classes``,
            an image that cannot be found, an output folder that holds other files.
    """
    sources = _coco_sources(annotations, split)
    image_dir = _check_folder(images, "the folder of the COCO images", "--images")
    given = _as_class_map(classes)
    out_dir = _check_out(out, force)
    docs = [_read_coco(path) for path, _ in sources]
    class_map, values = _coco_class_map(sources, docs, given)
    report = ConvertReport(out_dir, class_map)
    samples: List[_Sample] = []
    taken: set = set()
    for (path, split_name), doc in zip(sources, docs):
        api = _coco_api(doc)
        anns = _coco_annotations(path, doc, values, class_map, report)
        subfolders = sorted((p for p in image_dir.iterdir() if p.is_dir()),
                            key=lambda p: (not p.name.startswith(split_name), p.name))
        for info in sorted(doc["images"], key=lambda i: str(i["file_name"])):
            image_path = _coco_image_path(image_dir, subfolders, info, path, split_name)
            sample_id = _unique_id(_clean_id(Path(str(info["file_name"])).stem), taken, prefix=split_name)
            samples.append(_Sample(sample_id, split_name,
                                   _coco_renderer(api, info, image_path, anns.get(info["id"], []), path)))
    _write_dataset(out_dir, "coco", samples, report, progress)
    return report


def split_arg(text: str, default: str = "train") -> Tuple[str, str]:
    """``FILE[:SPLIT]`` (the CLI's ``--annotations``) -> (file, split); a file whose name holds ':' stays whole."""
    path, sep, split = text.rpartition(":")
    if sep and path and _SPLIT_NAME.fullmatch(split) and not Path(text).exists():
        return path, split
    return text, default


def _coco_sources(annotations: Any, split: str) -> List[Tuple[Path, str]]:
    items = [annotations] if isinstance(annotations, (str, os.PathLike)) else list(annotations)
    pairs = [(Path(a), split) if isinstance(a, (str, os.PathLike)) else (Path(a[0]), str(a[1])) for a in items]
    if not pairs:
        raise FcnsegError("expected at least one COCO annotation JSON, got none; try --annotations FILE[:SPLIT]")
    for path, name in pairs:
        if not _SPLIT_NAME.fullmatch(name) or name == "trainval":
            raise FcnsegError(f"expected a split name of letters, digits, '_', '-' or '.' (trainval is written as "
                              f"train + val), got {name!r} for {str(path)!r}; try train or val")
        if not path.is_file():
            raise FcnsegError(f"expected a COCO annotation JSON, got {str(path)!r} which does not exist; "
                              "check --annotations")
    return pairs


def _read_coco(path: Path) -> dict:
    """One COCO JSON, checked: images with id/file_name/height/width, annotations, categories with id/name."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        hint = "`fcn-data convert labelme` for labelme files" if isinstance(doc, dict) and "shapes" in doc else \
            "the instances_*.json or stuff_*.json files of a COCO release"
        raise FcnsegError(f"expected a COCO JSON (with 'images', 'annotations' and 'categories' lists), got "
                          f"{_describe(doc)} in {str(path)!r}; try {hint}")
    if not doc["images"]:
        raise FcnsegError(f"expected images listed in {str(path)!r}, got an empty 'images' list; try the JSON of a "
                          "split that has images")
    if any(isinstance(a, dict) and "segments_info" in a for a in doc["annotations"][:1]):
        raise FcnsegError(f"expected COCO instances or stuff annotations, got a panoptic JSON {str(path)!r}; try "
                          "the instances_*.json (or stuff_*.json) of the same release")
    for key, fields in (("images", ("id", "file_name", "height", "width")), ("categories", ("id", "name")),
                        ("annotations", ("id", "image_id", "category_id"))):
        bad = next((e for e in doc[key] if not isinstance(e, dict) or any(f not in e for f in fields)), None)
        if bad is not None:
            raise FcnsegError(f"expected every entry of '{key}' in {str(path)!r} to have {', '.join(fields)}, got "
                              f"{str(bad)[:80]}; try a COCO JSON written by a COCO tool")
    return doc


def _coco_class_map(sources: Sequence[Tuple[Path, str]], docs: Sequence[dict],
                    given: Optional[ClassMap]) -> Tuple[ClassMap, Dict[int, int]]:
    """The class map and category id -> class id (or the ignore index): the same categories in every JSON."""
    names: Dict[int, str] = {}
    seen_in: Dict[int, Path] = {}
    for (path, _), doc in zip(sources, docs):
        for cat in doc["categories"]:
            cid, name = int(cat["id"]), str(cat["name"])
            if names.get(cid, name) != name:
                raise FcnsegError(f"expected the same categories in every annotation file, got id {cid} named "
                                  f"{names[cid]!r} in {str(seen_in[cid])!r} and {name!r} in {str(path)!r}; try "
                                  "files of one dataset release")
            names[cid], seen_in[cid] = name, seen_in.get(cid, path)
    other = {cid for cid, name in names.items() if (cid, name) == STUFF_OTHER}
    if given is None:
        kept = [names[c] for c in sorted(names) if c not in other and names[c] not in (BACKGROUND, LABELME_BACKGROUND)]
        given = _palette_map([BACKGROUND, *kept], f"the categories of {sources[0][0]}")
    class_map = given
    lookup = _name_lookup(class_map)
    unknown = [cid for cid in sorted(names) if names[cid] not in lookup and cid not in other]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise FcnsegError(f"expected every category of {str(seen_in[unknown[0]])!r} in the class map "
                          f"{class_map.source!r}, got {names[unknown[0]]!r} (id {unknown[0]}) which it lacks{more}; "
                          "add it to the class file, or leave out --classes to take the categories as they are")
    values = {cid: lookup.get(name, class_map.ignore_index) for cid, name in names.items()}
    return class_map, values


def _coco_api(doc: dict) -> Any:
    """A ``pycocotools.coco.COCO`` index over an already-read JSON (its progress lines silenced)."""
    coco = import_optional("pycocotools.coco", "pycocotools to read COCO annotations",
                           "`pip install pycocotools` (fcnseg's `datasets` extra)")
    api = coco.COCO()
    api.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _coco_annotations(path: Path, doc: dict, values: Dict[int, int], class_map: ClassMap,
                      report: ConvertReport) -> Dict[Any, List[Tuple[int, dict]]]:
    """Image id -> [(value, annotation)], annotations checked and counted; degenerate polygons dropped."""
    sizes = {info["id"]: [int(info["height"]), int(info["width"])] for info in doc["images"]}
    by_image: Dict[Any, List[Tuple[int, dict]]] = defaultdict(list)
    for ann in doc["annotations"]:
        if ann["category_id"] not in values:
            raise FcnsegError(f"expected annotations of the listed categories in {str(path)!r}, got category_id "
                              f"{ann['category_id']!r} in annotation {ann['id']}; try the JSON as a COCO tool wrote it")
        if ann["image_id"] not in sizes:
            continue   # an annotation of an image the file does not list: nothing to draw it on
        segm = _coco_segmentation(path, ann, sizes[ann["image_id"]], report)
        if segm is None:
            continue
        value = class_map.ignore_index if ann.get("iscrowd") else values[ann["category_id"]]
        if value == class_map.ignore_index:
            report.ignored["crowd" if ann.get("iscrowd") else STUFF_OTHER[1]] += 1
        else:
            report.shapes[class_map.names[value]] += 1
        by_image[ann["image_id"]].append((value, {**ann, "segmentation": segm}))
    return by_image


def _coco_segmentation(path: Path, ann: dict, size: List[int], report: ConvertReport) -> Any:
    """The annotation's polygons (those of 3 or more points) or RLE; None (counted) when nothing is left."""
    segm = ann.get("segmentation")
    if isinstance(segm, dict):
        if list(segm.get("size", [])) != size or "counts" not in segm:
            raise FcnsegError(f"expected an RLE of the image's size {size[0]}x{size[1]} in annotation {ann['id']} of "
                              f"{str(path)!r}, got size {segm.get('size')}; try the JSON as a COCO tool wrote it")
        return segm
    if not isinstance(segm, list) or not segm:
        report.skipped["no segmentation"] += 1
        return None
    polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
    if len(polygons) < len(segm):
        report.skipped["invalid polygon"] += len(segm) - len(polygons)
    return polygons or None


def _coco_image_path(folder: Path, subfolders: Sequence[Path], info: dict, path: Path, split: str) -> Path:
    rel = str(info["file_name"]).replace("\\", "/")
    for candidate in (folder / rel, *(sub / rel for sub in subfolders)):
        if candidate.is_file():
            return candidate
    raise FcnsegError(f"expected the image {rel!r} of {str(path)!r} in {str(folder)!r} or a folder in it (such "
                      f"as {split}2017/), got no such file; try --images with the folder holding the images")


def _coco_renderer(api: Any, info: dict, image_path: Path, anns: List[Tuple[int, dict]],
                   path: Path) -> Callable[[], Tuple[Image.Image, np.ndarray]]:
    def render() -> Tuple[Image.Image, np.ndarray]:
        mask = _mask_api()
        image = open_image(image_path, exif=False).convert("RGB")   # COCO's coordinates are the stored pixels
        h, w = int(info["height"]), int(info["width"])
        if image.size != (w, h):
            raise FcnsegError(f"expected {str(image_path)!r} to be {w}x{h} as {str(path)!r} says, got "
                              f"{image.size[0]}x{image.size[1]}; try the images of the same COCO release")
        rles = [api.annToRLE(ann) for _, ann in anns]
        areas = [int(mask.area(rle)) for rle in rles]
        ids = np.zeros((h, w), dtype=np.uint8)
        # Largest first, so small objects on top stay visible; equal areas keep the file's order.
        for k in sorted(range(len(anns)), key=lambda k: -areas[k]):
            ids[mask.decode(rles[k]).astype(bool)] = anns[k][0]
        return image, ids
    return render


# ---------------------------------------------------------------- shared: classes, ids, inputs

def _as_class_map(classes: ClassesLike) -> Optional[ClassMap]:
    if classes is None:
        return None
    return _checked_colours(classes if isinstance(classes, ClassMap) else ClassMap.read(classes))


def _palette_map(names: Sequence[str], source: str) -> ClassMap:
    """Discovered classes in VOC's palette (background black), like VOC's own masks."""
    colours = tuple(tuple(int(v) for v in c) for c in voc_palette(min(len(names), 255)))
    return ClassMap(tuple(names), colours, source=source)   # type: ignore[arg-type]


def _checked_colours(class_map: ClassMap) -> ClassMap:
    """Refuse a class coloured like VOC's void: the masks use that colour for ignored pixels."""
    colours = class_map.colours[:class_map.num_classes]
    if VOID_COLOUR in colours:
        name = class_map.names[colours.index(VOID_COLOUR)]
        raise FcnsegError(f"expected class colours other than {','.join(map(str, VOID_COLOUR))} (VOC's void colour, "
                          f"which marks ignored pixels), got it for {name!r} in {class_map.source!r}; recolour it")
    return class_map


def _name_lookup(class_map: ClassMap) -> Dict[str, int]:
    """Name -> class id, with labelme's aliases: "_background_" is "background", "__ignore__" the ignore index."""
    lookup = {name: i for i, name in enumerate(class_map.names)}
    for a, b in ((LABELME_BACKGROUND, BACKGROUND), (BACKGROUND, LABELME_BACKGROUND)):
        if b in lookup:
            lookup.setdefault(a, lookup[b])
    lookup.setdefault(LABELME_IGNORE, class_map.ignore_index)
    return lookup


def _count_labels(report: ConvertReport, class_map: ClassMap, labels: Iterable[str], values: Iterable[int]) -> None:
    for label, value in zip(labels, values):
        if value == class_map.ignore_index:
            report.ignored[label] += 1
        else:
            report.shapes[class_map.names[value]] += 1


def _clean_id(text: str) -> str:
    """An id usable as a file stem and a list line: whitespace and path separators become '_'."""
    return re.sub(r"[\s/\\]+", "_", text).strip("_") or "image"


def _unique_id(base: str, taken: set, *, prefix: str = "") -> str:
    """``base``, else ``<prefix>_<base>``, else with ``_1``, ``_2``...: the first not in ``taken`` (any case, for
    case-insensitive file systems); it is added to ``taken``."""
    candidate, n = base, 1
    if prefix and candidate.lower() in taken:
        candidate = base = f"{prefix}_{base}"
    while candidate.lower() in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def _unique_ids(rels: Sequence[Path]) -> List[str]:
    """Ids from file stems; a stem found twice takes its folders as a prefix (``train/a/x.json`` -> ``train_a_x``)."""
    stems = [_clean_id(r.stem) for r in rels]
    repeated = Counter(s.lower() for s in stems)
    taken: set = set()
    return [_unique_id(stem if repeated[stem.lower()] == 1 else _clean_id("_".join(r.with_suffix("").parts)),
                       taken) for r, stem in zip(rels, stems)]


def _check_folder(path: PathLike, what: str, option: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        state = "a file" if folder.exists() else "missing"
        raise FcnsegError(f"expected {what} as {option}, got {str(folder)!r} which is {state}; check the path")
    return folder


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FcnsegError(f"expected a JSON file, got unreadable {str(path)!r} ({str(e).splitlines()[0][:80]}); "
                          "try a file saved by the annotation tool") from None


def _describe(doc: Any) -> str:
    if isinstance(doc, dict):
        keys = ", ".join(sorted(map(str, doc))[:5]) or "none"
        return f"an object with keys {keys}"
    return f"a JSON {type(doc).__name__}"


def _mask_api() -> Any:
    return import_optional("pycocotools.mask", "pycocotools to rasterise polygons",
                           "`pip install pycocotools` (fcnseg's `datasets` extra)")


def _rasterise(polygons: Sequence[Polygon], h: int, w: int) -> np.ndarray:
    """HxW bool: the union of ``polygons`` as pycocotools draws them (COCO's pixel convention)."""
    mask = _mask_api()
    return mask.decode(mask.frPyObjects([list(p) for p in polygons], h, w)).any(axis=2)


# ---------------------------------------------------------------- output

def _check_out(out: PathLike, force: bool) -> Path:
    """Refuse a file, an unwritable place, and (without ``force``) a folder holding files convert did not write."""
    folder = check_output_dir(out, "OUT", what="a folder (new or empty)", first_file=str(VOC_BASE / MARKER))
    if force or not folder.is_dir() or (folder / VOC_BASE / MARKER).is_file():
        return folder
    other = next((p for p in folder.rglob("*") if p.is_file()), None)
    if other is not None:
        raise FcnsegError(f"expected OUT to be new, empty or written by fcn-data convert, got {str(folder)!r} "
                          f"holding {other.relative_to(folder)}; try another OUT, or --force to write into it "
                          "(files of the same names are replaced)")
    return folder


def _write_dataset(out: Path, fmt: str, samples: Sequence[_Sample], report: ConvertReport, progress: bool) -> None:
    """Marker, images and masks, labelmap, then the split lists (all atomic): a killed run leaves no list."""
    base = out / VOC_BASE
    lists = base / "ImageSets" / "Segmentation"
    write_text(base / MARKER, json.dumps({"tool": "fcn-data convert", "from": fmt}))
    if lists.is_dir():   # lists of an earlier run name masks whose colours may be about to change
        for old in lists.glob("*.txt"):
            old.unlink()
    lut = _colour_table(report.classes)
    for sample in tqdm(samples, desc=f"converting {fmt}", unit="img", disable=not progress):
        image, ids = sample.render()
        _write_pair(base, sample.id, image, lut[ids])
        report.images.setdefault(sample.split, []).append(sample.id)
    write_text(base / "labelmap.txt", report.classes.labelmap_text())
    _write_lists(lists, report.images)


def _colour_table(class_map: ClassMap) -> np.ndarray:
    """256 x 3 uint8: class id -> its colour, the ignore index -> VOC's void colour (the reader's ignore)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    # colours[:num_classes]: ClassMap may carry more colours than names (distinct_colours(0, ...) is not empty)
    lut[:class_map.num_classes] = np.asarray(class_map.colours[:class_map.num_classes], dtype=np.uint8)
    lut[class_map.ignore_index] = VOID_COLOUR
    return lut


def _write_pair(base: Path, sample_id: str, image: Image.Image, rgb: np.ndarray) -> None:
    with atomic_path(base / "JPEGImages" / f"{sample_id}.jpg") as tmp:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    with atomic_path(base / "SegmentationClass" / f"{sample_id}.png") as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", pnginfo=info)


def _write_lists(folder: Path, images: Dict[str, List[str]]) -> None:
    splits = {split: sorted(ids) for split, ids in images.items()}
    if "train" in splits or "val" in splits:
        splits["trainval"] = splits.get("train", []) + splits.get("val", [])
    for split, ids in splits.items():
        write_text(folder / f"{split}.txt", "".join(f"{i}\n" for i in ids))
