"""Sliding-window inference (``mode="slide"``): the grid, the window, the band accumulator and the Segmenter."""

from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.runtime import Segmenter
from fcnseg.runtime.cli import predict_main
from fcnseg.runtime.tiling import Tiling, slide, tile_count, tile_starts, window


@pytest.mark.parametrize("length,tile,stride,expected", [
    (100, 100, 50, [0]), (80, 100, 50, [0]), (101, 100, 67, [0, 1]), (1000, 512, 341, [0, 341, 488]),
    (1024, 512, 512, [0, 512]), (1025, 512, 512, [0, 512, 513])])
def test_tiles_cover_the_axis_with_the_last_flush_with_its_end(length, tile, stride, expected):
    starts = tile_starts(length, tile, stride)
    assert starts == expected
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + min(tile, length)] = True
    assert covered.all() and all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_the_window_is_highest_in_the_middle_and_never_zero():
    w = window(9, 12)
    assert w.shape == (9, 12) and w.min() > 0 and w[4, 5:7].max() == w.max() and w[0, 0] == w.min()


def _fake_network(scores_of):
    """A network whose scores at a pixel depend only on that pixel: slide must equal the whole image."""
    def run(tiles):
        return np.stack([scores_of(t) for t in tiles])
    return run


def test_slide_of_a_pixelwise_network_equals_the_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 470, 3), dtype=np.uint8)
    proj = rng.normal(size=(5, 3)).astype(np.float32)

    def scores(t):
        return np.einsum("ck,hwk->chw", proj, t.astype(np.float32))
    whole = scores(image).argmax(axis=0)
    for tiling in (Tiling(128, 85), Tiling(128, 128), Tiling(512, 341), Tiling(64, 17)):
        for batch in (1, 3):
            assert (slide(image, _fake_network(scores), 5, tiling, batch=batch) == whole).all()


def test_votes_of_an_argmax_graph_follow_the_tiles_middles():
    """Where tiles disagree, the tile whose middle is nearer wins (the window's rule)."""
    image = np.zeros((10, 30, 3), np.uint8)
    calls = []

    def run(tiles):       # the first tile says 1 everywhere, the second 2
        calls.append(len(calls) + 1)
        return np.stack([np.full(t.shape[:2], calls[-1], np.uint8) for t in tiles])
    mask = slide(image, run, 3, Tiling(20, 10), batch=1, votes=True)
    assert (mask[:, :14] == 1).all() and (mask[:, 16:] == 2).all()


def test_tile_count():
    assert tile_count((4000, 6000), Tiling(512, 341)) == 12 * 18
    assert tile_count((100, 100), Tiling()) == 1


@pytest.fixture(scope="module")
def big_picture():
    y, x = np.mgrid[0:300, 0:400]
    rgb = np.stack([(x * 3) % 256, (y * 5) % 256, ((x + 2 * y) * 2) % 256], -1).astype(np.uint8)
    rgb[::23] = 255
    rgb[:, ::31] = 0     # thin lines, as a crack or a wire
    return rgb


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_slide_agrees_with_whole_on_images_small_enough_for_both(conv3, big_picture, backend):
    if backend == "openvino":
        pytest.importorskip("openvino")
    small = big_picture[:200, :250]
    with Segmenter.load(conv3, backend=backend, mode="whole") as whole, \
            Segmenter.load(conv3, backend=backend, mode="slide", tile=96, stride=64) as tiles:
        agree = (whole(small) == tiles(small)).mean()
    assert agree > 0.99, agree


def test_slide_gives_the_same_masks_on_onnx_runtime_and_openvino(conv3, big_picture):
    pytest.importorskip("openvino")
    masks = []
    for backend in ("onnxruntime", "openvino"):
        with Segmenter.load(conv3, backend=backend, mode="slide", tile=128, stride=85) as seg:
            masks.append(seg(big_picture))
            assert masks[-1].shape == big_picture.shape[:2]
    assert (masks[0] == masks[1]).mean() > 0.999


def test_modes_are_checked_against_the_model(conv3, big_picture):
    with pytest.raises(FcnsegError, match=r"range 16..256 when fed at their own size \(--mode whole\), got 300x400"):
        Segmenter.load(conv3, mode="whole")(big_picture)
    with pytest.raises(FcnsegError, match="expected --tile within the model's declared input range 16..256"):
        Segmenter.load(conv3, mode="slide", tile=512)
    with pytest.raises(FcnsegError, match="expected 1 <= --stride <= --tile"):
        Segmenter.load(conv3, mode="slide", tile=128, stride=200)
    with pytest.raises(FcnsegError, match="expected a mode in resize, slide, whole"):
        Segmenter.load(conv3, mode="tiles")
    with pytest.raises(FcnsegError, match="expected logits=True only with mode resize or whole"):
        Segmenter.load(conv3, mode="slide", tile=128, stride=85)(big_picture, logits=True)


def test_fcn_predict_slides_over_a_large_image(conv3, big_picture, tmp_path):
    Image.fromarray(big_picture).save(tmp_path / "big.png")
    result = CliRunner().invoke(predict_main, [str(tmp_path / "big.png"), "-m", str(conv3), "-o",
                                               str(tmp_path / "out"), "--mode", "slide", "--tile", "128",
                                               "--stride", "85", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open(tmp_path / "out" / "big.png"))
    with Segmenter.load(conv3, backend="onnxruntime", mode="slide", tile=128, stride=85) as seg:
        assert mask.shape == (300, 400) and (mask == seg(big_picture)).all()
    bad = CliRunner().invoke(predict_main, [str(tmp_path / "big.png"), "-m", str(conv3), "-o", str(tmp_path / "o2"),
                                            "--mode", "slide", "--tile", "128", "--stride", "0"])
    assert bad.exit_code == 2 and "'--stride': 0 is not in the range x>=1" in bad.output
