"""fcn-predict end to end through click's CliRunner on a tiny ONNX graph."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnseg.runtime import ModelMetadata, Segmenter
from fcnseg.runtime.cli import predict_main

CLASSES = ["background", "red", "green", "blue"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 1x1 conv whose class k>0 wins where colour channel k-1 is bright; argmax in the graph."""
    w = np.array([[0, 0, 0], [4, -2, -2], [-2, 4, -2], [-2, -2, 4]], np.float32).reshape(4, 3, 1, 1)
    b = np.array([2.5, 0, 0, 0], np.float32)
    nodes = [helper.make_node("Conv", ["input", "W", "B"], ["logits"], kernel_shape=[1, 1]),
             helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
             helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "colours", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(m, ModelMetadata(arch="colours", num_classes=4, classes=CLASSES, input_size=16,
                                            argmax=True).to_props())
    path = tmp_path_factory.mktemp("model") / "colours.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture()
def images(tmp_path):
    """Two images in a folder (one in a sub-folder), one loose file, one unreadable file."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    a = np.zeros((21, 34, 3), np.uint8)
    a[:, :17, 0] = 255          # left half red, right half black (background)
    Image.fromarray(a).save(src / "a.jpg", quality=100)
    b = np.zeros((15, 9, 3), np.uint8)
    b[:, :, 2] = 255            # all blue
    Image.fromarray(b).save(src / "sub" / "b.png")
    (src / "notes.txt").write_text("not an image")
    loose = tmp_path / "c.bmp"
    Image.fromarray(np.full((7, 13, 3), (0, 255, 0), np.uint8)).save(loose)
    return src, loose


def run(*args):
    result = CliRunner().invoke(predict_main, [str(a) for a in args])
    return result.exit_code, result.output, result.stderr


def test_png_masks_in_palette_mode_at_original_size(model, images, tmp_path):
    src, loose = images
    code, _, err = run("--model", model, src, loose, "--out", tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out"
    a, b, c = (Image.open(out / name) for name in ("a.png", "sub/b.png", "c.png"))
    assert [im.mode for im in (a, b, c)] == ["P"] * 3
    assert (a.size, b.size, c.size) == ((34, 21), (9, 15), (13, 7))
    am = np.asarray(a)
    assert (am[:, :15] == 1).all() and (am[:, 19:] == 0).all()
    assert (np.asarray(b) == 3).all() and (np.asarray(c) == 2).all()
    assert a.getpalette()[3:6] == ModelMetadata().palette[1]   # class 1 drawn with the model's palette
    np.testing.assert_array_equal(am, Segmenter.load(model)(np.asarray(Image.open(src / "a.jpg"))))
    assert not list(out.rglob("*.tmp")) and not (out / "notes.png").exists()


def test_npy_format(model, images, tmp_path):
    src, _ = images
    code, _, err = run("--model", model, src, "--out", tmp_path / "out", "--format", "npy", "--size", "0")
    assert code == 0, err
    mask = np.load(tmp_path / "out" / "sub" / "b.npy")
    assert mask.dtype == np.uint8 and mask.shape == (15, 9) and (mask == 3).all()
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.npy", "b.npy", "sub"]


def test_overlay_with_legend(model, images, tmp_path):
    src, _ = images
    code, _, err = run("--model", model, src / "a.jpg", "--out", tmp_path / "out", "--overlay", "--alpha", "1")
    assert code == 0, err
    over = np.asarray(Image.open(tmp_path / "out" / "a_overlay.png"))
    assert over.shape[0] >= 21 and over.shape[1] > 34 and over.shape[2] == 3
    assert tuple(over[10, 5]) == tuple(ModelMetadata().palette[1])   # alpha 1: the class colour itself
    assert tuple(over[10, 30]) == (0, 0, 0)                          # background left as the image


def test_unreadable_image_reported_and_skipped(model, images, tmp_path):
    src, loose = images
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = run("--model", model, src, loose, "--out", tmp_path / "out")
    assert code == 1
    lines = [ln for ln in err.splitlines() if "broken.jpg" in ln]
    assert len(lines) == 1 and "skipped" in lines[0]
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "c.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists()


def test_usage_errors_exit_2_with_one_line(model, images, tmp_path):
    src, _ = images
    bad = tmp_path / "model.xyz"
    bad.write_text("x")
    code, _, err = run("--model", bad, src, "--out", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and ".onnx" in err and "Traceback" not in err
    code, _, err = run("--model", model, src, "--out", tmp_path / "out", "--providers", "nope")
    assert code == 2 and "providers" in err
    code, _, err = run("--model", model, src, "--out", src)    # b.png would overwrite itself
    assert code == 2 and "--out" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("--model", model, empty, "--out", tmp_path / "out")
    assert code == 2 and "got none" in err
    code, _, _ = run("--model", model, src, "--out", tmp_path / "out", "--format", "tiff")
    assert code == 2


def test_outputs_of_one_run_never_overwrite_each_other(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    red = np.zeros((6, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(src / "cat.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(src / "cat_overlay.png")   # a user's file of that name
    out = tmp_path / "out"
    code, _, err = run(src / "cat.png", src / "cat_overlay.png", "--model", model, "--out", out, "--overlay")
    assert code == 0, err
    assert "instead of" in err and "cat_overlay_1.png" in err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["cat.png", "cat_overlay.png", "cat_overlay_1.png", "cat_overlay_overlay.png"]
    masks = {n: np.asarray(Image.open(out / n)) for n in ("cat.png", "cat_overlay_1.png")}
    assert (masks["cat.png"] == 1).all() and (masks["cat_overlay_1.png"] == 0).all()
    assert Image.open(out / "cat_overlay.png").mode == "RGB"     # the overlay of cat.png survived
    # a second run replaces its own masks (they carry Software=fcnseg), and they are 0644 under umask 022
    old = os.umask(0o022)
    try:
        code, _, err = run(src / "cat.png", "--model", model, "--out", out)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (out / "cat.png").stat().st_mode & 0o777 == 0o644


def test_foreign_file_in_out_needs_force(model, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(src)
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out / "a.png")   # not written by fcnseg
    code, _, err = run(src, "--model", model, "--out", out)
    assert code == 2 and "pass --force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(src, "--model", model, "--out", out, "--force")
    assert code == 0, err
    assert Image.open(out / "a.png").mode == "P"


def test_exif_orientation_webp_and_tiff(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[:, :3, 0] = 255                  # stored: left half red
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6                        # "rotate 90 CW to display": users see a 6x4 picture, red on top
    img.save(src / "phone.jpg", exif=exif.tobytes(), quality=100)
    Image.fromarray(stored).save(src / "w.webp", lossless=True)
    Image.fromarray(stored).save(src / "t.tif")
    code, _, err = run(src, "--model", model, "--out", tmp_path / "out")
    assert code == 0, err
    phone = np.asarray(Image.open(tmp_path / "out" / "phone.png"))
    assert phone.shape == (6, 4) and (phone[:2] == 1).all() and (phone[4:] == 0).all()   # red on top, as seen
    for name in ("w.png", "t.png"):
        mask = np.asarray(Image.open(tmp_path / "out" / name))
        assert mask.shape == (4, 6) and (mask[:, :2] == 1).all() and (mask[:, 4:] == 0).all()


def test_float_images_nan_refused_and_0_255_converted_with_warning(model):
    from fcnseg.core.errors import FcnsegError

    seg = Segmenter.load(model)
    image = np.zeros((4, 4, 3), np.float32)
    image[..., 0] = 255.0
    with pytest.warns(UserWarning, match="taken as 0..255"):
        assert (seg(image) == 1).all()
    image[0, 0, 0] = np.nan
    with pytest.raises(FcnsegError, match="NaN"):
        seg(image)
