import os

import pytest

from fcnseg.core.atomic import atomic_path, write_text
from fcnseg.core.metadata import ModelMetadata


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_metadata_round_trip_and_other_class_counts():
    meta = ModelMetadata(arch="fcn8s_resnet18", precision="int8", argmax=True, miou=0.71)
    props = meta.to_props()
    assert all(k.startswith("fcnseg.") and isinstance(v, str) for k, v in props.items())
    assert ModelMetadata.from_props(props) == meta
    five = ModelMetadata(num_classes=5)
    assert five.classes == [f"class_{i}" for i in range(5)] and len(five.palette) >= 5
    assert ModelMetadata.from_dict({**meta.to_dict(), "unknown": 1}) == meta


def test_atomic_writes_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
        os.umask(0o027)
        write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640


def test_stale_temps_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    import subprocess
    import sys
    import time

    from fcnseg.core.atomic import remove_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)   # that process has exited
    orphan = tmp_path / f".model.onnx.fcnseg-{dead_pid}-abc123.tmp"
    orphan_video = tmp_path / f".clip.mp4.fcnseg-{dead_pid}-vid123.tmp.mp4"   # FFmpeg's temp keeps its suffix
    live = tmp_path / f".model.onnx.fcnseg-{os.getpid()}-def456.tmp"   # a writer still running (this one)
    old = tmp_path / f".x.json.fcnseg-{os.getpid()}-old999.tmp"
    foreign = tmp_path / ".notes.txt.tmp"                               # not ours: never touched
    for p in (orphan, orphan_video, live, old, foreign):
        p.write_text("partial")
    stamp = time.time() - 7200
    os.utime(old, (stamp, stamp))
    write_text(tmp_path / "model.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "model.json"])
    assert remove_stale_temps(tmp_path) == []


def test_onnx_metadata_reader_reports_bad_values_as_the_backends_do(tmp_path):
    """The numpy-only ONNX reader decodes props like the backends, and says the same about unreadable ones."""
    from fcnseg.core.errors import FcnsegError
    from fcnseg.core.metadata import metadata_from_props
    from fcnseg.core.onnx_props import read_onnx_metadata

    onnx = pytest.importorskip("onnx")
    meta = ModelMetadata(arch="fcn8s_resnet18", num_classes=5)
    for name, props in (("good", meta.to_props()), ("bad", {**meta.to_props(), "fcnseg.num_classes": "five"})):
        model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    assert read_onnx_metadata(tmp_path / "good.onnx") == meta
    with pytest.raises(FcnsegError) as ours:
        read_onnx_metadata(tmp_path / "bad.onnx")
    with pytest.raises(FcnsegError) as backends:
        metadata_from_props({"fcnseg.num_classes": "five"}, str(tmp_path / "bad.onnx"))
    assert str(ours.value) == str(backends.value)
