"""EngineSidecar: the one reader/writer of ``<plan>.json`` (round trip, format 1, validation, messages)."""

from __future__ import annotations

import json

import pytest

from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata
from fcnseg.core.sidecar import SIDECAR_FORMAT, EngineSidecar, find_sidecar, sidecar_path


def make(**kw):
    base = dict(library="tensorrt_rtx", library_version="1.7.1.116", compute_capabilities=["8.6", "8.9", "12.0"],
                precision="int8", profile={"input": "input", "min": [1, 3, 64, 64], "opt": [1, 3, 96, 96],
                                           "max": [1, 3, 128, 128]},
                io={"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 3, -1, -1]}], "outputs": []},
                metadata=ModelMetadata(arch="fcn_resnet50").to_dict(), onnx="m.onnx", build_seconds=1.5)
    base.update(kw)
    return EngineSidecar(**base)


def test_round_trip(tmp_path):
    side = make()
    path = side.write(tmp_path / "m.plan")
    assert path == sidecar_path(tmp_path / "m.plan") == tmp_path / "m.plan.json"
    back = EngineSidecar.read(tmp_path / "m.plan")
    assert back == side and back.format == SIDECAR_FORMAT and back.model_metadata().arch == "fcn_resnet50"
    assert back.targets() == "sm_86/sm_89/sm_120" and back.version_short == "1.7"
    assert back.describe() == ("tensorrt_rtx 1.7.1.116, int8, for sm_86/sm_89/sm_120, profile "
                               "1x3x64x64..1x3x128x128")


def test_no_sidecar_and_the_old_name(tmp_path):
    assert EngineSidecar.read(tmp_path / "m.plan") is None and find_sidecar(tmp_path / "m.plan") is None
    (tmp_path / "m.json").write_text(json.dumps(make().to_dict()))   # model.json, as older tools name it
    assert EngineSidecar.read(tmp_path / "m.plan").library == "tensorrt_rtx"


def test_format_1_is_mapped(tmp_path):
    doc = {"format": 1, "tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"},
           "precision": "fp16", "inputs": [{"name": "input"}], "outputs": [{"name": "logits"}], "onnx": "a.onnx"}
    (tmp_path / "m.plan.json").write_text(json.dumps(doc))
    side = EngineSidecar.read(tmp_path / "m.plan")
    assert (side.library, side.library_version, side.compute_capabilities) == ("tensorrt", "10.3.0", [])
    assert side.io == {"inputs": [{"name": "input"}], "outputs": [{"name": "logits"}]}
    assert side.targets() == "Orin (compute capability 8.7)" and side.model_metadata() is None


@pytest.mark.parametrize("change, message", [
    (dict(library="onnxruntime"), "expected 'library' in .* to be one of"),
    (dict(compute_capabilities=["sm86"]), "expected 'compute_capabilities'"),
    (dict(precision="int4"), "expected 'precision'"),
    (dict(profile={"min": [1], "opt": [1, 2], "max": [1]}), "expected 'profile'"),
    (dict(dla_core=-1), "expected 'dla_core'"),
    (dict(format=99), "expected sidecar format <= 2 .* got 99 .*newer fcnseg"),
])
def test_validation(tmp_path, change, message):
    doc = make().to_dict()
    doc.update(change)
    (tmp_path / "m.plan.json").write_text(json.dumps(doc))
    with pytest.raises(FcnsegError, match=message) as e:
        EngineSidecar.read(tmp_path / "m.plan")
    assert "\n" not in str(e.value)
    with pytest.raises(FcnsegError):
        EngineSidecar(**{**make().to_dict(), **change}).write(tmp_path / "n.plan")
    assert not (tmp_path / "n.plan.json").exists()


@pytest.mark.parametrize("text", ["{broken", "[1, 2]"])
def test_not_a_json_object(tmp_path, text):
    (tmp_path / "m.plan.json").write_text(text)
    with pytest.raises(FcnsegError, match="sidecar"):
        EngineSidecar.read(tmp_path / "m.plan")


def test_output_checks_recognise_engines_by_their_sidecar_and_read_it_once(tmp_path, monkeypatch):
    """ENGINE finds the sidecar where EngineSidecar does (model.plan.json, else model.json); each file parsed once."""
    from fcnseg.core import output_guard
    from fcnseg.export import artifacts as outputs

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine bytes")
    assert not outputs.ENGINE.is_ours(plan)
    (tmp_path / "m.json").write_text(json.dumps(make().to_dict()))
    assert outputs.ENGINE.is_ours(plan) and find_sidecar(plan) == tmp_path / "m.json"
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    parsed = []
    real = output_guard.read_json
    monkeypatch.setattr(output_guard, "read_json", lambda p: parsed.append(p.name) or real(p))
    assert outputs.ENGINE_SIDECAR.is_ours(tmp_path / "m.json")
    assert not outputs.ENGINE_SIDECAR.is_ours(tmp_path / "notes.json")
    assert not outputs.INT8_REPORT.is_ours(tmp_path / "notes.json")
    assert parsed == ["m.json", "notes.json", "notes.json"]
