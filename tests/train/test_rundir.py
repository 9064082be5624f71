"""The output folder: a previous run is refused unless --resume or --force; --force moves it aside; one row an epoch."""

import json

import pytest

from fcnseg.core.errors import FcnsegError
from fcnseg.train.config import TrainConfig
from fcnseg.train.engine import train
from fcnseg.core.output_guard import check_output_dir
from fcnseg.train.rundir import append_metrics, prepare_output_dir, read_metrics


def _previous_run(out):
    out.mkdir()
    for name in ("checkpoint.pth", "model_best.pth", "model_7.pth"):
        (out / name).write_bytes(b"weights of a better run")
    (out / "metrics.jsonl").write_text('{"epoch": 7}\n')
    (out / "notes.txt").write_text("mine")


def test_a_previous_run_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    cfg = TrainConfig(data_path=str(tmp_path / "no-data"), model="fcn8s_resnet18", output_dir=str(out), device="cpu")
    with pytest.raises(FcnsegError, match=r"holding a previous run \(checkpoint.pth, metrics.jsonl, model_7.pth "
                                          r"and 1 more\); try --resume .*checkpoint.pth.* --force to start over"):
        train(cfg)
    assert (out / "model_best.pth").read_bytes() == b"weights of a better run"


def test_force_moves_the_previous_run_aside_and_says_where(tmp_path):
    out = tmp_path / "run"
    _previous_run(out)
    said = []
    prepare_output_dir(out, force=True, say=said.append)
    (aside,) = out.glob("previous-*")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", aside.name]  # not ours: left where it is
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint.pth", "metrics.jsonl", "model_7.pth",
                                                       "model_best.pth"]
    assert said == [f"moved the previous run (4 files) to {aside}"]


@pytest.mark.parametrize("where, message", [
    ("notes.txt", "expected --output-dir to be a folder, got the file"),
    ("notes.txt/run", "expected --output-dir in a folder, got .* whose parent .*notes.txt' is a file"),
])
def test_an_output_path_that_is_or_is_under_a_file_is_refused(tmp_path, where, message):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FcnsegError, match=message):
        prepare_output_dir(tmp_path / where)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_metrics_never_record_an_epoch_twice(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (0, 1, 2, 1):  # a run resumed from epoch 0's checkpoint writes epoch 1 again
        append_metrics(path, {"epoch": epoch, "miou": epoch / 10})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"epoch": 0, "miou": 0.0},
                                                                      {"epoch": 1, "miou": 0.1}]


def test_read_metrics_gives_the_rows_in_order_and_nothing_for_no_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    path.write_text('{"epoch": 0, "miou": 0.1}\n\n{"epoch": 1, "miou": 0.2}\n')
    assert read_metrics(path) == [{"epoch": 0, "miou": 0.1}, {"epoch": 1, "miou": 0.2}]


@pytest.mark.parametrize("where, message", [
    ("notes.txt", "expected ROOT to be a folder (new or empty), got the file"),
    ("notes.txt/voc", "expected ROOT in a folder, got .* whose parent .*notes.txt' is a file"),
    ("/proc/voc", "expected a writable folder for ROOT"),
])
def test_check_output_dir_refuses_files_and_unwritable_places(tmp_path, where, message):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FcnsegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_output_dir(tmp_path / where, "ROOT", what="a folder (new or empty)")
    assert check_output_dir(tmp_path / "new" / "run", "ROOT") == tmp_path / "new" / "run"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]   # nothing created
