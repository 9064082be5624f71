"""``fcn-data convert``: labelme and COCO annotations -> the VOC layout with a labelmap (layout ``cvat``).

Masks are checked pixel by pixel: axis-aligned rectangles against their exact pixel set (pycocotools' convention,
columns x0..x1-1 and rows y0..y1-1), other polygons and circles against PIL's fill with at most a 1-pixel border
difference.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from fcnseg.core.class_map import VOID_COLOUR, ClassMap
from fcnseg.core.errors import FcnsegError
from fcnseg.datasets import convert, open_dataset
from fcnseg.datasets.cli import main
from fcnseg.datasets.convert import MARKER, convert_coco, convert_labelme, split_arg

# pycocotools 2.0.x's decode passes copy=False to numpy 2's __array__: a warning from the library, not from us.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 50
BASE = Path("VOCdevkit") / "VOC2012"
LABELME_CLASSES = ("background", "bird", "cat", "dog")          # discovered: background, then sorted labels
TRIANGLE = [[2, 2], [16, 3], [3, 17]]
PENTAGON = [[10, 4], [38, 8], [44, 30], [22, 37], [6, 24]]
CIRCLE = ((25.0, 20.0), 9.0)                                      # centre, radius


# ---------------------------------------------------------------- helpers

def _image(seed: int, h: int = H, w: int = W) -> Image.Image:
    """A smooth image (JPEG keeps it close), different per seed."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([20 + xx * 2 + seed * 25, 10 + yy * 3 + seed * 20, 60 + xx + yy + seed * 10], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _shape(label, points, kind="polygon"):
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": None,
            "shape_type": kind, "flags": {}}


def _labelme(path: Path, shapes, image_name: str, *, image_data=None, h=H, w=W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_name, "imageData": image_data,
           "imageHeight": h, "imageWidth": w}
    path.write_text(json.dumps(doc))
    return path


def _b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rect(ids, value, x0, y0, x1, y1):
    """pycocotools' rectangle: columns x0..x1-1, rows y0..y1-1."""
    ids[y0:y1, x0:x1] = value


def _pil_fill(points) -> np.ndarray:
    canvas = Image.new("L", (W, H), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas) > 0


def _disc(centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx + 0.5 - centre[0]) ** 2 + (yy + 0.5 - centre[1]) ** 2 <= radius ** 2


