"""Datasets in the layouts users bring, read through one API: ``open_dataset(root, split)``.

A dataset is a folder plus a ``ClassMap`` (names, colours, ignore index). Each layout lists its (image, label)
pairs for a split and says how a label file becomes class ids (``LabelDecoder``); ``PairDataset`` does the rest
(loading, checks, subsets) the same way for every layout:

- ``voc``: ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/<split>.txt}``, index
  ("P"/"L") label PNGs. With a ``labelmap.txt`` beside ``SegmentationClass/`` it is CVAT's "Segmentation mask 1.1"
  export (layout ``cvat``): colour label PNGs mapped through the labelmap.
- ``cityscapes``: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and ``gtFine/<split>/<city>/*_gtFine_labelIds.png``,
  label ids mapped to the 19 train ids (255 = ignore) by ``cityscapesscripts``' own table.
- ``ade20k``: ``ADEChallengeData2016/{images,annotations}/{training,validation}``; 150 classes, 0 ("other") is
  ignored and k becomes k-1 (mmsegmentation's ``reduce_zero_label``).
- ``folder``: ``images/`` and ``masks/`` with matching file stems; splits from ``<split>.txt`` (or
  ``splits/<split>.txt``) lists, or ``images/<split>/`` subfolders; index or colour mask PNGs, colours through a
  class file (``classes.json``/``.yaml``/``labelmap.txt``/``classes.txt`` in the root, or ``--classes``).

``detect_layout`` tells the layout from the folder and refuses a root that holds two.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..core.class_map import CLASS_FILE_SUFFIXES, ClassMap
from ..core.classes import IGNORE_INDEX
from ..core.data_source import LAYOUTS, SourceLike, as_source
from ..core.errors import FcnsegError, import_optional
from ..runtime import open_image

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {"ade20k": {"train": "training", "val": "validation"}}


# ---------------------------------------------------------------- labels

@dataclass(frozen=True)
class LabelDecoder:
    """How a label file's pixels become class ids (``0..N-1`` and the ignore index).

    Attributes:
        kind: "index" (the stored values are the ids), "colour" (RGB through the class map) or "lut" (the
            stored values through ``lut``: Cityscapes' label ids, ADE20K's shifted ids).
        lut: 256 entries for "lut".
    """

    kind: str = "index"
    lut: Optional[np.ndarray] = None

    def decode(self, label: Image.Image, class_map: ClassMap, path: Path) -> np.ndarray:
        """The HxW uint8 ids of one label image, checked against the class map."""
        if self.kind == "colour" or (self.kind == "index" and label.mode in ("RGB", "RGBA")):
            if self.kind == "index":
                raise FcnsegError(f"expected a palette ('P') or 'L' label PNG holding class ids, got colour mode "
                                  f"{label.mode!r} in {path}; give the classes' colours with --classes FILE "
                                  "(docs/datasets.md)")
            return class_map.encode_colours(np.asarray(label.convert("RGB")), str(path))
        if label.mode not in ("P", "L", "I", "I;16"):
            raise FcnsegError(f"expected a palette ('P') or 'L' label PNG, got mode {label.mode!r} in {path}")
        arr = np.asarray(label)
        if self.kind == "lut":
            if arr.max(initial=0) > 255:
                raise FcnsegError(f"expected label values 0..255 in {path}, got {int(arr.max())}")
            return self.lut[arr.astype(np.uint8)]   # type: ignore[index]
        bad = out_of_map(arr, class_map)
        if bad.size:
            raise FcnsegError(f"expected label values in 0..{class_map.num_classes - 1} or {class_map.ignore_index}, "
                              f"got {bad[:5].tolist()} in {path}; check the class file (--classes) or the labels")
        return arr.astype(np.uint8, copy=False)


def out_of_map(arr: np.ndarray, class_map: ClassMap) -> np.ndarray:
    """Values of an index label that are neither a class id nor the ignore index (negative ones of 32-bit "I"
    labels included: cast to uint8 they would pass for valid ids)."""
    # bincount of uint8 labels: one pass, no sort (np.unique sorts every pixel)
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if arr.dtype == np.uint8 else np.unique(arr)
    return values[((values >= class_map.num_classes) | (values < 0)) & (values != class_map.ignore_index)]


# ---------------------------------------------------------------- the dataset

class PairDataset:
    """One split of a dataset: (image, label) file pairs, a class map and a label decoder.

    Attributes:
        layout: the layout's name (``LAYOUTS``).
        root: the folder the user named.
        split: the split's name.
        class_map: the dataset's classes.
        ids: one name per sample (its file stem, or the path below the split).
    """

    def __init__(self, layout: str, root: Path, split: str, pairs: Sequence[Tuple[str, Path, Optional[Path]]],
                 class_map: ClassMap, decoder: LabelDecoder = LabelDecoder()) -> None:
        if not pairs:
            raise FcnsegError(f"expected images in split {split!r} of the {layout} dataset {str(root)!r}, got none; "
                              "check the split (--split/--val-split) and docs/datasets.md for the layout")
        self.layout, self.root, self.split = layout, root, split
        self.ids = [p[0] for p in pairs]
        self._images = {p[0]: p[1] for p in pairs}
        self._labels = {p[0]: p[2] for p in pairs}
        self.class_map, self.decoder = class_map, decoder

    @property
    def num_classes(self) -> int:
        return self.class_map.num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> str:
        """One line: layout, root, split, sample and class count."""
        return (f"{self.layout} dataset {self.root} (split {self.split}: {len(self)} images, "
                f"{self.num_classes} classes from {self.class_map.source or 'the layout'})")

    def subset(self, ids: Sequence[str]) -> "PairDataset":
        """The same split restricted to ``ids`` (each one of its own), as a new dataset; this one is unchanged."""
        unknown = sorted(set(ids) - set(self.ids))
        if unknown:
            raise FcnsegError(f"expected image ids of split {self.split!r}, got {len(unknown)} others "
                              f"({', '.join(unknown[:3])}); try ids read from its list file")
        part = copy.copy(self)
        part.ids = list(ids)
        return part

    def image_path(self, i: int) -> Path:
        return self._images[self.ids[i]]

    def mask_path(self, i: int) -> Optional[Path]:
        """The label file of sample ``i``; None when the image has none."""
        return self._labels[self.ids[i]]

    def label_image(self, i: int) -> Image.Image:
        """The stored label image (no conversion)."""
        path = self.mask_path(i)
        if path is None:
            raise FcnsegError(f"expected a label for {self.image_path(i)}, got none ({self.layout} layout); "
                              "label it or remove it from the split")
        return _open(path)

    def load_pil(self, i: int) -> Tuple[Image.Image, Image.Image]:
        """The i-th sample as (RGB image, "L" mask of class ids) PIL images."""
        img = _open(self.image_path(i)).convert("RGB")
        ids = self.decode(i)
        self._check_sizes(i, img.size, (ids.shape[1], ids.shape[0]))
        return img, Image.fromarray(ids, mode="L")

    def decode(self, i: int) -> np.ndarray:
        """Sample ``i``'s label as HxW uint8 class ids, checked against the class map."""
        return self.decoder.decode(self.label_image(i), self.class_map, self.mask_path(i))  # type: ignore[arg-type]

    def load(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """The i-th sample as (HxWx3 uint8 image, HxW uint8 mask)."""
        img, mask = self.load_pil(i)
        return np.asarray(img), np.asarray(mask)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self.load(i)

    def check_pair(self, i: int) -> None:
        """Check the i-th pair without decoding the image: both files readable, label values and sizes.

        Raises:
            FcnsegError: the first problem found, naming the file.
        """
        path = self.image_path(i)
        try:
            with Image.open(path) as img:
                size = img.size
        except FileNotFoundError:
            raise FcnsegError(f"expected the file {path}, which does not exist (listed in the split)") from None
        except OSError as e:
            raise FcnsegError(f"could not read {path}: {e}; expected a valid JPEG/PNG") from None
        ids = self.decode(i)
        self._check_sizes(i, size, (ids.shape[1], ids.shape[0]))

    def _check_sizes(self, i: int, image_size: tuple, mask_size: tuple) -> None:
        if tuple(image_size) != tuple(mask_size):
            raise FcnsegError(f"expected image and label of the same size, got {image_size} and {mask_size} "
                              f"for {self.ids[i]} ({self.mask_path(i)})")


def for_model(root: SourceLike, split: str, num_classes: int) -> PairDataset:
    """``open_dataset`` for scoring a model with ``num_classes`` outputs: the class counts must agree.

    Raises:
        FcnsegError: the dataset's class map has another class count (or anything ``open_dataset`` raises).
    """
    dataset = open_dataset(root, split)
    if dataset.num_classes != num_classes:
        raise FcnsegError(f"expected a dataset with the model's {num_classes} classes, got {dataset.num_classes} "
                          f"in the {dataset.layout} dataset {dataset.root} (classes from "
                          f"{dataset.class_map.source or 'the layout'}); try --classes FILE with the model's "
                          "classes, or the dataset the model was trained on")
    return dataset


def take(dataset: PairDataset, limit: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """The first ``limit`` samples of a dataset (all when None)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        yield dataset.load(i)


def _open(path: Path) -> Image.Image:
    """The project's one image reader, on the stored pixels (labels are drawn on them: no EXIF rotation)."""
    if not path.is_file():
        raise FcnsegError(f"expected the file {path}, which does not exist (listed in the split)")
    return open_image(path, exif=False)


# ---------------------------------------------------------------- opening a root

def open_dataset(root: SourceLike, split: str = "train", *, layout: Optional[str] = None,
                 classes: Optional[PathLike] = None, use_aug: bool = True) -> PairDataset:
    """One split of the dataset in ``root``, in the layout found there (or the one named).

    Args:
        root: the dataset's folder, or a ``DataSource`` (folder, layout, class file) as the CLIs build it.
        split: "train", "val" or another list name (ADE20K's "training"/"validation" are accepted too).
        layout: one of ``LAYOUTS``; None detects it (``detect_layout``).
        classes: a class file (JSON, YAML, labelmap.txt, names); overrides the layout's own map.
        use_aug: VOC: the SBD-augmented train list when present.

    Raises:
        FcnsegError: no layout or two layouts found, a missing or empty split, a bad class file.
    """
    source = as_source(root)
    base, layout, classes = Path(source.root), layout or source.layout, classes or source.classes
    if not base.is_dir():
        raise FcnsegError(f"expected a dataset folder, got {str(base)!r} which is not a folder; check --data-path")
    name = layout or detect_layout(base)
    if name not in READERS:
        raise FcnsegError(f"expected --layout in {', '.join(LAYOUTS)}, got {name!r}")
    class_map = ClassMap.read(classes) if classes else None
    return READERS[name](base, split, class_map, use_aug)


def detect_layout(root: Path) -> str:
    """The layout of ``root`` (see the module docstring).

    Raises:
        FcnsegError: none found, or markers of two layouts in one root.
    """
    found = [name for name, probe in PROBES.items() if probe(root)]
    if "cvat" in found:
        found.remove("voc")
    if len(found) > 1:
        raise FcnsegError(f"expected one dataset layout in {str(root)!r}, got markers of {' and '.join(found)}; "
                          f"move one away or name it with --layout {found[0]}")
    if not found:
        raise FcnsegError(f"expected a dataset layout ({', '.join(LAYOUTS)}) in {str(root)!r}, got none; see "
                          f"docs/datasets.md for each layout's tree, or `fcn-data synth {root}` for a synthetic one")
    return found[0]


def _voc_base(root: Path) -> Optional[Path]:
    for base in (root / "VOCdevkit" / "VOC2012", root):
        if (base / "ImageSets" / "Segmentation").is_dir() and (base / "JPEGImages").is_dir():
            return base
    return None


def _voc_labelmap(root: Path) -> Optional[Path]:
    """CVAT's ``labelmap.txt`` of a VOC-layout root (in VOC2012/ or the root), if any."""
    base = _voc_base(root)
    if base is None:
        return None
    return next((p for p in (base / "labelmap.txt", root / "labelmap.txt") if p.is_file()), None)


def _ade_base(root: Path) -> Optional[Path]:
    for base in (root / "ADEChallengeData2016", root):
        if (base / "images" / "training").is_dir() and (base / "annotations" / "training").is_dir():
            return base
    return None


PROBES: Dict[str, Callable[[Path], bool]] = {
    "voc": lambda r: _voc_base(r) is not None,
    "cvat": lambda r: _voc_labelmap(r) is not None,
    "cityscapes": lambda r: (r / "leftImg8bit").is_dir() and (r / "gtFine").is_dir(),
    "ade20k": lambda r: _ade_base(r) is not None,
    "folder": lambda r: (r / "images").is_dir() and (r / "masks").is_dir(),
}


def _read_voc(root: Path, split: str, class_map: Optional[ClassMap], use_aug: bool) -> PairDataset:
    base = _voc_base(root)
    if base is None:
        raise FcnsegError(f"expected a VOC layout ROOT/VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,"
                          f"ImageSets/Segmentation}} under {root}, got none; try `fcn-data synth {root}` "
                          "to write a synthetic dataset, or point --data-path at the folder holding VOCdevkit/")
    labelmap = _voc_labelmap(root)
    layout = "cvat" if labelmap is not None else "voc"
    if class_map is None:
        class_map = ClassMap.read(labelmap) if labelmap is not None else ClassMap.voc()
    aug_list = base / "ImageSets/Segmentation/train_aug.txt"
    if split == "train" and use_aug and aug_list.is_file() and (base / "SegmentationClassAug").is_dir():
        list_file, mask_dir = aug_list, base / "SegmentationClassAug"
    else:
        list_file, mask_dir = base / f"ImageSets/Segmentation/{split}.txt", base / "SegmentationClass"
    ids = _read_list(list_file, sorted(p.stem for p in (base / "ImageSets" / "Segmentation").glob("*.txt")))
    pairs = [(i, base / "JPEGImages" / f"{i}.jpg", mask_dir / f"{i}.png") for i in ids]
    decoder = LabelDecoder("colour") if labelmap is not None else LabelDecoder("index")
    return PairDataset(layout, root, split, pairs, class_map, decoder)


def _read_list(list_file: Path, available: Sequence[str]) -> List[str]:
    """The ids of a split list file; a missing or empty list is one line naming the splits there are."""
    if not list_file.is_file():
        raise FcnsegError(f"expected the split list {list_file}, which does not exist; "
                          f"try one of the splits {list(available)} (the command's split "
                          "option: --split, --val-split, --calib-split or --eval-split) or check --data-path")
    ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
    if not ids:
        raise FcnsegError(f"expected image ids in {list_file}, got an empty list; list the split's images, "
                          "one file stem per line")
    return ids


def cityscapes_class_map_and_lut() -> Tuple[ClassMap, np.ndarray]:
    """Cityscapes' 19 train classes (names, colours) and the label id -> train id table, both taken from
    ``cityscapesscripts.helpers.labels`` (the benchmark's own definition), 255 for ignored ids."""
    labels = import_optional("cityscapesscripts.helpers.labels", "cityscapesscripts for Cityscapes' label table",
                             "`pip install cityscapesscripts` (fcnseg's `datasets` extra)")
    train = sorted((lb for lb in labels.labels if 0 <= lb.trainId < 255), key=lambda lb: lb.trainId)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for lb in labels.labels:
        if 0 <= lb.id < 256 and 0 <= lb.trainId < 255:
            lut[lb.id] = lb.trainId
    return ClassMap(tuple(lb.name for lb in train), tuple(tuple(lb.color) for lb in train),
                    source="cityscapesscripts"), lut


def _read_cityscapes(root: Path, split: str, class_map: Optional[ClassMap], use_aug: bool) -> PairDataset:
    own, lut = cityscapes_class_map_and_lut()
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        splits = sorted(p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir())
        raise FcnsegError(f"expected the split folder {images}, which does not exist; try one of {splits}")
    pairs = []
    for img in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        label = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((f"{img.parent.name}/{stem}", img, label if label.is_file() else None))
    if class_map is not None and class_map.num_classes != own.num_classes:
        raise FcnsegError(f"expected a class file with Cityscapes' {own.num_classes} train classes, got "
                          f"{class_map.num_classes} in {class_map.source}")
    return PairDataset("cityscapes", root, split, pairs, class_map or own, LabelDecoder("lut", lut))


def _read_ade20k(root: Path, split: str, class_map: Optional[ClassMap], use_aug: bool) -> PairDataset:
    base = _ade_base(root)
    assert base is not None, "detect_layout checked the ADE20K tree"
    folder = SPLIT_ALIASES["ade20k"].get(split, split)
    images = base / "images" / folder
    if not images.is_dir():
        raise FcnsegError(f"expected the split folder {images}, which does not exist; try --split train or val "
                          "(ADE20K's training and validation)")
    pairs = []
    for img in sorted(images.glob("*.jpg")):
        label = base / "annotations" / folder / f"{img.stem}.png"
        pairs.append((img.stem, img, label if label.is_file() else None))
    names = class_map or _ade_class_map(base)
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1:names.num_classes + 1] = np.arange(names.num_classes)   # reduce_zero_label: 0 -> ignore, k -> k-1
    return PairDataset("ade20k", root, split, pairs, names, LabelDecoder("lut", lut))


ADE20K_CLASSES = 150


def _ade_class_map(base: Path) -> ClassMap:
    """ADE20K's 150 names from its ``objectInfo150.csv`` (shipped with the release) when present, else generic."""
    info = base / "objectInfo150.csv"
    if info.is_file():
        import csv

        with info.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        names = tuple(r["Name"].split(";")[0].strip() for r in rows)
        if len(names) == ADE20K_CLASSES:
            return ClassMap(names, source=str(info))
    return ClassMap.generic(ADE20K_CLASSES, source="ADE20K (no objectInfo150.csv)")


def _read_folder(root: Path, split: str, class_map: Optional[ClassMap], use_aug: bool) -> PairDataset:
    class_file = _class_file(root)
    if class_map is None and class_file is not None:
        class_map = ClassMap.read(class_file)
    stems = _folder_split(root, split)
    masks = {p.relative_to(root / "masks").with_suffix("").as_posix(): p
             for p in (root / "masks").rglob("*.png")}
    pairs = [(s, img, masks.get(s) or masks.get(Path(s).name)) for s, img in stems]
    if class_map is None:
        class_map = _classes_from_index_masks([m for _, _, m in pairs if m is not None], root)
    colour = any(_is_colour(m) for _, _, m in pairs[:8] if m is not None)
    return PairDataset("folder", root, split, pairs, class_map, LabelDecoder("colour" if colour else "index"))


def _class_file(root: Path) -> Optional[Path]:
    for name in ("classes", "labelmap"):
        for suffix in CLASS_FILE_SUFFIXES:
            if (root / f"{name}{suffix}").is_file():
                return root / f"{name}{suffix}"
    return None


def _folder_split(root: Path, split: str) -> List[Tuple[str, Path]]:
    """(id, image) of a split: its list file, else its subfolder of ``images/``, else every image."""
    images = root / "images"
    lists = [root / f"{split}.txt", root / "splits" / f"{split}.txt"]
    if any(p.is_file() for p in lists):
        list_file = next(p for p in lists if p.is_file())
        available = sorted({p.stem for d in (root, root / "splits") if d.is_dir() for p in d.glob("*.txt")}
                           - {"classes", "labelmap"})
        by_stem = {p.relative_to(images).with_suffix("").as_posix(): p for p in _image_files(images)}
        out = []
        for i in _read_list(list_file, available):
            if i not in by_stem:
                raise FcnsegError(f"expected an image {i}.* under {images} (listed in {list_file}), got none")
            out.append((i, by_stem[i]))
        return out
    sub = images / split
    if sub.is_dir():
        return [(p.relative_to(images).with_suffix("").as_posix(), p) for p in _image_files(sub)]
    if any(p.is_dir() for p in images.iterdir()):
        splits = sorted(p.name for p in images.iterdir() if p.is_dir())
        raise FcnsegError(f"expected the split {split!r} as {sub} or {lists[0]}, got neither; try one of {splits}")
    return [(p.relative_to(images).with_suffix("").as_posix(), p) for p in _image_files(images)]


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _is_colour(path: Path) -> bool:
    with Image.open(path) as im:
        return im.mode in ("RGB", "RGBA")


def _classes_from_index_masks(masks: Sequence[Path], root: Path) -> ClassMap:
    """Index masks without a class file: as many generic classes as the largest id in the first masks."""
    if not masks:
        raise FcnsegError(f"expected masks under {root / 'masks'} matching the images, got none")
    if any(_is_colour(m) for m in masks[:8]):
        raise FcnsegError(f"expected a class file (classes.json/.yaml, labelmap.txt) in {root} for colour masks, "
                          "got none; write one (docs/datasets.md) or pass --classes FILE")
    top = 0
    for m in masks[:64]:
        arr = np.asarray(_open(m))
        values = np.unique(arr)
        top = max(top, int(values[values != IGNORE_INDEX].max(initial=0)))
    return ClassMap.generic(top + 1, source=f"the ids in {root / 'masks'} (no class file)")


READERS: Dict[str, Callable[[Path, str, Optional[ClassMap], bool], PairDataset]] = {
    "voc": _read_voc, "cvat": _read_voc, "cityscapes": _read_cityscapes, "ade20k": _read_ade20k,
    "folder": _read_folder,
}
