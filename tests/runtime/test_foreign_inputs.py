"""Inputs that come from outside fcnseg's own pipeline: PIL images of any mode, images at their own size, image
URLs, animated images, thread counts."""

from __future__ import annotations

import http.server
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcnseg.core.errors import FcnsegError
from fcnseg.runtime import Segmenter
from fcnseg.runtime.cli import predict_main


@pytest.fixture(scope="module")
def photo():
    """A 48x64 picture with structure (a gradient and a bright square), so masks differ between channels."""
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb[10:30, 20:40] = (250, 30, 200)
    return Image.fromarray(rgb)


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr", "LA", "1"])
def test_a_pil_image_of_any_mode_gives_the_mask_of_its_rgb_conversion(tiny_conv_onnx, photo, mode):
    """Its raw array would be palette indices or CMYK channels: 82% / 67% agreement before (silently wrong)."""
    image = photo.convert(mode)
    with Segmenter.load(tiny_conv_onnx, backend="onnxruntime") as seg:
        expected = seg(np.asarray(image.convert("RGBA" if mode in ("LA",) else "RGB")))
        assert (seg(image) == expected).all()
        assert all((m == expected).all() for m in seg([image, image]))


def test_num_threads_is_checked_by_the_library_too(tiny_conv_onnx):
    for bad in (-3, 0, 1.5, True):
        with pytest.raises(FcnsegError, match="expected num_threads >= 1"):
            Segmenter.load(tiny_conv_onnx, num_threads=bad)


def test_size_zero_keeps_to_the_declared_range(conv3):
    """``size=0`` feeds images at their own size; beyond the declared range it is refused before inference."""
    with Segmenter.load(conv3, backend="onnxruntime", size=0) as seg:
        assert seg(np.zeros((100, 120, 3), np.uint8)).shape == (100, 120)
        with pytest.raises(FcnsegError, match=r"within the model's declared input range 16..256 .* got 300x400"):
            seg(np.zeros((300, 400, 3), np.uint8))
    with Segmenter.load(conv3, backend="onnxruntime") as seg:   # resized to the model's size: any image
        assert seg(np.zeros((300, 400, 3), np.uint8)).shape == (300, 400)


class _OneImage(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path.endswith(".png") else 404)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(self.body if self.path.endswith(".png") else b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(photo, tmp_path):
    """A web server on 127.0.0.1 (a free port) serving one PNG at any ``*.png`` path, stopped afterwards."""
    photo.save(tmp_path / "served.png")
    handler = type("Handler", (_OneImage,), {"body": (tmp_path / "served.png").read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_an_image_url_gives_one_mask_file(image_server, tiny_conv_onnx, photo, tmp_path):
    """``http://host/img.png`` with ``--out m.png``: one mask file (and its overlay), not a stream's folder."""
    out = tmp_path / "m.png"
    result = CliRunner().invoke(predict_main, [f"{image_server}/pictures/img.png", "-m", str(tiny_conv_onnx),
                                               "-o", str(out), "--overlay", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "m_overlay.png").is_file()
    with Segmenter.load(tiny_conv_onnx, backend="onnxruntime") as seg:
        assert (np.asarray(Image.open(out)) == seg(photo)).all()
    folder = tmp_path / "masks"
    result = CliRunner().invoke(predict_main, [f"{image_server}/a/cat.png", "-m", str(tiny_conv_onnx), "-o",
                                               str(folder)])
    assert result.exit_code == 0 and (folder / "cat.png").is_file()


def test_a_missing_image_url_is_one_line(image_server, tiny_conv_onnx, tmp_path):
    result = CliRunner().invoke(predict_main, [f"{image_server}/gone.jpg", "-m", str(tiny_conv_onnx), "-o",
                                               str(tmp_path / "m.png")])
    assert result.exit_code == 2 and "expected to download the image" in result.output
    assert not (tmp_path / "m.png").exists()


def test_an_animated_gif_says_only_its_first_frame_was_segmented(tiny_conv_onnx, photo, tmp_path):
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.rotate(180)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    result = CliRunner().invoke(predict_main, [str(tmp_path / "anim.gif"), "-m", str(tiny_conv_onnx), "-o",
                                               str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "anim.gif has 3 frames; segmented the first" in result.output
    assert (tmp_path / "out" / "anim.png").is_file()


def test_fcn_eval_help_names_only_its_own_options():
    from fcnseg.eval.cli import eval_main

    text = CliRunner().invoke(eval_main, ["--help"]).output
    assert "--json" in text and "--csv" not in text
