"""Engines that rebuild themselves when they do not fit (``fcnseg.runtime.rebuild``), with the real TensorRT for
RTX builder on this CPU: an engine built for sm_86 on a GPU said to be sm_89 is rebuilt once, cached beside it,
and found in the cache by the next load; without ``rebuild="auto"`` the mismatch is one line naming the fix."""

from __future__ import annotations

import importlib.util
import json

import pytest

from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata
from fcnseg.core.sidecar import EngineSidecar, sidecar_path
from fcnseg.runtime.rebuild import cached_engine, engine_for_gpu, mismatch, source_id

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="needs TensorRT for RTX (pip install tensorrt-rtx) to build engines on a CPU")
ADA = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
AMPERE = {"name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}


@pytest.fixture(scope="module")
def sm86_plan(tmp_path_factory, conv_onnx_factory):
    from fcnseg.export.tensorrt import build_engine

    folder = tmp_path_factory.mktemp("rebuild")
    onnx = conv_onnx_factory(folder / "m.onnx", ModelMetadata(num_classes=3, min_size=32, max_size=128))
    build_engine(onnx, output=folder / "m.plan", library="tensorrt_rtx", compute_capabilities=["8.6"],
                 min_shape=(1, 3, 32, 32), opt_shape=(1, 3, 64, 64), max_shape=(2, 3, 128, 128))
    return folder / "m.plan"


def test_a_fitting_engine_is_used_as_it_is(sm86_plan):
    here = EngineSidecar.read(sm86_plan).library_version
    assert engine_for_gpu(sm86_plan, gpu=AMPERE, installed=here) == sm86_plan
    assert engine_for_gpu(sm86_plan, gpu=None) == sm86_plan   # no GPU: the backend says so itself


def test_mismatch_without_auto_is_one_line_naming_rebuild_auto(sm86_plan):
    sidecar = EngineSidecar.read(sm86_plan)
    assert mismatch(sidecar, ADA, sidecar.library_version) == \
        "built for sm_86; this GPU is sm_89 (NVIDIA GeForce RTX 4090)"
    assert mismatch(sidecar, AMPERE, "9.9.9") == \
        f"built with tensorrt_rtx {sidecar.library_version}, this machine has 9.9.9"
    with pytest.raises(FcnsegError, match=r"cannot run TensorRT engine 'm.plan' here: built for sm_86; this GPU is "
                                          r"sm_89 .*try --rebuild auto \(rebuilds it once from m.onnx"):
        engine_for_gpu(sm86_plan, gpu=ADA, installed=sidecar.library_version)


def test_rebuilt_once_then_found_in_the_cache(sm86_plan):
    version = EngineSidecar.read(sm86_plan).library_version
    lines: list = []
    first = engine_for_gpu(sm86_plan, rebuild="auto", gpu=ADA, installed=version, say=lines.append)
    source = EngineSidecar.read(sm86_plan).onnx_sha256[:12]
    assert len(source) == 12 and source_id(sm86_plan, EngineSidecar.read(sm86_plan)) == source
    assert first == cached_engine(sm86_plan, ADA, "tensorrt_rtx", version, source)
    assert first.parent.name == "m.plan.rebuilt"
    assert first.name == f"nvidia-geforce-rtx-4090_sm89_tensorrt_rtx-{version}_{source}.plan"
    rebuilt = EngineSidecar.read(first)
    assert rebuilt.compute_capabilities == ["8.9"] and json.loads(sidecar_path(first).read_text())
    assert lines[0].startswith("fcnseg: rebuilding m.plan from m.onnx for NVIDIA GeForce RTX 4090: built for sm_86")
    assert lines[1].startswith(f"fcnseg: rebuilt {first.name} in ") and lines[1].endswith(" s")
    stamp = first.stat().st_mtime_ns
    again: list = []
    assert engine_for_gpu(sm86_plan, rebuild="auto", gpu=ADA, installed=version, say=again.append) == first
    assert first.stat().st_mtime_ns == stamp and len(again) == 1 and "rebuilt for it earlier" in again[0]


def test_no_onnx_to_rebuild_from(sm86_plan, tmp_path):
    import shutil

    plan = tmp_path / "alone.plan"
    shutil.copy(sm86_plan, plan)
    shutil.copy(sidecar_path(sm86_plan), sidecar_path(plan))
    version = EngineSidecar.read(plan).library_version
    with pytest.raises(FcnsegError, match="expected the ONNX model 'alone.plan' was built from.*try --onnx PATH"):
        engine_for_gpu(plan, rebuild="auto", gpu=ADA, installed=version, say=lambda line: None)
    with pytest.raises(FcnsegError, match="expected --rebuild never or auto"):
        engine_for_gpu(plan, rebuild="always", gpu=ADA)


def test_hardware_compatibility_decides_what_fits():
    """A full-TensorRT engine runs where it was built; ampere+ on any sm_80 or later, same-cc only on its own."""
    def side(hardware):
        return EngineSidecar(library="tensorrt", library_version="10.3.0",
                             gpu={"name": "NVIDIA A100", "compute_capability": "8.0"}, hardware_compatibility=hardware)
    turing = {"name": "Tesla T4", "compute_capability": "7.5"}
    assert mismatch(side(None), ADA, "10.3.0") == "built on sm_80; this GPU is sm_89 (NVIDIA GeForce RTX 4090)"
    assert mismatch(side("ampere+"), ADA, "10.3.0") is None
    assert mismatch(side("ampere+"), turing, "10.3.0") == "built on sm_80 (ampere+); this GPU is sm_75 (Tesla T4)"
    assert mismatch(side("same-cc"), ADA, "10.3.0").startswith("built on sm_80 (same-cc)")
    assert mismatch(side(None), {"name": "A100", "compute_capability": "8.0"}, "10.3.0") is None


def test_an_engine_replaced_by_another_model_is_not_answered_from_the_cache(sm86_plan, tmp_path, conv_onnx_factory):
    """The cache key holds what the engine was built from: a new model's engine under the old name is rebuilt,
    never served the old model's rebuild."""
    import shutil

    from fcnseg.export.tensorrt import build_engine

    version = EngineSidecar.read(sm86_plan).library_version
    plan = tmp_path / "m.plan"
    for name in ("m.plan", "m.plan.json", "m.onnx"):
        shutil.copy(sm86_plan.parent / name, tmp_path / name)
    old = engine_for_gpu(plan, rebuild="auto", gpu=ADA, installed=version, say=lambda line: None)
    other = conv_onnx_factory(tmp_path / "m.onnx", ModelMetadata(num_classes=5, min_size=32, max_size=128))
    build_engine(other, output=plan, library="tensorrt_rtx", compute_capabilities=["8.6"],
                 min_shape=(1, 3, 32, 32), opt_shape=(1, 3, 64, 64), max_shape=(2, 3, 128, 128))
    lines: list = []
    new = engine_for_gpu(plan, rebuild="auto", gpu=ADA, installed=version, say=lines.append)
    assert new != old and old.is_file() and lines[0].startswith("fcnseg: rebuilding m.plan")
    assert EngineSidecar.read(new).model_metadata().num_classes == 5
