"""Colours, overlays, legends, mask files and image discovery (fcnseg.runtime.postprocess)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnseg.runtime import FcnsegError, colorize, legend, overlay
from fcnseg.runtime.postprocess import (find_images, mask_to_pil, overlay_with_legend, predict_files, read_image,
                                        save_mask)
from fcnseg.core.classes import VOC_CLASSES, voc_palette

MASK = np.array([[0, 1, 2], [15, 255, 20]], np.uint8)


def test_colorize_voc_default_custom_palette_and_void():
    rgb = colorize(MASK)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0], voc_palette(3))
    assert tuple(rgb[1, 0]) == tuple(voc_palette(21)[15]) and tuple(rgb[1, 1]) == (255, 255, 255)
    custom = colorize(MASK, palette=[[1, 2, 3], [4, 5, 6]])
    assert tuple(custom[0, 0]) == (1, 2, 3) and tuple(custom[0, 1]) == (4, 5, 6)
    assert tuple(custom[0, 2]) == tuple(voc_palette(3)[2])   # past the palette's end: VOC colours
    with pytest.raises(FcnsegError, match="HxW"):
        colorize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(FcnsegError, match="0..255"):
        colorize(np.array([[300]]))


def test_overlay_blends_classes_and_keeps_background_and_void():
    image = np.full((2, 3, 3), 100, np.uint8)
    out = overlay(image, MASK, alpha=0.25)
    colour = voc_palette(21)[1].astype(float)
    np.testing.assert_array_equal(out[0, 1], np.rint(0.75 * 100 + 0.25 * colour).astype(np.uint8))
    assert (out[0, 0] == 100).all() and (out[1, 1] == 100).all()
    np.testing.assert_array_equal(overlay(image, MASK, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, MASK, alpha=1.0)[1, 2], voc_palette(21)[20])
    assert overlay(image[:, :, 0], MASK).shape == (2, 3, 3)          # grayscale image accepted
    with pytest.raises(FcnsegError, match="size"):
        overlay(np.zeros((4, 4, 3), np.uint8), MASK)
    with pytest.raises(FcnsegError, match="alpha"):
        overlay(image, MASK, alpha=1.5)


def test_legend_lists_only_present_classes():
    one = legend(VOC_CLASSES, None, [15])
    three = legend(VOC_CLASSES, None, [0, 15, 255, 99, 15, 1])       # 255 and unknown ids left out
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert three.shape[0] > one.shape[0] and (three.shape[0] - 4) == 3 * (one.shape[0] - 4)
    person = tuple(voc_palette(21)[15])
    assert (one.reshape(-1, 3) == person).all(1).any()               # the swatch shows the class colour
    assert not (legend(VOC_CLASSES, None, [1]).reshape(-1, 3) == person).all(1).any()
    assert legend(VOC_CLASSES, None, []).shape[0] > 0


def test_overlay_with_legend_pads_to_the_taller_part():
    image = np.zeros((5, 6, 3), np.uint8)
    mask = np.zeros((5, 6), np.uint8)
    mask[2:, 3:] = 7
    out = overlay_with_legend(image, mask)
    assert out.shape[0] > 5 and out.shape[1] > 6
    np.testing.assert_array_equal(out[:5, :6], overlay(image, mask))


def test_mask_png_and_npy_round_trip(tmp_path):
    save_mask(tmp_path / "m.png", MASK, palette=[[9, 8, 7]])
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and img.getpalette()[:3] == [9, 8, 7]
    np.testing.assert_array_equal(np.asarray(img), MASK)
    save_mask(tmp_path / "m.npy", MASK.astype(np.int64))
    loaded = np.load(tmp_path / "m.npy")
    assert loaded.dtype == np.uint8 and (loaded == MASK).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "m.png"]   # no temporary files left
    assert mask_to_pil(MASK).getpalette()[255 * 3:] == [255, 255, 255]


def test_read_image_modes(tmp_path):
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).save(tmp_path / "deep.png")
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint16 and deep.shape == (3, 4) and deep[2, 3] == 55000
    mask_to_pil(MASK).save(tmp_path / "pal.png")
    pal = read_image(tmp_path / "pal.png")
    assert pal.shape == (2, 3, 3) and tuple(pal[0, 1]) == tuple(voc_palette(2)[1])  # colours, not ids
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(FcnsegError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_find_images_walks_mirrors_and_deduplicates(tmp_path):
    for name in ("a.jpg", "a.png", "sub/b.JPEG", "sub/deep/c.bmp", "notes.txt", "out/old.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = find_images([tmp_path], exclude=tmp_path / "out")
    stems = {p.name: str(s) for p, s in found}
    assert stems == {"a.jpg": "a", "a.png": "a_png", "b.JPEG": "sub/b", "c.bmp": "sub/deep/c"}
    assert [str(s) for _, s in find_images([tmp_path / "a.jpg", tmp_path / "sub" / "b.JPEG"])] == ["a", "b"]
    with pytest.raises(FcnsegError, match="does not exist"):
        find_images([tmp_path / "missing.jpg"])


def test_predict_files_reports_failures_and_writes_the_rest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(src / "ok.png")
    (src / "bad.jpg").write_bytes(b"nope")
    seen = []
    summary = predict_files(lambda im: (im[:, :, 0] > 0).astype(np.uint8) + 3, [src], tmp_path / "out",
                            fmt="npy", on_error=lambda p, r: seen.append(p.name))
    assert seen == ["bad.jpg"] and [p.name for p, _ in summary.failed] == ["bad.jpg"]
    assert [p.name for p in summary.written] == ["ok.npy"] and (np.load(summary.written[0]) == 3).all()
    with pytest.raises(FcnsegError, match="png or npy"):
        predict_files(lambda im: im, [src], tmp_path / "out", fmt="gif")
