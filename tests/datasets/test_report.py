"""``check_dataset`` / ``fcn-data check``: exact class counts, every problem in one line, JSON and chart."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from fcnseg.core.class_map import VOID_COLOUR
from fcnseg.core.data_source import DataSource
from fcnseg.core.errors import FcnsegError
from fcnseg.datasets.cli import main
from fcnseg.datasets.report import check_dataset, write_report
from fcnseg.datasets.synth import synthesize
from PIL import Image

VOC = "VOCdevkit/VOC2012"
SEG = f"{VOC}/SegmentationClass"
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ncar:0,0,142::\nboat:10,20,30::\n"
CVAT_COLOURS = np.array([(0, 0, 0), (128, 64, 128), (0, 0, 142), (10, 20, 30)], np.uint8)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("report") / "voc", num_train=4, num_val=2, size=48, progress=False)


@pytest.fixture
def voc(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "voc")


def _ids(root, split):
    return (root / VOC / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()


def _labels(root, split):
    return [np.asarray(Image.open(root / SEG / f"{i}.png")) for i in _ids(root, split)]


def _class_counts(labels, n):
    """Per class: pixels, images it appears in, and the class pixels of those images (numpy, not the report)."""
    px = np.zeros(n, np.int64)
    images = np.zeros(n, np.int64)
    appear = np.zeros(n, np.int64)
    for arr in labels:
        counts = np.bincount(arr.ravel(), minlength=256)[:n]
        px += counts
        images += counts > 0
        appear += (counts > 0) * counts.sum()
    return px, images, appear


def _cvat(voc):
    """The same dataset as CVAT exports it: labelmap.txt beside the colour masks (ids 1-10 road, 11-20 car)."""
    (voc / VOC / "labelmap.txt").write_text(LABELMAP)
    ids = {}
    for split in ("train", "val"):
        for name, arr in zip(_ids(voc, split), _labels(voc, split)):
            cls = np.where(arr == 0, 0, np.where(arr <= 10, 1, 2)).astype(np.uint8)
            cls[arr == 255] = 255
            rgb = CVAT_COLOURS[np.minimum(cls, 3)]
            rgb[cls == 255] = VOID_COLOUR
            Image.fromarray(rgb, mode="RGB").save(voc / SEG / f"{name}.png")
            ids[name] = cls
    return ids


def test_a_clean_voc_dataset_is_counted_exactly(voc):
    report = check_dataset(voc, progress=False)
    assert report.ok and report and report.problems() == [] and report.missing_splits == {}
    assert report.text().splitlines()[0] == "layout: voc (VOCdevkit/VOC2012), 21 classes from VOC"
    for split in ("train", "val"):
        labels = _labels(voc, split)
        px, images, _ = _class_counts(labels, 21)
        stats = report.splits[split]
        assert (stats.images, stats.labels) == (len(labels), len(labels))
        assert stats.class_pixels.tolist() == px.tolist() and stats.class_images.tolist() == images.tolist()
        ignored = sum(int((a == 255).sum()) for a in labels)
        assert stats.ignore_pixels == ignored and stats.unmapped_pixels == 0
        assert stats.ignore_fraction == pytest.approx(ignored / sum(a.size for a in labels))
    all_labels = _labels(voc, "train") + _labels(voc, "val")
    assert report.total.class_pixels.tolist() == _class_counts(all_labels, 21)[0].tolist()
    heights = [a.shape[0] for a in all_labels]
    widths = [a.shape[1] for a in all_labels]
    assert report.total.min_hw == (min(heights), min(widths)) and report.total.max_hw == (max(heights), max(widths))
    assert check_dataset(voc, progress=False, threads=2).to_dict() == report.to_dict()


def test_frequencies_and_median_frequency_weights(voc):
    report = check_dataset(voc, progress=False)
    px, _, appear = _class_counts(_labels(voc, "train"), 21)
    assert report.frequencies() == pytest.approx(px / px.sum())
    freq = px / appear
    assert report.median_frequency_weights() == pytest.approx(np.median(freq) / freq)
    assert report.frequency_split == "train"


def test_every_problem_is_one_line_naming_values_and_files(voc):
    val = _ids(voc, "val")
    train = _ids(voc, "train")
    bad = np.asarray(Image.open(voc / SEG / f"{val[0]}.png")).copy()
    bad[:5, :7] = 30
    Image.fromarray(bad, mode="L").save(voc / SEG / f"{val[0]}.png")
    Image.fromarray(np.full((9, 9), 3, np.uint8), mode="L").save(voc / SEG / f"{val[1]}.png")
    (voc / SEG / f"{train[2]}.png").unlink()
    with Image.open(voc / VOC / "JPEGImages" / f"{val[1]}.jpg") as img:
        h, w = img.height, img.width
    report = check_dataset(voc, progress=False)
    assert not report.ok
    assert report.problems() == [
        (f"expected a label for every image, got 1 image without one in the train split ({VOC}/JPEGImages/"
         f"{train[2]}.jpg (no {SEG}/{train[2]}.png)); label them or remove them from the split list"),
        (f"expected each label the size of its image, got 1 file of the val split ({SEG}/{val[1]}.png (9x9, image "
         f"{h}x{w})) of another size; re-export those labels at their image's size"),
        (f"expected class ids 0..20 or 255 (ignored) in the labels, got class id 30 in 1 file of the val split "
         f"({SEG}/{val[0]}.png); check the class file (--classes) or the labels"),
    ]
    with pytest.raises(FcnsegError, match=r"^expected a label for every image, .* \(and 2 more problems\); "
                                          r"see every problem with `fcn-data check .*`$"):
        report.raise_for_problems()
    # the counts still cover every label read: the 30s are unmapped, the 9x9 label is counted as it is
    labels = [bad, np.full((9, 9), 3, np.uint8)]
    px, images, _ = _class_counts(labels, 21)
    stats = report.splits["val"]
    assert stats.class_pixels.tolist() == px.tolist() and stats.class_images.tolist() == images.tolist()
    assert stats.unmapped_pixels == 35 and stats.ignore_pixels == int((bad == 255).sum())
    assert (report.splits["train"].images, report.splits["train"].labels) == (4, 3)
    issue = report.to_dict()["issues"][2]
    assert issue == {"kind": "class_id", "value": 30, "count": 1, "pixels": 35, "splits": ["val"],
                     "files": [f"{SEG}/{val[0]}.png"], "details": [""]}


def test_cvat_colours_outside_the_labelmap_are_named_with_their_files(voc):
    ids = _cvat(voc)
    train = _ids(voc, "train")
    for name in train[1:3]:
        rgb = np.asarray(Image.open(voc / SEG / f"{name}.png")).copy()
        rgb[-4:, -6:] = (1, 2, 3)
        ids[name][-4:, -6:] = 254   # marks the unknown colour in our own copy
        Image.fromarray(rgb, mode="RGB").save(voc / SEG / f"{name}.png")
    report = check_dataset(voc, progress=False)
    assert report.text().splitlines()[0] == "layout: cvat (VOCdevkit/VOC2012 with labelmap.txt), 4 classes from " \
                                            "labelmap.txt"
    labelmap = voc / VOC / "labelmap.txt"
    assert report.problems() == [
        (f"expected only the colours of the class map ({labelmap}) in the colour labels, got colour (1,2,3) in "
         f"2 files of the train split ({SEG}/{train[1]}.png, {SEG}/{train[2]}.png); add it to the class file or "
         "fix the labels")]
    for split in ("train", "val"):
        arrays = [ids[i] for i in _ids(voc, split)]
        px, images, appear = _class_counts(arrays, 4)
        stats = report.splits[split]
        assert stats.class_pixels.tolist() == px.tolist() and stats.class_images.tolist() == images.tolist()
        assert stats.ignore_pixels == sum(int((a == 255).sum()) for a in arrays)
        assert stats.unmapped_pixels == (48 if split == "train" else 0)
    px, _, appear = _class_counts([ids[i] for i in train], 4)
    weights = report.median_frequency_weights()
    freq = px[:3] / appear[:3]
    assert weights[:3] == pytest.approx(np.median(freq) / freq) and weights[3] == 0.0   # boat: never painted
    assert "classes with no pixel in the train split (weight 0): boat" in report.text()


def test_missing_and_empty_splits(voc):
    (voc / VOC / "ImageSets/Segmentation/val.txt").write_text("")
    report = check_dataset(voc, ("train", "val", "test"), progress=False)
    assert report.ok and list(report.splits) == ["train"] and set(report.missing_splits) == {"val", "test"}
    strict = check_dataset(voc, ("train", "val", "test"), progress=False, strict=True)
    lines = strict.problems()
    assert len(lines) == 2 and not strict.ok
    assert lines[0].startswith("expected the split list ") and "test.txt, which does not exist" in lines[0]
    assert lines[0].endswith("(test split)")
    assert lines[1].startswith("expected image ids in ") and "got an empty list" in lines[1]
    assert lines[1].endswith("(val split)")
    with pytest.raises(FcnsegError, match=r"^expected a readable split \(val\) in .*got an empty list"):
        check_dataset(DataSource(str(voc)), ["val"], progress=False)


def test_write_report_json_and_chart(voc, tmp_path):
    report = check_dataset(voc, progress=False)
    out, chart = write_report(report, tmp_path / "out" / "report.json")
    doc = json.loads(out.read_text())
    assert chart == tmp_path / "out" / "report.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(chart).format == "PNG"
    assert doc["layout"] == "voc" and doc["ok"] is True and doc["problems"] == []
    assert doc["classes"]["names"][:2] == ["background", "aeroplane"]
    px, images, _ = _class_counts(_labels(voc, "train"), 21)
    assert doc["splits"]["train"]["classes"]["aeroplane"] == {"pixels": int(px[1]), "images": int(images[1])}
    assert doc["frequencies"]["background"] == pytest.approx(px[0] / px.sum())
    assert set(doc["median_frequency_weights"]) == set(doc["classes"]["names"])
    write_report(report, out)   # its own earlier files are replaced


def test_a_foreign_file_beside_the_json_is_not_replaced_without_force(voc, tmp_path):
    report = check_dataset(voc, progress=False)
    (tmp_path / "report.png").write_bytes(b"someone's picture")
    with pytest.raises(FcnsegError, match="report.png exists and is not an fcnseg class-frequency chart; "
                                          "pass --force"):
        write_report(report, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
    write_report(report, tmp_path / "report.json", force=True)
    assert Image.open(tmp_path / "report.png").format == "PNG"
    with pytest.raises(FcnsegError, match="expected --json to name a .json file"):
        write_report(report, tmp_path / "chart.png")


def test_cli_check_prints_the_report_and_exits_0_or_2(voc, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["check", str(voc), "-j", "2", "--json", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[0] == "layout: voc (VOCdevkit/VOC2012), 21 classes from VOC"
    assert "no problems" in ok.stdout and ok.stderr == ""
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True and (tmp_path / "r.png").is_file()

    val = _ids(voc, "val")
    Image.fromarray(np.full((9, 9), 3, np.uint8), mode="L").save(voc / SEG / f"{val[1]}.png")
    bad = runner.invoke(main, ["check", str(voc), "--split", "train", "--split", "val", "--split", "test"])
    assert bad.exit_code == 2
    assert "problems (2):" in bad.stdout and "test.txt, which does not exist" in bad.stdout
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: expected the split list ")
    assert bad.stderr.rstrip().endswith("(test split) (and 1 more problem); see the report above")

    (tmp_path / "x.png").write_bytes(b"not ours")
    refused = runner.invoke(main, ["check", str(voc), "--json", str(tmp_path / "x.json")])
    assert refused.exit_code == 2 and refused.stdout == ""   # refused before the scan
    assert "x.png exists and is not an fcnseg class-frequency chart" in refused.stderr
    assert runner.invoke(main, ["check", str(tmp_path / "nowhere")]).exit_code == 2


def test_negative_ids_of_32_bit_labels_are_outside_the_map():
    """out_of_map (the one check the reader and the report share) names negative "I" values: cast to uint8 they
    would pass for class ids."""
    import numpy as np

    from fcnseg.core.class_map import ClassMap
    from fcnseg.datasets.layouts import out_of_map

    arr = np.array([[0, 1, -1], [255, 2, 7]], dtype=np.int32)
    assert out_of_map(arr, ClassMap(("a", "b", "c"))).tolist() == [-1, 7]
