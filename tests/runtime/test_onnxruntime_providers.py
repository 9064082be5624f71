"""ONNX Runtime's GPU providers get options, not only names: the TensorRT provider caches its engines and timing
cache beside the model and builds one profile spanning the declared size range; the CUDA provider picks cuDNN
convolutions by heuristic.

No GPU is needed: ``get_available_providers`` is made to list the GPU providers, and ``InferenceSession`` records
what it was given, then runs a CPU session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fcnseg.core.metadata import ModelMetadata
from fcnseg.runtime.backends import onnxruntime as ortb

ort = pytest.importorskip("onnxruntime")
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


class _Session:
    """A CPU session that reports the providers the caller asked for (as a GPU machine would)."""

    def __init__(self, real, providers):
        self._real, self._providers = real, providers

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_providers(self):
        return list(self._providers)


@pytest.fixture
def sessions(monkeypatch):
    """Every ``InferenceSession`` call as (providers, provider_options); each delegates to a CPU session."""
    calls = []
    real = ort.InferenceSession

    def record(path, sess_options=None, providers=None, provider_options=None, **kw):
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        options = list(provider_options) if provider_options is not None else \
            [p[1] if isinstance(p, tuple) else {} for p in providers]
        calls.append((names, options))
        cpu = real(path, sess_options=sess_options, providers=[CPU])
        return _Session(cpu, names)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", record)
    return calls


def _model(factory, folder: Path, **meta) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return factory(folder / "m.onnx", ModelMetadata(arch="conv", num_classes=4, **meta))


def _gpu_call(calls):
    gpu = [c for c in calls if c[0] != [CPU]]
    assert len(gpu) == 1, calls
    return dict(zip(*gpu[0])), gpu[0][0]


def test_tensorrt_and_cuda_providers_get_caches_profile_and_heuristic_search(sessions, conv_onnx_factory, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.20.1")
    model = _model(conv_onnx_factory, tmp_path / "models", input_size=64, min_size=32, max_size=256)
    backend = ortb.OnnxRuntimeBackend(model)
    options, names = _gpu_call(sessions)
    assert names == [TRT, CUDA, CPU]
    cache = Path(str(model) + ".ortcache")
    assert options[TRT] == {
        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": "input:1x3x32x32", "trt_profile_opt_shapes": "input:1x3x64x64",
        "trt_profile_max_shapes": "input:1x3x256x256"}
    assert cache.is_dir()
    assert options[CUDA] == {"cudnn_conv_algo_search": "HEURISTIC"} and options[CPU] == {}
    assert backend.provider_options == options
    # The profile's largest batch bounds one run (the Segmenter splits larger batches); the model still runs.
    assert backend.max_batch == 1
    out = backend.infer(np.zeros((1, 3, 40, 72), np.float32))
    assert out["logits"].shape == (1, 4, 40, 72)


def test_cuda_alone_gets_heuristic_search_and_no_probe_session(sessions, conv_onnx_factory, tmp_path):
    model = _model(conv_onnx_factory, tmp_path, input_size=64, min_size=32, max_size=256)
    backend = ortb.OnnxRuntimeBackend(model, providers=["cuda", "cpu"])
    assert sessions == [([CUDA, CPU], [{"cudnn_conv_algo_search": "HEURISTIC"}, {}])]
    assert backend.max_batch is None and not Path(str(model) + ".ortcache").exists()


def test_profile_without_declared_range_spans_the_export_defaults(sessions, conv_onnx_factory, tmp_path):
    model = _model(conv_onnx_factory, tmp_path, input_size=520)
    ortb.OnnxRuntimeBackend(model, providers=["tensorrt"])
    options, _ = _gpu_call(sessions)
    assert (options[TRT]["trt_profile_min_shapes"], options[TRT]["trt_profile_opt_shapes"],
            options[TRT]["trt_profile_max_shapes"]) == ("input:1x3x64x64", "input:1x3x520x520", "input:1x3x2048x2048")


def test_profile_keeps_fixed_dims():
    meta = ModelMetadata(input_size=500, min_size=100, max_size=400)
    profile = ortb.trt_profile("x", [2, 3, "H", 320], meta)
    assert (profile.min, profile.opt, profile.max) == ((2, 3, 100, 320), (2, 3, 400, 320), (2, 3, 400, 320))
    assert ortb.trt_profile("x", [1, 3, 64, 64], meta) is None          # static: TensorRT needs no profile


def test_older_onnxruntime_gets_only_the_options_it_knows(sessions, conv_onnx_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.14.1")
    model = _model(conv_onnx_factory, tmp_path, input_size=64, min_size=32, max_size=256)
    ortb.OnnxRuntimeBackend(model, providers=["tensorrt", "cuda"])
    options, _ = _gpu_call(sessions)
    assert set(options[TRT]) == {"trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable"}


def test_read_only_model_folder_caches_under_the_user_cache(sessions, conv_onnx_factory, tmp_path, monkeypatch):
    model = _model(conv_onnx_factory, tmp_path / "store", input_size=64, min_size=32, max_size=256)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    access = ortb.os.access
    monkeypatch.setattr(ortb.os, "access", lambda p, mode: not str(p).endswith(".ortcache") and access(p, mode))
    ortb.OnnxRuntimeBackend(model, providers=["tensorrt"])
    options, _ = _gpu_call(sessions)
    cache = Path(options[TRT]["trt_engine_cache_path"])
    assert cache.parent == tmp_path / "xdg" / "fcnseg" / "ortcache" and cache.name.startswith("m.onnx-")
    assert cache.is_dir() and options[TRT]["trt_timing_cache_path"] == str(cache)


def test_a_folder_of_that_name_that_is_not_ours_is_left_alone(sessions, conv_onnx_factory, tmp_path, monkeypatch):
    """<model>.ortcache/ holding the user's files: nothing written there, one warning, the user cache instead; a
    folder holding only ONNX Runtime's cache files (an earlier fcnseg's, before the marker) is adopted."""
    model = _model(conv_onnx_factory, tmp_path / "store", input_size=64, min_size=32, max_size=256)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    theirs = Path(str(model) + ".ortcache")
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.warns(UserWarning, match="holds files fcnseg did not write: left alone"):
        ortb.OnnxRuntimeBackend(model, providers=["tensorrt"])
    options, _ = _gpu_call(sessions)
    assert Path(options[TRT]["trt_engine_cache_path"]).parent == tmp_path / "xdg" / "fcnseg" / "ortcache"
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    (theirs / "notes.txt").unlink()
    (theirs / "TensorrtExecutionProvider_cache_sm86.timing").write_bytes(b"t")
    assert ortb.trt_cache_dir(model) == theirs.resolve() and (theirs / ortb.ORT_CACHE_MARKER).is_file()


def test_version_parsing():
    assert ortb._version("1.16.3") == (1, 16) and ortb._version("1.17.0.dev20240101") == (1, 17)
    assert ortb._version("2.0rc1") == (2, 0) and ortb._version("garbage") == (0,)
