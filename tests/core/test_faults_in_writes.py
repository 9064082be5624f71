"""The writer's side of faults: scratch folders that a kill cannot orphan, a full disk as one error, one run
per folder."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest

from fcnseg.core.atomic import atomic_path, no_room_error, remove_stale_temps, run_lock, work_dir, write_bytes
from fcnseg.core.errors import FcnsegError


def test_work_dir_is_beside_the_output_and_removed(tmp_path):
    import tempfile

    with work_dir(tmp_path / "model_int8.onnx", redirect_tempfile=True) as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(".model_int8.onnx.fcnseg-")
        with tempfile.TemporaryDirectory(prefix="ort.quant.") as lib_tmp:   # what a library does meanwhile
            assert os.path.dirname(lib_tmp) == str(scratch)
    assert list(tmp_path.iterdir()) == [] and tempfile.gettempdir() != str(scratch)


def test_a_killed_writers_scratch_folder_is_removed_by_the_next_run(tmp_path):
    """A scratch folder whose process is gone goes; one whose process lives stays, however old."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".m.onnx.fcnseg-{dead.stdout.strip()}-abc.tmpdir"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "aug.onnx").write_bytes(b"x" * 100)
    live = tmp_path / f".m.onnx.fcnseg-{os.getpid()}-def.tmpdir"
    live.mkdir()
    os.utime(live, (0, 0))
    assert remove_stale_temps(tmp_path) == [orphan]
    assert live.is_dir() and not orphan.exists()


def test_no_room_is_one_error_naming_the_file_and_the_free_space(tmp_path):
    with pytest.raises(FcnsegError, match=r"expected room to write .*m\.plan.*No space left on device.*MiB free"):
        with atomic_path(tmp_path / "m.plan") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []   # the partial temporary file is gone
    torch_says = RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                              "data/0: file write failed")
    assert "expected room to write" in str(no_room_error(tmp_path / "c.pth", torch_says))
    with pytest.raises(OSError):   # any other write error stays what it is
        with atomic_path(tmp_path / "x"):
            raise OSError(errno.EACCES, "Permission denied")


def test_write_bytes_says_how_much_was_needed(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_bytes", full)
    with pytest.raises(FcnsegError, match=r"3\.0 MiB needed"):
        write_bytes(tmp_path / "m.plan", b"x" * (3 << 20))


def test_a_second_run_in_a_locked_folder_refuses_naming_the_first(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, "fcn-train"):
        code = ("import sys\nfrom fcnseg.core.atomic import run_lock\nfrom fcnseg.core.errors import FcnsegError\n"
                "try:\n    run_lock(sys.argv[1], 'fcn-train').__enter__()\nexcept FcnsegError as e:\n    print(e)")
        other = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
        assert f"another fcn-train (pid {os.getpid()}) writing there" in other.stdout
    assert list(tmp_path.iterdir()) == []   # the lock file goes with the run
    with run_lock(out, "fcn-train"):        # and the folder is free again
        pass


def test_library_warnings_on_the_root_logger_are_summarised(capsys, caplog):
    """ONNX Runtime's quantizer logs one ``WARNING:root:Expected bias`` per layer of a torchvision export."""
    from fcnseg.export.int8 import _library_warnings_summarised

    with _library_warnings_summarised() as notes:
        for i in range(48):
            logging.warning("Expected bias to be a 1D tensor, layer %d", i)
        logging.getLogger("fcnseg.export").warning("fcnseg's own warning")
    assert len(notes) == 48 and notes[0] == "Expected bias to be a 1D tensor, layer 0"
    assert "Expected bias" not in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records] == ["fcnseg's own warning"]


def test_a_librarys_basicconfig_does_not_outlive_the_summary():
    """``logging.warning`` on a bare root logger installs basicConfig's handler; fcnseg's later warnings would then
    print as "WARNING:fcnseg.export:..." (seen in make bench-cpu). Outside pytest, whose handlers hide it."""
    code = ("import logging; from fcnseg.export.int8 import _library_warnings_summarised as s\n"
            "with s():\n    logging.warning('Expected bias')\n"
            "print(len(logging.getLogger().handlers)); logging.getLogger('fcnseg.export').warning('ours')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["0"], r.stderr
    assert r.stderr.splitlines() == ["ours"]   # once, as logging's last resort prints it
