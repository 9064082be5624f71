"""A report on a dataset in any layout: class statistics and every problem, found in one scan.

``check_dataset(root)`` opens each split with ``open_dataset`` and reads every (image, label) pair once, in
threads (Pillow releases the GIL): image headers only, labels decoded. It counts, per split and in total, the
pixels of each class and the images it appears in, the image sizes and the ignored pixels, and it collects every
problem instead of stopping at the first: files missing or unreadable, images without labels, labels of another
size than their image, labels in a mode that holds no class ids, label values outside the class map (index ids
``>= N``, colours not in the class file). ``fcn-data check`` prints the report; ``datasets.check.scan_splits``
runs the same scan before training; ``write_report`` writes it as JSON with a bar chart of the class frequencies.

numpy and Pillow only; matplotlib is imported for the chart alone.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.atomic import write_bytes
from ..core.class_map import ClassMap
from ..core.data_source import SourceLike
from ..core.errors import FcnsegError, import_optional
from ..core.jsonio import write_json
from ..core.output_guard import SOFTWARE, ArtifactKind, check_output, json_dict_with
from .layouts import PairDataset, open_dataset, out_of_map

__all__ = ["DEFAULT_SPLITS", "REPORT_CHART", "REPORT_JSON", "DatasetReport", "Issue", "SplitStats", "check_dataset",
           "report_paths", "scan_datasets", "write_report"]

PathLike = Union[str, "Path"]
DEFAULT_SPLITS = ("train", "val")
MAX_FILES = 3                 # file names kept per problem (the count says how many there are)
INDEX_MODES = ("P", "L", "I", "I;16")
# Problem kinds in the order they are listed: a missing split first, wrong label values last.
KINDS = ("split", "missing", "unreadable", "no_label", "size", "mode", "label", "class_id", "colour")
WIDE_RANGE = 100.0            # a chart whose frequencies span more than this factor gets a log axis
CHART_TITLE = "fcnseg class frequencies"
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _is_chart(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            info = img.info
            return img.format == "PNG" and info.get("Software") == SOFTWARE and info.get("Title") == CHART_TITLE
    except _READ_ERRORS:
        return False


REPORT_JSON = ArtifactKind("fcnseg dataset report", json_dict_with("layout", "classes", "splits", "problems"))
REPORT_CHART = ArtifactKind("fcnseg class-frequency chart", _is_chart)


# ---------------------------------------------------------------- one pair

@dataclass
class _Pair:
    """What one (image, label) pair holds; ``class_px`` None when no label was read."""

    split: str
    image_hw: Optional[Tuple[int, int]] = None
    label_hw: Optional[Tuple[int, int]] = None
    class_px: Optional[np.ndarray] = None
    ignore_px: int = 0
    unmapped_px: int = 0
    issues: List[Tuple[str, Any, str, str, int]] = field(default_factory=list)   # kind, value, file, detail, px


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _scan_pair(job: Tuple[PairDataset, int]) -> _Pair:
    dataset, i = job
    root, pair = Path(dataset.root), _Pair(dataset.split)
    image = dataset.image_path(i)
    pair.image_hw = _header_hw(image, pair, _rel(image, root))
    mask = dataset.mask_path(i)
    if mask is None or not mask.is_file():
        expected = f"no {_rel(mask, root)}" if mask is not None else ""
        pair.issues.append(("no_label", None, _rel(image, root), expected, 0))
        return pair
    name = _rel(mask, root)
    try:
        with Image.open(mask) as label:
            _count_label(dataset, label, mask, name, pair)
    except _READ_ERRORS as e:
        pair.issues.append(("unreadable", None, name, _reason(e), 0))
    except FcnsegError as e:       # a decoder's own refusal (e.g. Cityscapes ids > 255): its message, per file
        pair.issues.append(("label", str(e), name, "", 0))
    if pair.image_hw and pair.label_hw and pair.image_hw != pair.label_hw:
        detail = f"{_hw(pair.label_hw)}, image {_hw(pair.image_hw)}"
        pair.issues.append(("size", None, name, detail, 0))
    return pair


def _header_hw(path: Path, pair: _Pair, name: str) -> Optional[Tuple[int, int]]:
    """The image's HxW from its header (not decoded); a missing or unreadable file is an issue."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except FileNotFoundError:
        pair.issues.append(("missing", None, name, "", 0))
    except _READ_ERRORS as e:
        pair.issues.append(("unreadable", None, name, _reason(e), 0))
    return None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _count_label(dataset: PairDataset, label: Image.Image, path: Path, name: str, pair: _Pair) -> None:
    """Per-class pixels of one label, with its out-of-map values (index ids or colours) as issues."""
    cm, kind = dataset.class_map, dataset.decoder.kind
    if kind != "colour" and label.mode not in INDEX_MODES:
        pair.issues.append(("mode", label.mode, name, "", 0))
        return
    bad: Dict[Any, int] = {}
    if kind == "colour":
        rgb = np.asarray(label.convert("RGB"))
        ids, unknown = cm.lookup_colours(rgb)
        values, counts = _histogram(ids)
        bad = _unknown_colour_pixels(rgb, ids, unknown, cm.ignore_index)
    elif kind == "index":
        values, counts = _histogram(np.asarray(label))
        wrong = out_of_map(values, cm)
        bad = {int(v): int(counts[values == v].sum()) for v in wrong}
    else:
        values, counts = _histogram(dataset.decoder.decode(label, cm, path))
    n = cm.num_classes
    known = (values >= 0) & (values < n) & (values != cm.ignore_index)
    pair.class_px = np.zeros(n, np.int64)
    pair.class_px[values[known]] = counts[known]
    pair.unmapped_px = sum(bad.values())
    # colour labels: lookup_colours puts unknown colours at the ignore index; they are counted as unmapped instead
    pair.ignore_px = int(counts[values == cm.ignore_index].sum()) - (pair.unmapped_px if kind == "colour" else 0)
    pair.label_hw = (label.size[1], label.size[0])
    for value, px in bad.items():
        pair.issues.append(("colour" if kind == "colour" else "class_id", value, name, "", px))


