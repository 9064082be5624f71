"""ClassMap: the class files users bring (JSON, YAML, CVAT labelmap.txt, names), colours, and colour labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fcnseg.core.class_map import VOID_COLOUR, ClassMap, distinct_colours
from fcnseg.core.classes import VOC_CLASSES, voc_palette
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata


def test_every_file_format_gives_the_same_map(tmp_path):
    colours = [[0, 0, 0], [128, 64, 128], [255, 0, 0]]
    names = ["background", "road", "crack"]
    (tmp_path / "c.json").write_text(json.dumps({"classes": [{"name": n, "color": c} for n, c in zip(names, colours)]}))
    (tmp_path / "c.yaml").write_text("classes:\n" + "".join(f"  - name: {n}\n    color: {c}\n"
                                                             for n, c in zip(names, colours)))
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{','.join(map(str, c))}::\n" for n, c in zip(names, colours)))
    maps = [ClassMap.read(tmp_path / f) for f in ("c.json", "c.yaml", "labelmap.txt")]
    assert all(m == maps[0] for m in maps)
    assert maps[0].names == tuple(names) and maps[0].colours == tuple(tuple(c) for c in colours)
    assert ClassMap.read(tmp_path / "labelmap.txt").labelmap_text() == (tmp_path / "labelmap.txt").read_text()
    (tmp_path / "back.json").write_text(json.dumps(maps[0].to_json_obj()))
    assert ClassMap.read(tmp_path / "back.json") == maps[0]


def test_names_only_get_distinct_colours(tmp_path):
    (tmp_path / "names.txt").write_text("sky\nroad\n\nwire\n")
    m = ClassMap.read(tmp_path / "names.txt")
    assert m.names == ("sky", "road", "wire") and len(m.colours) == 3 and len(set(m.colours)) == 3
    assert VOID_COLOUR not in m.colours


def test_a_full_colour_list_gets_no_extra_colours():
    """Regression: a map with a colour per class had ~254 generated colours appended (distinct_colours(0))."""
    m = ClassMap(("a", "b"), ((1, 1, 1), (2, 2, 2)))
    assert len(m.colours) == 2 and distinct_colours(0, m.colours) == []
    assert m.palette(5).shape == (5, 3) and len({tuple(c) for c in m.palette(5)}) == 5
    many = distinct_colours(300)
    assert len(many) == 300 and len(set(many)) == 300


@pytest.mark.parametrize("text, match", [
    ("a\nb\na\n", "distinct class names .* 'a' for classes 0 and 2"),
    ("a:1,2,3::\nb:1,2,3::\n", "distinct class colours .* '1,2,3' for classes 0 and 1"),
    ("a:1,2::\n", "expected three colour values"),
    ("a:x,y,z::\n", "expected labelmap rows"),
    ("", "expected at least one class"),
])
def test_bad_class_files_are_one_line(tmp_path, text, match):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(FcnsegError, match=match):
        ClassMap.read(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FcnsegError, match="does not exist; check --classes"):
        ClassMap.read(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FcnsegError, match="expected a JSON class file"):
        ClassMap.read(tmp_path / "bad.json")
    (tmp_path / "half.json").write_text(json.dumps([{"name": "a", "color": [1, 2, 3]}, {"name": "b"}]))
    with pytest.raises(FcnsegError, match="a colour for every class or for none"):
        ClassMap.read(tmp_path / "half.json")


def test_colour_labels_encode_to_ids_and_unknown_colours_are_named():
    m = ClassMap(("bg", "road"), ((0, 0, 0), (128, 64, 128)))
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (128, 64, 128)
    rgb[1, 2] = VOID_COLOUR
    assert m.encode_colours(rgb).tolist() == [[0, 1, 0], [0, 0, 255]]
    rgb[1, 0] = (9, 9, 9)
    ids, unknown = m.lookup_colours(rgb)
    assert unknown == [(9, 9, 9)] and ids[1, 0] == 255
    with pytest.raises(FcnsegError, match=r"got 1 others \(\(9,9,9\)\) in x.png"):
        m.encode_colours(rgb, "x.png")


def test_voc_and_generic_maps_keep_todays_colours():
    voc = ClassMap.voc()
    assert voc.names == VOC_CLASSES and np.array_equal(voc.palette(), voc_palette(21))
    three = ClassMap.generic(3)
    assert three.names == ("class_0", "class_1", "class_2") and np.array_equal(three.palette(), voc_palette(3))


def test_metadata_carries_the_map():
    m = ClassMap(("sky", "road", "crack"), ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    meta = ModelMetadata.for_classes(m, arch="x")
    assert meta.num_classes == 3 and meta.class_map() == m
    back = ModelMetadata.from_props(meta.to_props())
    assert back.classes == ["sky", "road", "crack"] and back.palette == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(FcnsegError, match="the model's 3 classes, got 2"):
        meta.with_classes(ClassMap(("a", "b")))


@pytest.mark.parametrize("content, match", [
    ({"classes": [{"name": "a", "color": "red"}]}, "expected colours of three values 0..255 .* got 'red'"),
    ({"classes": [{"name": "a", "color": [1, 2, 300]}]}, "got \\[1, 2, 300\\]"),
    ({"classes": [{"name": "a", "color": 5}]}, "got 5"),
    ({"classes": ["a"], "ignore_index": "x"}, "expected ignore_index an integer 0..255"),
])
def test_malformed_values_in_a_class_file_are_one_line(tmp_path, content, match):
    """Was a ValueError/TypeError traceback out of int()."""
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    with pytest.raises(FcnsegError, match=match):
        ClassMap.read(path)
