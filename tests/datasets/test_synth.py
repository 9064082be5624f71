from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.core.classes import voc_palette
from fcnseg.datasets import open_dataset as VOCLayout
from fcnseg.datasets import synth
from fcnseg.datasets.synth import CLASS_STYLES, synthesize

SPLITS = ("train", "val", "trainval")


def _make(root, seed=0, num_train=3, num_val=4):
    synthesize(root, num_train=num_train, num_val=num_val, size=64, seed=seed, progress=False)
    return root / "VOCdevkit" / "VOC2012"


def _files(base):
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, _make(root)


def test_layout_is_exactly_voc(tiny):
    root, base = tiny
    lists = {s: (base / "ImageSets/Segmentation" / f"{s}.txt").read_text().split() for s in SPLITS}
    assert len(lists["train"]) == 3 and len(lists["val"]) == 4
    assert not set(lists["train"]) & set(lists["val"])
    assert lists["trainval"] == lists["train"] + lists["val"]
    expected = {f"JPEGImages/{i}.jpg" for i in lists["trainval"]} | {f"SegmentationClass/{i}.png"
                                                                     for i in lists["trainval"]}
    expected |= {f"ImageSets/Segmentation/{s}.txt" for s in SPLITS} | {synth.MARKER}
    assert set(_files(base)) == expected  # nothing else, in particular no leftover temporary files
    assert {p.name for p in root.iterdir()} == {"VOCdevkit"}


def test_images_and_labels_are_voc_formatted(tiny):
    _, base = tiny
    palette = voc_palette(256).reshape(-1).tolist()
    shapes = []
    for jpg in sorted((base / "JPEGImages").glob("*.jpg")):
        with Image.open(jpg) as image, Image.open(base / "SegmentationClass" / f"{jpg.stem}.png") as label:
            image.load()
            label.load()
        assert image.format == "JPEG" and image.mode == "RGB"
        assert label.format == "PNG" and label.mode == "P" and label.getpalette() == palette
        assert image.size == label.size
        values = set(np.unique(np.asarray(label)).tolist())
        assert values <= set(range(21)) | {255} and 0 in values and 255 in values
        shapes.append(image.size)
    assert all(w % 32 and h % 32 for w, h in shapes)
    assert any(w != h for w, h in shapes)


def test_every_class_appears_in_val(tiny):
    root, _ = tiny
    layout = VOCLayout(root, "val")
    present = set().union(*(np.unique(mask).tolist() for _, mask in layout))
    assert set(range(1, 21)) <= present


def test_objects_are_ringed_with_void(tiny):
    root, _ = tiny
    for _, mask in VOCLayout(root, "trainval"):
        m = mask.astype(np.int32)
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), "two labels touch without a void border between them"
        void = (m == 255).mean()
        assert 0.0 < void < 0.35


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path, tiny):
    _, base = tiny
    again = _files(_make(tmp_path / "again"))
    assert again == _files(base)
    other = _files(_make(tmp_path / "other", seed=1))
    assert other.keys() == again.keys()
    assert all(other[k] != again[k] for k in again if not k.endswith(".txt"))


def test_interrupted_run_leaves_no_split_list(tmp_path, monkeypatch):
    written = []
    real = synth._write_sample

    def fail_on_third(base, image_id, image, label):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(image_id)
        real(base, image_id, image, label)

    monkeypatch.setattr(synth, "_write_sample", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        _make(tmp_path)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    assert not (base / "ImageSets").exists()
    assert sorted(p.stem for p in (base / "JPEGImages").iterdir()) == written


def test_class_styles_are_distinct_and_colours_are_shared():
    assert len(CLASS_STYLES) == 20
    assert len({(s.hue, s.texture) for s in CLASS_STYLES}) == 20
    by_hue = {}
    for s in CLASS_STYLES:
        by_hue.setdefault(s.hue, []).append(s)
    shared = [group for group in by_hue.values() if len(group) > 1]
    assert shared and all(len({s.texture for s in g}) == len(g) == len({s.shape for s in g}) for g in shared)


@pytest.mark.parametrize("kwargs, name", [({"num_train": 0}, "num_train"), ({"size": 16}, "size"),
                                          ({"num_val": 2.5}, "num_val")])
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, name):
    with pytest.raises(FcnsegError, match=name):
        synthesize(tmp_path, **{"progress": False, **kwargs})
    assert not any(tmp_path.iterdir())


def test_refuses_a_dataset_it_did_not_write_and_a_file(tmp_path):
    real = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    (real / "ImageSets" / "Segmentation").mkdir(parents=True)
    (real / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    with pytest.raises(FcnsegError, match="holding 1 files it did not write .*train.txt.*left untouched"):
        synthesize(tmp_path / "voc", num_train=2, num_val=1, size=48, progress=False)
    assert (real / "ImageSets" / "Segmentation" / "train.txt").read_text() == "2007_000032\n"
    assert sorted(p.name for p in real.rglob("*")) == ["ImageSets", "Segmentation", "train.txt"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FcnsegError, match="expected ROOT to be a folder .*got the file"):
        synthesize(tmp_path / "notes.txt", num_train=2, num_val=1, size=48, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_writes_again_over_its_own_dataset(tmp_path):
    base = _make(tmp_path, seed=0, num_train=2, num_val=1)
    before = _files(base)
    assert _make(tmp_path, seed=0, num_train=2, num_val=1) == base and _files(base) == before


def test_thin_structures_are_lines_of_one_to_four_pixels(tmp_path):
    """``--thin-structures``: only cracks, wires and roads (classes 1-3) on the backdrop, in the VOC layout."""
    from PIL import Image

    from fcnseg.datasets.synth import THIN_CLASSES, render_thin_sample
    from fcnseg.datasets import open_dataset as VOCLayout

    image, label = render_thin_sample(np.random.default_rng(3), size=300)
    assert image.shape[:2] == label.shape and set(np.unique(label)) <= {0, 1, 2, 3}
    for cls, _, (_, widest), *_ in THIN_CLASSES:
        mask = label == cls
        assert 0 < mask.mean() < 0.05
        # Thin: almost no pixel of the class has a whole 7x7 square of it around (only where two lines cross).
        box = np.pad(mask, 1)[:, :].cumsum(0).cumsum(1)
        k = 7
        full = box[k:, k:] - box[:-k, k:] - box[k:, :-k] + box[:-k, :-k] == k * k
        assert widest <= 4 and full.sum() < 0.05 * mask.sum()
    root = synth.synthesize(tmp_path / "thin", num_train=2, num_val=1, size=96, thin_structures=True,
                            progress=False)
    layout = VOCLayout(root, "val")
    img, mask = layout.load(0)
    assert set(np.unique(mask)) <= {0, 1, 2, 3} and Image.open(layout.mask_path(0)).mode == "P"
