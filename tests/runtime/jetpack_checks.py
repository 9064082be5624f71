"""The runtime's own checks, run by ``test_jetpack_compat.py`` in the main environment and in each JetPack-like venv.

Usage: ``python jetpack_checks.py INPUTS OUT``. INPUTS holds what the main test wrote (``images.npz``, a tiny
ONNX with fcnseg metadata, a fake engine with its sidecar); every result goes to ``OUT/<name>.npy`` or
``OUT/<name>.json`` so the test can compare the venv's arrays with the main environment's, plus
``OUT/versions.json``. The fake TensorRT module and CUDA memory are the ones of ``test_tensorrt_backend.py``
(loaded from this folder), so the TensorRT backend's data path runs here exactly as in the unit tests.

Python 3.8 syntax only: this file runs on JetPack 5's interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import PIL

HERE = Path(__file__).resolve().parent
SIZE = 16          # inside the fake engine's profile (8..32)
ALPHA = 0.4


class _SetItem:
    """The one monkeypatch method ``test_tensorrt_backend.backend`` uses."""

    @staticmethod
    def setitem(mapping, key, value):
        mapping[key] = value


def _pytest_stand_in():
    """What ``test_tensorrt_backend.py`` uses of pytest at import time (decorators), for venvs without pytest."""
    import types

    class PassThrough:
        def __getattr__(self, name):
            return PassThrough()

        def __call__(self, *args, **kwargs):
            return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else PassThrough()

    module = types.ModuleType("pytest")
    module.fixture = module.mark = PassThrough()
    return module


def _fake_trt_module():
    if importlib.util.find_spec("pytest") is None:
        sys.modules["pytest"] = _pytest_stand_in()
    spec = importlib.util.spec_from_file_location("fake_trt_tests", HERE / "test_tensorrt_backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_preprocess(images, out):
    from fcnseg.runtime.preprocess import preprocess, to_rgb_uint8

    for name, image in images.items():
        np.save(out / f"rgb_{name}.npy", to_rgb_uint8(image))
        np.save(out / f"pre_{name}.npy", preprocess(image, size=SIZE))
        np.save(out / f"pre_native_{name}.npy", preprocess(image, size=None))


def check_postprocess(images, out):
    from fcnseg.runtime.postprocess import colorize, legend, overlay, overlay_with_legend
    from fcnseg.runtime.preprocess import resize_mask, to_rgb_uint8
    from fcnseg.core.classes import VOC_CLASSES

    for name, image in images.items():
        h, w = image.shape[:2]
        mask = (np.arange(h * w).reshape(h, w) * 7 % 23).astype(np.uint8)
        mask[mask == 22] = 255                                   # void pixels
        np.save(out / f"colorize_{name}.npy", colorize(mask))
        np.save(out / f"overlay_{name}.npy", overlay(to_rgb_uint8(image), mask, alpha=ALPHA))
        np.save(out / f"resize_mask_{name}.npy", resize_mask(mask, 2 * h + 1, w // 2 + 1))
        # The default font differs between Pillow releases (a bitmap font before 10.1), so the legend's width
        # does too: compare its height (one row per class) and the overlay part of the composed picture.
        strip = legend(VOC_CLASSES, None, np.unique(mask))
        np.save(out / f"legend_rows_{name}.npy", np.array([strip.shape[0], strip.shape[2]]))
        np.save(out / f"overlay_with_legend_{name}.npy", overlay_with_legend(image, mask, alpha=ALPHA)[:h, :w])


def check_tensorrt_fake(images, inputs, out):
    from fcnseg.runtime.segmenter import Segmenter

    tb = _fake_trt_module()
    cuda = tb.FakeCuda()
    with Segmenter(tb.backend(_SetItem(), inputs / "engine.plan", cuda), size=SIZE) as seg:
        for name, image in images.items():
            np.save(out / f"trt_mask_{name}.npy", seg(image))
        (out / "trt_metadata.json").write_text(json.dumps(seg.metadata.to_dict(), sort_keys=True))
    np.save(out / "trt_freed.npy", np.array([len(cuda.device), cuda.host_live]))


def check_metadata(inputs, out):
    from fcnseg.core.onnx_props import read_onnx_metadata
    from fcnseg.core.sidecar import EngineSidecar

    (out / "onnx_metadata.json").write_text(
        json.dumps(read_onnx_metadata(inputs / "tiny.onnx").to_dict(), sort_keys=True))
    sidecar = EngineSidecar.read(inputs / "engine.plan")
    (out / "sidecar.json").write_text(json.dumps(sidecar.to_dict(), sort_keys=True))
    (out / "sidecar_metadata.json").write_text(json.dumps(sidecar.model_metadata().to_dict(), sort_keys=True))


def check_imports(out):
    """Import every module of the installed runtime (the CLIs with the cli extra's click/tqdm); record failures."""
    import importlib
    import pkgutil

    import fcnseg.runtime

    failed = {}
    for info in pkgutil.walk_packages(fcnseg.runtime.__path__, "fcnseg.runtime."):
        try:
            importlib.import_module(info.name)
        except Exception as e:  # noqa: BLE001 - any failure is reported by name
            failed[info.name] = f"{type(e).__name__}: {e}"
    (out / "imports.json").write_text(json.dumps({"failed": failed}, sort_keys=True))


def _importable(name):
    return importlib.util.find_spec(name) is not None


def versions():
    import fcnseg.runtime

    return {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__,
            "runtime_path": str(Path(fcnseg.runtime.__file__).parent),
            "torch": _importable("torch"), "onnx": _importable("onnx"), "onnxruntime": _importable("onnxruntime")}


def main(argv):
    inputs, out = Path(argv[1]), Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with np.load(str(inputs / "images.npz")) as z:
        images = {k: z[k] for k in z.files}
    info = versions()
    print("python {python}, numpy {numpy}, Pillow {pillow}; torch importable: {torch}, onnx: {onnx}, "
          "onnxruntime: {onnxruntime}; fcnseg.runtime from {runtime_path}".format(**info))
    (out / "versions.json").write_text(json.dumps(info))
    check_imports(out)
    check_preprocess(images, out)
    check_postprocess(images, out)
    check_tensorrt_fake(images, inputs, out)
    check_metadata(inputs, out)
    print("checks written to", out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