def _histogram(arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(values present, their pixel counts), sorted; uint8 by one bincount (no sort of every pixel)."""
    if arr.dtype == np.uint8:
        counts = np.bincount(arr.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    values, counts = np.unique(arr, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]


def _unknown_colour_pixels(rgb: np.ndarray, ids: np.ndarray, unknown: Sequence[Tuple[int, int, int]],
                           ignore: int) -> Dict[Tuple[int, int, int], int]:
    """Pixels of each colour not in the class map (only the pixels at the ignore index are looked at)."""
    if not unknown:
        return {}
    values, counts = np.unique(_pack(rgb[..., :3][ids == ignore]), return_counts=True)
    found = dict(zip(values.tolist(), counts.tolist()))
    return {tuple(c): int(found.get((c[0] << 16) | (c[1] << 8) | c[2], 0)) for c in unknown}   # type: ignore[misc]


def _hw(hw: Tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------- accumulated results

@dataclass
class SplitStats:
    """Counts over one split (or over all: ``DatasetReport.total``).

    Attributes:
        images: pairs listed; labels: label files read.
        class_pixels: pixels of each class; class_images: the labels each class appears in.
        appear_pixels: per class, the class pixels of all labels the class appears in (median-frequency weights).
        ignore_pixels: pixels at the ignore index; unmapped_pixels: pixels whose value is no class
            (ids >= N, unknown colours).
        min_hw, max_hw: the smallest and largest image height and width (each on its own, HxW).
    """

    num_classes: int
    images: int = 0
    labels: int = 0
    class_pixels: np.ndarray = field(init=False)
    class_images: np.ndarray = field(init=False)
    appear_pixels: np.ndarray = field(init=False)
    ignore_pixels: int = 0
    unmapped_pixels: int = 0
    min_hw: Optional[Tuple[int, int]] = None
    max_hw: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        for name in ("class_pixels", "class_images", "appear_pixels"):
            setattr(self, name, np.zeros(self.num_classes, np.int64))

    @property
    def label_pixels(self) -> int:
        """Every pixel of the labels read: classes, ignored and unmapped."""
        return int(self.class_pixels.sum()) + self.ignore_pixels + self.unmapped_pixels

    @property
    def ignore_fraction(self) -> float:
        """Ignored pixels / all label pixels (NaN when no label was read)."""
        return self.ignore_pixels / self.label_pixels if self.label_pixels else float("nan")

    def add(self, pair: _Pair) -> None:
        self.images += 1
        if pair.image_hw is not None:
            self._sizes(pair.image_hw, pair.image_hw)
        if pair.class_px is None:
            return
        present = pair.class_px > 0
        self.labels += 1
        self.class_pixels += pair.class_px
        self.class_images += present
        self.appear_pixels += present * pair.class_px.sum()
        self.ignore_pixels += pair.ignore_px
        self.unmapped_pixels += pair.unmapped_px

    def merge(self, other: SplitStats) -> None:
        self.images, self.labels = self.images + other.images, self.labels + other.labels
        self.class_pixels = self.class_pixels + other.class_pixels
        self.class_images = self.class_images + other.class_images
        self.appear_pixels = self.appear_pixels + other.appear_pixels
        self.ignore_pixels += other.ignore_pixels
        self.unmapped_pixels += other.unmapped_pixels
        if other.min_hw is not None:
            self._sizes(other.min_hw, other.max_hw)   # type: ignore[arg-type]

    def _sizes(self, low: Tuple[int, int], high: Tuple[int, int]) -> None:
        self.min_hw = low if self.min_hw is None else (min(self.min_hw[0], low[0]), min(self.min_hw[1], low[1]))
        self.max_hw = high if self.max_hw is None else (max(self.max_hw[0], high[0]), max(self.max_hw[1], high[1]))

    def to_dict(self, names: Sequence[str]) -> Dict[str, Any]:
        return {"images": self.images, "labels": self.labels,
                "image_size": {"min_hw": self.min_hw, "max_hw": self.max_hw},
                "label_pixels": self.label_pixels, "ignore_pixels": self.ignore_pixels,
                "unmapped_pixels": self.unmapped_pixels, "ignore_fraction": self.ignore_fraction,
                "classes": {n: {"pixels": int(p), "images": int(k)}
                            for n, p, k in zip(names, self.class_pixels, self.class_images)}}


# One line per problem kind ("split" and "label" carry their own message).
MESSAGES = {
    "missing": "expected the files the split lists, got {where} missing; restore them or remove them from the "
               "split list",
    "unreadable": "expected readable JPEG/PNG files, got {where} that could not be read; replace them or remove "
                  "them from the split list",
    "no_label": "expected a label for every image, got {images} without one in the {splits} ({shown}); label them "
                "or remove them from the split list",
    "size": "expected each label the size of its image, got {where} of another size; re-export those labels at "
            "their image's size",
    "mode": "expected palette ('P') or 'L' label PNGs holding class ids, got mode {value!r} in {where}; for colour "
            "labels give the classes' colours with --classes FILE (docs/datasets.md)",
    "class_id": "expected class ids 0..{last} or {ignore} (ignored) in the labels, got class id {value} in {where}; "
                "check the class file (--classes) or the labels",
    "colour": "expected only the colours of the class map ({source}) in the colour labels, got colour {colour} in "
              "{where}; add it to the class file or fix the labels",
}


@dataclass
class Issue:
    """One problem: a kind (``KINDS``), its value (a class id, a colour, a label mode, a split) and the files.

    Attributes:
        files: the first ``MAX_FILES`` files (relative to the root), ``details`` beside them.
        count: how many files have it; pixels: how many label pixels (values outside the class map).
        splits: the splits it was found in.
    """

    kind: str
    value: Any
    files: List[str] = field(default_factory=list)
    details: List[str] = field(default_factory=list)
    count: int = 0
    pixels: int = 0
    splits: List[str] = field(default_factory=list)

    def add(self, split: str, file: str, detail: str, pixels: int) -> None:
        if len(self.files) < MAX_FILES:
            self.files.append(file)
            self.details.append(detail)
        self.count += 1
        self.pixels += pixels
        if split not in self.splits:
            self.splits.append(split)

    def message(self, class_map: ClassMap) -> str:
        """The problem in one line: what was expected, what was found where, what to try."""
        if self.kind == "split":
            return f"{self.details[0]} ({self.value} split)"
        if self.kind == "label":
            return f"{self.value} ({self._splits()})"
        return MESSAGES[self.kind].format(
            where=self._where(), value=self.value, images=_count(self.count, "image"), splits=self._splits(),
            shown=self._shown(), last=class_map.num_classes - 1, ignore=class_map.ignore_index,
            source=class_map.source or "given",
            colour=_colour(self.value) if self.kind == "colour" else "")

    def _where(self) -> str:
        return f"{_count(self.count, 'file')} of the {self._splits()} ({self._shown()})"

    def _splits(self) -> str:
        return f"{' and '.join(self.splits)} split{'s' if len(self.splits) > 1 else ''}"

    def _shown(self) -> str:
        shown = [f"{f} ({d})" if d else f for f, d in zip(self.files, self.details)]
        return ", ".join(shown) + (", ..." if self.count > len(self.files) else "")

    def to_dict(self) -> Dict[str, Any]:
        value = _colour(self.value) if self.kind == "colour" else self.value
        return {"kind": self.kind, "value": value, "count": self.count, "pixels": self.pixels,
                "splits": self.splits, "files": self.files, "details": self.details}


def _colour(c: Sequence[int]) -> str:
    return f"({c[0]},{c[1]},{c[2]})"


def _sort_key(issue: Issue) -> Tuple[int, Any]:
    return KINDS.index(issue.kind), ("" if issue.value is None else issue.value)


# ---------------------------------------------------------------- the report

@dataclass
class DatasetReport:
    """Everything one scan found; truthy when there is no problem (as a parity result).

    Attributes:
        layout: the layout's name; root: the folder; where: where the layout's files are
            ("VOCdevkit/VOC2012 with labelmap.txt"); base: that folder.
        class_map: the dataset's classes (names, colours, ignore index, source).
        splits: statistics of each split read, in the order asked.
        issues: every problem, in ``KINDS`` order.
        missing_splits: split -> why it could not be opened (a problem only when asked ``strict``).
    """

    layout: str
    root: str
    where: str
    base: str
    class_map: ClassMap
    splits: Dict[str, SplitStats]
    issues: List[Issue] = field(default_factory=list)
    missing_splits: Dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    def __bool__(self) -> bool:
        return self.ok

    @property
    def total(self) -> SplitStats:
        """All splits read, together."""
        total = SplitStats(self.class_map.num_classes)
        for stats in self.splits.values():
            total.merge(stats)
        return total

    def problems(self) -> List[str]:
        """One line per problem (a value and the files that have it), in ``KINDS`` order."""
        return [issue.message(self.class_map) for issue in self.issues]

    def raise_for_problems(self, hint: str = "") -> None:
        """Raise the first problem, with a count of the others and ``hint`` (what to do next).

        Raises:
            FcnsegError: "<first problem> (and N more problems); <hint>" when there is any.
        """
        lines = self.problems()
        if not lines:
            return
        more = f" (and {_count(len(lines) - 1, 'more problem')})" if len(lines) > 1 else ""
        hint = hint or f"see every problem with `fcn-data check {self.root}`"
        raise FcnsegError(f"{lines[0]}{more}; {hint}")

    @property
    def frequency_split(self) -> str:
        """The split frequencies and weights come from: "train" when it was read, else "all" (every split)."""
        return "train" if "train" in self.splits else "all"

    def _stats(self, split: Optional[str]) -> SplitStats:
        split = split or self.frequency_split
        if split == "all":
            return self.total
        if split not in self.splits:
            raise FcnsegError(f"expected a split the report read ({', '.join(self.splits)}), got {split!r}; "
                              "try check_dataset with that split")
        return self.splits[split]

    def frequencies(self, split: Optional[str] = None) -> np.ndarray:
        """Each class's fraction of the class pixels (ignored and unmapped pixels left out; sums to 1).

        Args:
            split: a split read, or "all"; None: ``frequency_split`` (the train split when read).
        """
        px = self._stats(split).class_pixels.astype(np.float64)
        return px / px.sum() if px.sum() else px

    def median_frequency_weights(self, split: Optional[str] = None) -> np.ndarray:
        """Loss weights by median-frequency balancing (Eigen & Fergus, 2015): ``w_c = median(f) / f_c``.

        ``f_c`` is the pixels of class c over the class pixels (ignored pixels left out) of the labels where c
        appears; the median is over the classes that appear. A class that never appears gets weight 0: it has
        no pixel the weight could apply to, and an infinite weight would poison the loss; ``text()`` names
        such classes so the user can see the gap.

        Raises:
            FcnsegError: no class pixel at all in the split.
        """
        stats = self._stats(split)
        seen = stats.class_pixels > 0
        if not seen.any():
            raise FcnsegError(f"expected class pixels in the {split or self.frequency_split} split for "
                              "median-frequency weights, got none (every label pixel ignored or unreadable)")
        freq = np.zeros(len(seen))
        freq[seen] = stats.class_pixels[seen] / stats.appear_pixels[seen]
        weights = np.zeros(len(seen))
        weights[seen] = np.median(freq[seen]) / freq[seen]
        return weights

    def unseen_classes(self, split: Optional[str] = None) -> List[str]:
        """Names of the classes with no pixel in the split (default ``frequency_split``)."""
        px = self._stats(split).class_pixels
        return [n for n, p in zip(self.class_map.names, px) if p == 0]

    def to_dict(self) -> Dict[str, Any]:
        """The report as JSON types, class names as keys."""
        names = self.class_map.names
        total = self.total
        weights = self.median_frequency_weights() if self._stats(None).class_pixels.any() else None
        return {"layout": self.layout, "root": self.root, "where": self.where,
                "classes": {"names": list(names), "source": self.class_map.source,
                            "ignore_index": self.class_map.ignore_index,
                            "colours": [list(c) for c in self.class_map.colours]},
                "splits": {s: st.to_dict(names) for s, st in self.splits.items()},
                "total": total.to_dict(names), "missing_splits": dict(self.missing_splits),
                "frequency_split": self.frequency_split,
                "frequencies": dict(zip(names, self.frequencies().tolist())),
                "median_frequency_weights": None if weights is None else dict(zip(names, weights.tolist())),
                "unseen_classes": self.unseen_classes(),
                "ok": self.ok, "problems": self.problems(), "issues": [i.to_dict() for i in self.issues]}

    def text(self) -> str:
        """A readable multi-line report: the layout line, splits, sizes, ignored pixels, a class table, problems."""
        return "\n".join(_text_lines(self))


def _layout_line(report: DatasetReport) -> str:
    cm = report.class_map
    return f"layout: {report.layout} ({report.where}), {cm.num_classes} classes from {_source_name(report)}"


def _source_name(report: DatasetReport) -> str:
    """The class map's source, a file shown relative to the layout's folder or the root when inside them."""
    source = report.class_map.source
    path = Path(source).resolve() if source and Path(source).is_file() else None
    if path is None:
        return source or "the layout"
    for base in (Path(report.base).resolve(), Path(report.root).resolve()):
        if base in path.parents:
            return path.relative_to(base).as_posix()
    return source


def _percent(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _text_lines(report: DatasetReport) -> List[str]:
    total = report.total
    lines = [_layout_line(report), f"root: {report.root}",
             "splits: " + ", ".join(f"{s} {_count(st.images, 'image')} ({_count(st.labels, 'label')} read)"
                                    for s, st in report.splits.items())]
    lines += [f"  {s}: not read: {why}" for s, why in report.missing_splits.items()]
    if total.min_hw is not None:
        lines.append(f"image sizes: H {total.min_hw[0]}..{total.max_hw[0]}, "   # type: ignore[index]
                     f"W {total.min_hw[1]}..{total.max_hw[1]}")                  # type: ignore[index]
    per_split = ", ".join(f"{s} {_percent(st.ignore_fraction)}" for s, st in report.splits.items())
    lines.append(f"ignored pixels: {_percent(total.ignore_fraction)} of label pixels ({per_split})")
    if total.unmapped_pixels:
        lines.append(f"pixels outside the class map: {total.unmapped_pixels}")
    lines += _class_table(report)
    unseen = report.unseen_classes()
    if unseen:
        lines.append(f"classes with no pixel in the {report.frequency_split} split (weight 0): {', '.join(unseen)}")
    problems = report.problems()
    lines.append(f"problems ({len(problems)}):" if problems else "no problems")
    lines += [f"  - {p}" for p in problems]
    return lines


def _class_table(report: DatasetReport) -> List[str]:
    names = report.class_map.names
    freq = report.frequencies()
    has_px = report._stats(None).class_pixels.any()
    weights = report.median_frequency_weights() if has_px else np.zeros(len(names))
    columns = {**report.splits, "total": report.total} if len(report.splits) > 1 else dict(report.splits)
    width = max(5, *(len(n) for n in names))
    head = f"  {'id':>3}  {'class':<{width}}" + "".join(f"  {s + ' px (images)':>22}" for s in columns)
    head += f"  {'freq':>7}  {'weight':>7}"
    rows = [head]
    for c, name in enumerate(names):
        cells = "".join(f"  {f'{int(st.class_pixels[c])} ({int(st.class_images[c])})':>22}" for st in columns.values())
        rows.append(f"  {c:>3}  {name:<{width}}{cells}  {100 * freq[c]:>6.2f}%  {weights[c]:>7.3f}")
    return [f"classes (freq and weight: {report.frequency_split} split):"] + rows


# ---------------------------------------------------------------- scanning

def scan_datasets(datasets: Sequence[PairDataset], *, threads: int = 1,
                  progress: Optional[bool] = True) -> DatasetReport:
    """The one scanner: every pair of ``datasets`` (opened splits of one dataset) into a ``DatasetReport``.

    Args:
        datasets: the splits, e.g. ``[open_dataset(root, "train"), open_dataset(root, "val")]``.
        threads: reader threads (Pillow's decoders release the GIL).
        progress: show a progress bar; None: only on a terminal.

    Raises:
        FcnsegError: no dataset given, or splits with different class counts.
    """
    if not datasets:
        raise FcnsegError("expected at least one split to scan, got none; try --split train")
    first = datasets[0]
    if any(d.num_classes != first.num_classes for d in datasets):
        raise FcnsegError(f"expected splits of one dataset, got class counts {[d.num_classes for d in datasets]}")
    jobs = [(d, i) for d in datasets for i in range(len(d))]
    splits = {d.split: SplitStats(first.num_classes) for d in datasets}
    issues: Dict[Tuple[str, Any], Issue] = {}
    disable = None if progress is None else not progress
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            tqdm(total=len(jobs), desc="checking data", unit="pair", disable=disable, leave=False) as bar:
        for pair in pool.map(_scan_pair, jobs):   # in order: the same files named whatever the thread count
            bar.update(1)
            splits[pair.split].add(pair)
            for kind, value, file, detail, px in pair.issues:
                issues.setdefault((kind, value), Issue(kind, value)).add(pair.split, file, detail, px)
    where, base = _where(first)
    return DatasetReport(first.layout, str(first.root), where, str(base), first.class_map, splits,
                         sorted(issues.values(), key=_sort_key))


def _where(dataset: PairDataset) -> Tuple[str, Path]:
    """Where the layout keeps its files: a line for the report and the folder (from the first image's path)."""
    root, image = Path(dataset.root), dataset.image_path(0)
    bases = {"voc": image.parent.parent, "cvat": image.parent.parent, "ade20k": image.parent.parent.parent}
    if dataset.layout not in bases:
        where = {"cityscapes": "leftImg8bit/ and gtFine/", "folder": "images/ and masks/"}.get(dataset.layout, ".")
        return where, root
    base = bases[dataset.layout]
    place = _rel(base, root)
    place = "." if place in ("", ".") else place
    return place + (" with labelmap.txt" if dataset.layout == "cvat" else ""), base


def check_dataset(source: SourceLike, splits: Union[str, Sequence[str]] = DEFAULT_SPLITS, *, threads: int = 1,
                  progress: Optional[bool] = True, strict: bool = False) -> DatasetReport:
    """Report on a dataset in any layout: every pair of ``splits`` read, every problem collected.

    Args:
        source: the dataset's folder, or a ``DataSource`` (folder, layout, class file).
        splits: the splits to read ("train", "val", a list name).
        threads: reader threads.
        progress: show a progress bar; None: only on a terminal.
        strict: a split that is missing or empty is a problem (else it is only noted in ``missing_splits``).

    Raises:
        FcnsegError: no split could be read (the first split's reason: no layout, a bad class file...).
    """
    names = list(dict.fromkeys([splits] if isinstance(splits, str) else splits))
    opened, missing = [], {}
    for split in names:
        try:
            opened.append(open_dataset(source, split))
        except FcnsegError as e:
            missing[split] = str(e)
    if not opened:
        first = next(iter(missing.values()), "no split named")
        raise FcnsegError(f"expected a readable split ({', '.join(names) or 'none asked'}) in {source}, got "
                          f"none: {first}")
    report = scan_datasets(opened, threads=threads, progress=progress)
    report.missing_splits = missing
    if strict and missing:
        extra = [Issue("split", s, details=[why], splits=[s]) for s, why in missing.items()]
        report.issues = sorted(extra + report.issues, key=_sort_key)
    return report


# ---------------------------------------------------------------- writing

def report_paths(json_path: PathLike, *, force: bool = False, inputs: Iterable[PathLike] = ()) -> Tuple[Path, Path]:
    """The JSON file and the chart beside it (``<stem>.png``), checked before any work.

    An existing file is replaced only when it is an earlier report (or chart) of fcnseg's, or with ``force``;
    the chart is not a name the user gave, so a foreign PNG there is never replaced silently.

    Raises:
        FcnsegError: a path that is a folder, an input, unwritable, or holds another file (without ``force``).
    """
    out = Path(json_path)
    if out.suffix.lower() == ".png":
        raise FcnsegError(f"expected --json to name a .json file, got {str(out)!r}; the chart is written beside "
                          "it as <stem>.png; try --json report.json")
    out = check_output(out, REPORT_JSON, inputs=inputs, force=force, option="--json")
    chart = check_output(out.with_suffix(".png"), REPORT_CHART, inputs=inputs, force=force, option="--json")
    return out, chart


def write_report(report: DatasetReport, json_path: PathLike, *, force: bool = False) -> Tuple[Path, Path]:
    """Write ``report.to_dict()`` as JSON and a bar chart of the class frequencies beside it, both atomically.

    Args:
        report: a ``check_dataset`` result.
        json_path: the JSON file; the chart goes to ``<json stem>.png`` in the same folder.
        force: replace existing files that are not fcnseg's reports.

    Returns:
        (the JSON path, the chart's path).
    """
    source = Path(report.class_map.source)
    out, chart = report_paths(json_path, force=force, inputs=[source] if source.is_file() else [])
    png = _chart_png(report)    # drawn first: a missing matplotlib leaves nothing half-written
    write_json(out, report.to_dict())
    write_bytes(chart, png)
    return out, chart


def _chart_png(report: DatasetReport) -> bytes:
    """The class frequencies as a bar chart (class colours, names on the axis; log axis over a wide range)."""
    import_optional("matplotlib", "matplotlib for the class-frequency chart", "`pip install matplotlib`")
    # no pyplot: no global state (backend, current figure), safe beside other threads
    from matplotlib.figure import Figure

    names, freq = report.class_map.names, report.frequencies()
    fig = Figure(figsize=(max(6.0, 0.3 * len(names) + 2.0), 4.5), dpi=100)
    ax = fig.subplots()
    ax.bar(range(len(names)), freq, color=[tuple(v / 255 for v in c) for c in report.class_map.colours],
           edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    seen = freq[freq > 0]
    if seen.size and seen.max() / seen.min() > WIDE_RANGE:
        ax.set_yscale("log")
    ax.set(ylabel="fraction of class pixels", title=f"class frequencies ({report.frequency_split} split, "
                                                     f"{report.layout} dataset)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": SOFTWARE, "Title": CHART_TITLE})
    return buf.getvalue()
