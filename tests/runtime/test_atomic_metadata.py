import os

import pytest

from fcnseg.runtime.atomic import atomic_path, write_text
from fcnseg.runtime.metadata import ModelMetadata


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