def _near_border(region: np.ndarray) -> np.ndarray:
    """Pixels within one pixel (8-neighbourhood) of the region's border, inside or outside."""
    padded = np.pad(region, 1)
    shifted = [padded[1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    grown, shrunk = np.logical_or.reduce(shifted), np.logical_and.reduce(shifted)
    return grown & ~shrunk


def _assert_region(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """``actual`` equals ``expected`` but for pixels next to its border (rasterisers differ by one there)."""
    diff = actual != expected
    assert not (diff & ~_near_border(expected)).any(), f"{what}: differs away from the border"
    assert diff.sum() <= 0.3 * expected.sum(), f"{what}: {diff.sum()} border pixels differ"


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decoded(out: Path, split: str) -> dict:
    ds = open_dataset(out, split)
    return {ds.ids[i]: ds.decode(i) for i in range(len(ds))}


# ---------------------------------------------------------------- a labelme folder with split folders

@pytest.fixture(scope="module")
def labelme_src(tmp_path_factory):
    """train/a (image file), train/b (base64 imageData, no file), val/c (image file): rectangles, polygons, a
    circle, overlaps, labelme's _background_ and __ignore__, and a line and a point to skip."""
    src = tmp_path_factory.mktemp("labelme")
    (src / "train").mkdir()
    _image(1).save(src / "train" / "a.png")
    _labelme(src / "train" / "a.json", [_shape("cat", [[5, 5], [30, 25]], "rectangle"),
                                         _shape("dog", [[20, 15], [45, 35]], "rectangle"),
                                         _shape("cat", [[0, 0], [10, 10]], "line"),
                                         _shape("dog", [[3, 3]], "point")], "a.png")
    _labelme(src / "train" / "b.json", [_shape("dog", [CIRCLE[0], [CIRCLE[0][0] + CIRCLE[1], CIRCLE[0][1]]],
                                               "circle"),
                                         _shape("cat", TRIANGLE),
                                         _shape("__ignore__", [[40, 30], [48, 38]], "rectangle")],
             "missing/b.png", image_data=_b64_png(_image(2)))
    (src / "val").mkdir()
    _image(3).save(src / "val" / "c.png")
    _labelme(src / "val" / "c.json", [_shape("bird", PENTAGON),
                                       _shape("_background_", [[20, 15], [28, 22]], "rectangle")], "c.png")
    return src


@pytest.fixture(scope="module")
def labelme_out(labelme_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelme_out") / "voc"
    return out, convert_labelme(labelme_src, out, progress=False)


def test_labelme_writes_the_cvat_layout(labelme_out):
    out, report = labelme_out
    base = out / BASE
    assert set(_files(base)) == {MARKER, "labelmap.txt", "ImageSets/Segmentation/train.txt",
                                 "ImageSets/Segmentation/val.txt", "ImageSets/Segmentation/trainval.txt",
                                 *(f"JPEGImages/{i}.jpg" for i in "abc"),
                                 *(f"SegmentationClass/{i}.png" for i in "abc")}
    lists = {s: (base / "ImageSets/Segmentation" / f"{s}.txt").read_text().split()
             for s in ("train", "val", "trainval")}
    assert lists == {"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]}
    assert report.images == {"train": ["a", "b"], "val": ["c"]}
    assert (base / "labelmap.txt").read_text() == report.classes.labelmap_text()
    for split in ("train", "val"):
        ds = open_dataset(out, split)
        assert ds.layout == "cvat" and ds.class_map.names == LABELME_CLASSES
    with Image.open(base / "SegmentationClass" / "a.png") as mask:
        assert mask.mode == "RGB" and mask.size == (W, H)


def test_labelme_images_are_the_sources_reencoded(labelme_out):
    out, _ = labelme_out
    for sample_id, seed in (("a", 1), ("b", 2), ("c", 3)):     # b comes from imageData
        with Image.open(out / BASE / "JPEGImages" / f"{sample_id}.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (W, H)
            pixels = np.asarray(jpg, np.int16)
        errors = [np.abs(pixels - np.asarray(_image(s), np.int16)).mean() for s in (1, 2, 3)]
        assert errors[seed - 1] < 2 and sorted(errors)[1] > 10, (sample_id, errors)


def test_labelme_rectangles_are_exact_and_later_shapes_cover_earlier(labelme_out):
    out, _ = labelme_out
    cat, dog = LABELME_CLASSES.index("cat"), LABELME_CLASSES.index("dog")
    expected = np.zeros((H, W), np.uint8)
    _rect(expected, cat, 5, 5, 30, 25)
    _rect(expected, dog, 20, 15, 45, 35)     # drawn second: covers the cat where they overlap
    np.testing.assert_array_equal(_decoded(out, "train")["a"], expected)


def test_labelme_circles_polygons_and_ignore(labelme_out):
    out, _ = labelme_out
    ids = _decoded(out, "train")["b"]
    cat, dog = LABELME_CLASSES.index("cat"), LABELME_CLASSES.index("dog")
    ignore = np.zeros((H, W), bool)
    ignore[30:38, 40:48] = True
    assert (ids[ignore] == 255).all() and (ids[~ignore] != 255).all()
    _assert_region(ids == dog, _disc(*CIRCLE) & ~_pil_fill(TRIANGLE), "circle")
    _assert_region(ids == cat, _pil_fill(TRIANGLE), "triangle")
    with Image.open(out / BASE / "SegmentationClass" / "b.png") as mask:
        rgb = np.asarray(mask)
    assert (rgb[ignore] == VOID_COLOUR).all()


def test_labelme_background_cuts_a_hole(labelme_out):
    out, _ = labelme_out
    ids = _decoded(out, "val")["c"]
    bird = LABELME_CLASSES.index("bird")
    hole = np.zeros((H, W), bool)
    hole[15:22, 20:28] = True
    assert (ids[hole] == 0).all()
    _assert_region(ids == bird, _pil_fill(PENTAGON) & ~hole, "pentagon")


def test_labelme_report_counts_shapes_and_skips(labelme_out):
    out, report = labelme_out
    assert report.shapes == {"cat": 2, "dog": 2, "bird": 1, "background": 1}
    assert report.ignored == {"__ignore__": 1}
    assert report.skipped == {"line": 1, "point": 1}
    text = report.summary()
    assert "2 train, 1 val" in text and "1 line, 1 point" in text and "cat 2" in text


def test_labelme_with_a_class_file(labelme_src, tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": "background", "color": [0, 0, 0]},
                                               {"name": "dog", "color": [10, 200, 30]},
                                               {"name": "cat", "color": [200, 10, 30]},
                                               {"name": "bird", "color": [5, 5, 250]},
                                               {"name": "horse", "color": [90, 90, 90]}]}))
    out = tmp_path / "out"
    report = convert_labelme(labelme_src, out, classes=classes, progress=False)
    assert report.classes.names == ("background", "dog", "cat", "bird", "horse")
    ds = open_dataset(out, "train")
    assert ds.class_map.names == report.classes.names and ds.class_map.colours[1] == (10, 200, 30)
    expected = np.zeros((H, W), np.uint8)
    _rect(expected, 2, 5, 5, 30, 25)
    _rect(expected, 1, 20, 15, 45, 35)
    np.testing.assert_array_equal(ds.decode(ds.ids.index("a")), expected)


def test_labelme_without_split_folders_draws_val_by_seed(tmp_path):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(5):
        _image(i).save(src / f"img{i}.png")
        _labelme(src / f"img{i}.json", [_shape("crack", [[i, 2], [i + 20, 12]], "rectangle")], f"img{i}.png")
    first = convert_labelme(src, tmp_path / "o1", val_fraction=0.4, seed=3, progress=False)
    again = convert_labelme(src, tmp_path / "o2", val_fraction=0.4, seed=3, progress=False)
    assert first.images == again.images and len(first.images["val"]) == 2 and len(first.images["train"]) == 3
    assert sorted(first.images["train"] + first.images["val"]) == [f"img{i}" for i in range(5)]
    assert first.classes.names == ("background", "crack")
    none = convert_labelme(src, tmp_path / "o3", val_fraction=0.0, progress=False)
    assert set(none.images) == {"train"} and not (tmp_path / "o3" / BASE / "ImageSets/Segmentation/val.txt").exists()


def test_labelme_same_stem_in_two_folders_gets_unique_ids(tmp_path):
    src = tmp_path / "src"
    for sub in ("train/site1", "train/site2"):
        (src / sub).mkdir(parents=True)
        _image(0).save(src / sub / "x.png")
        _labelme(src / sub / "x.json", [_shape("cat", [[1, 1], [9, 9]], "rectangle")], "x.png")
    report = convert_labelme(src, tmp_path / "out", progress=False)
    assert report.images == {"train": ["train_site1_x", "train_site2_x"]}
    assert len(open_dataset(tmp_path / "out", "train")) == 2


def test_killed_run_leaves_no_list_and_a_rerun_completes(labelme_src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, written = convert._write_pair, []

    def die_on_second(base, sample_id, image, rgb):
        if written:
            raise KeyboardInterrupt
        written.append(sample_id)
        real(base, sample_id, image, rgb)

    monkeypatch.setattr(convert, "_write_pair", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        convert_labelme(labelme_src, out, progress=False)
    assert not (out / BASE / "ImageSets").exists() and not (out / BASE / "labelmap.txt").exists()
    assert [p.stem for p in (out / BASE / "JPEGImages").iterdir()] == written
    monkeypatch.setattr(convert, "_write_pair", real)
    report = convert_labelme(labelme_src, out, progress=False)   # its own folder: no --force needed
    assert sum(len(v) for v in report.images.values()) == 3 and len(open_dataset(out, "trainval")) == 3


# ---------------------------------------------------------------- COCO

def _uncompressed_rle(region: np.ndarray) -> dict:
    """COCO's uncompressed RLE (crowds): run lengths in column-major order, starting with a run of zeros."""
    flat = region.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(region.shape), "counts": ([0] if flat[0] else []) + runs}


def _poly(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@pytest.fixture(scope="module")
def coco_src(tmp_path_factory):
    """train: one image with a small person listed before a large car on it, and a crowd (uncompressed RLE);
    val: one image (in images/val2017/) with a compressed RLE car and a polygon with a degenerate part."""
    from pycocotools import mask as mask_api

    root = tmp_path_factory.mktemp("coco")
    (root / "images" / "val2017").mkdir(parents=True)
    _image(4).save(root / "images" / "t1.jpg")
    _image(5).save(root / "images" / "val2017" / "v1.jpg")
    cats = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 1, "name": "person", "supercategory": "p"}]
    crowd = np.zeros((H, W), bool)
    crowd[0:4, :] = True
    train = {"images": [{"id": 7, "file_name": "t1.jpg", "height": H, "width": W}], "categories": cats,
             "annotations": [
                 {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [_poly(10, 10, 20, 20)]},
                 {"id": 2, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": [_poly(5, 5, 45, 35)]},
                 {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(crowd)}]}
    car = np.zeros((H, W), np.uint8)
    car[30:40, 0:15] = 1
    rle = mask_api.encode(np.asfortranarray(car))
    val = {"images": [{"id": 9, "file_name": "v1.jpg", "height": H, "width": W}], "categories": cats,
           "annotations": [
               {"id": 4, "image_id": 9, "category_id": 3, "iscrowd": 0,
                "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}},
               {"id": 5, "image_id": 9, "category_id": 1, "iscrowd": 0,
                "segmentation": [[1, 1, 5, 5], _poly(30, 2, 40, 12)]}]}
    (root / "instances_train.json").write_text(json.dumps(train))
    (root / "instances_val.json").write_text(json.dumps(val))
    return root


@pytest.fixture(scope="module")
def coco_out(coco_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco_out") / "voc"
    report = convert_coco([(coco_src / "instances_train.json", "train"), (coco_src / "instances_val.json", "val")],
                          coco_src / "images", out, progress=False)
    return out, report


def test_coco_classes_are_categories_by_id(coco_out):
    out, report = coco_out
    assert report.classes.names == ("background", "person", "car")
    for split in ("train", "val"):
        ds = open_dataset(out, split)
        assert ds.layout == "cvat" and ds.class_map.names == ("background", "person", "car")
    assert report.images == {"train": ["t1"], "val": ["v1"]}


def test_coco_draws_largest_first_and_ignores_crowds(coco_out):
    out, _ = coco_out
    expected = np.zeros((H, W), np.uint8)
    _rect(expected, 2, 5, 5, 45, 35)      # car: the larger, drawn first
    _rect(expected, 1, 10, 10, 20, 20)    # person on top, though listed first in the file
    expected[0:4, :] = 255                # the crowd
    np.testing.assert_array_equal(_decoded(out, "train")["t1"], expected)


def test_coco_rle_and_degenerate_polygons(coco_out):
    out, report = coco_out
    expected = np.zeros((H, W), np.uint8)
    expected[30:40, 0:15] = 2
    _rect(expected, 1, 30, 2, 40, 12)
    np.testing.assert_array_equal(_decoded(out, "val")["v1"], expected)
    assert report.skipped == {"invalid polygon": 1}
    assert report.ignored == {"crowd": 1} and report.shapes == {"person": 2, "car": 2}


def test_coco_stuff_other_is_ignored(tmp_path):
    from pycocotools import mask as mask_api

    _image(6).save(tmp_path / "s.jpg")
    regions = {92: (0, 20), 183: (20, 40)}      # banner: rows 0-19, other: rows 20-39
    anns = []
    for k, (cid, (r0, r1)) in enumerate(regions.items()):
        m = np.zeros((H, W), np.uint8)
        m[r0:r1] = 1
        rle = mask_api.encode(np.asfortranarray(m))
        anns.append({"id": k + 1, "image_id": 1, "category_id": cid, "iscrowd": 0,
                     "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}})
    doc = {"images": [{"id": 1, "file_name": "s.jpg", "height": H, "width": W}], "annotations": anns,
           "categories": [{"id": 92, "name": "banner"}, {"id": 183, "name": "other"}]}
    (tmp_path / "stuff.json").write_text(json.dumps(doc))
    report = convert_coco(tmp_path / "stuff.json", tmp_path, tmp_path / "out", progress=False)
    assert report.classes.names == ("background", "banner") and report.ignored == {"other": 1}
    ids = _decoded(tmp_path / "out", "train")["s"]
    assert (ids[:20] == 1).all() and (ids[20:] == 255).all()


def test_split_arg():
    assert split_arg("a/instances_val.json:val") == ("a/instances_val.json", "val")
    assert split_arg("a/instances.json") == ("a/instances.json", "train")
    assert split_arg("c:/x.json") == ("c:/x.json", "train")


# ---------------------------------------------------------------- the CLI and bad inputs

def _run(args):
    result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _one_line_error(result, *fragments):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_cli_labelme_and_coco(labelme_src, coco_src, tmp_path):
    result = _run(["convert", "labelme", str(labelme_src), str(tmp_path / "l"), "--val-fraction", "0.5"])
    assert result.exit_code == 0, result.stderr
    assert "2 train, 1 val" in result.stdout and str(tmp_path / "l") in result.stdout
    result = _run(["convert", "coco", str(tmp_path / "c"), "--images", str(coco_src / "images"),
                   "--annotations", f"{coco_src / 'instances_train.json'}:train",
                   "--annotations", f"{coco_src / 'instances_val.json'}:val"])
    assert result.exit_code == 0, result.stderr
    assert "1 train, 1 val" in result.stdout and open_dataset(tmp_path / "c", "val").layout == "cvat"


def _bad_labelme(tmp_path, name):
    src = tmp_path / "src"
    src.mkdir()
    _image(0).save(src / "ok.png")
    _labelme(src / "ok.json", [_shape("cat", [[1, 1], [9, 9]], "rectangle")], "ok.png")
    if name == "not labelme":
        (src / "notes.json").write_text(json.dumps({"foo": 1}))
    elif name == "two points":
        _labelme(src / "bad.json", [_shape("cat", [[1, 1], [9, 9]])], "ok.png")
    elif name == "no image":
        _labelme(src / "bad.json", [_shape("cat", [[1, 1], [9, 9]], "rectangle")], "gone.png")
    elif name == "not json":
        (src / "bad.json").write_text("{oops")
    return src


@pytest.mark.parametrize("name, fragments", [
    ("not labelme", ["expected a labelme JSON", "notes.json", "keys foo"]),
    ("two points", ["expected 3 or more points", "bad.json", "got 2"]),
    ("no image", ["expected the image gone.png", "bad.json", "imageData"]),
    ("not json", ["expected a JSON file", "bad.json"]),
])
def test_bad_labelme_input_is_one_line_and_writes_nothing(tmp_path, name, fragments):
    src = _bad_labelme(tmp_path, name)
    _one_line_error(_run(["convert", "labelme", str(src), str(tmp_path / "out")]), *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_folder_and_unknown_label(labelme_src, tmp_path):
    _one_line_error(_run(["convert", "labelme", str(tmp_path / "nope"), str(tmp_path / "out")]),
                    "expected a folder of labelme JSON files", "nope", "missing")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\ncat\nbird\n")
    line = _one_line_error(_run(["convert", "labelme", str(labelme_src), str(tmp_path / "out"),
                                 "--classes", str(classes)]), "'dog'", "classes.txt")
    assert "a.json" in line and "b.json" in line
    assert not (tmp_path / "out").exists()


def test_bad_coco_input_is_one_line_and_writes_nothing(labelme_src, coco_src, tmp_path):
    images = str(coco_src / "images")
    out = tmp_path / "out"
    _one_line_error(_run(["convert", "coco", str(out), "--images", images, "--annotations",
                          str(labelme_src / "train" / "a.json")]), "expected a COCO JSON", "a.json", "labelme")
    doc = json.loads((coco_src / "instances_val.json").read_text())
    doc["images"][0]["file_name"] = "elsewhere.jpg"
    (tmp_path / "moved.json").write_text(json.dumps(doc))
    _one_line_error(_run(["convert", "coco", str(out), "--images", images, "--annotations",
                          f"{tmp_path / 'moved.json'}:val"]), "expected the image 'elsewhere.jpg'", "moved.json")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nperson\n")
    _one_line_error(_run(["convert", "coco", str(out), "--images", images, "--classes", str(classes),
                          "--annotations", str(coco_src / "instances_train.json")]), "'car'", "classes.txt")
    assert not out.exists()


def test_refuses_a_folder_holding_other_files_unless_forced(labelme_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_line_error(_run(["convert", "labelme", str(labelme_src), str(out)]), "notes.txt", "--force")
    assert _files(out) == {"notes.txt": b"mine"}
    assert _run(["convert", "labelme", str(labelme_src), str(out), "--force"]).exit_code == 0
    assert (out / "notes.txt").read_text() == "mine" and len(open_dataset(out, "trainval")) == 3


def test_library_errors_are_fcnseg_errors(tmp_path):
    with pytest.raises(FcnsegError, match="val-fraction"):
        convert_labelme(tmp_path, tmp_path / "out", val_fraction=1.0)
    with pytest.raises(FcnsegError, match="void colour"):
        convert_labelme(tmp_path, tmp_path / "out",
                        classes=ClassMap(("background", "x"), ((0, 0, 0), VOID_COLOUR)))
