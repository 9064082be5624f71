"""Faults as a trusted system meets them: each is one line and exit 2, leaves nothing half-written, and the
next run after a kill succeeds with the earlier artifacts intact.

The fault table in the docs (docs/safety.md) lists these: fault, command, point of the kill or limit, what
was left on disk, and the next run's result.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

TRAIN = ("--model", "fcn8s_resnet18", "-b", "2", "-j", "0", "--base-size", "64", "--crop-size", "48",
         "--skip-data-check", "--device", "cpu")


def _export_args(kind: str, inputs, out: Path):
    """The command line of one export step writing into ``out``."""
    return {
        "onnx": ("fcn-export", ["onnx", inputs["ckpt"], "-o", out / "m.onnx", "--no-verify"]),
        "fp16": ("fcn-export", ["fp16", inputs["onnx"], "-o", out / "m16.onnx", "--no-verify"]),
        "int8": ("fcn-export", ["int8", inputs["onnx"], "--calib-data", inputs["voc"], "--num-images", "2",
                                "--no-progress", "-o", out / "m8.onnx"]),
        "trt": ("fcn-export", ["trt", inputs["onnx"], "--library", "tensorrt_rtx", "--min-shape", "1x3x64x64",
                               "--opt-shape", "1x3x64x64", "--max-shape", "1x3x64x64", "-o", out / "m.plan"]),
        "train": ("fcn-train", ["--data-path", inputs["voc"], *TRAIN, "--epochs", "1", "--output-dir", out / "run"]),
    }[kind]


def _nothing_half_written(folder: Path) -> None:
    names = [p.name for p in folder.rglob("*")]
    assert not [n for n in names if n.endswith((".onnx", ".plan", ".pth", ".tmp", ".tmpdir"))], names


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "fp16", "int8", "trt", "train"])
def test_a_full_disk_is_one_line_and_leaves_nothing(fx, kind, fault_inputs, tmp_path):
    """A 1 MiB tmpfs as the output folder: each export step and training stop with one line naming the file."""
    if kind == "trt":
        pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX to build an engine on the CPU")
    with fx.tmpfs(tmp_path / "small", "1m") as small:
        name, args = _export_args(kind, fault_inputs, small)
        proc = fx.run(name, args)
        line = fx.one_error_line(proc)
        assert "expected room to write" in line and "MiB free" in line
        # the file system's own words, or torch.save's (it writes through its own C++ stream)
        assert "No space left on device" in line or (kind == "train" and "a failed write (" in line and "pos" in line)
        _nothing_half_written(small)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "int8", "train"])
def test_a_file_size_limit_is_one_line_and_leaves_nothing(fx, kind, fault_inputs, tmp_path):
    """RLIMIT_FSIZE (where no tmpfs can be mounted): the write fails with EFBIG; the same one line."""
    name, args = _export_args(kind, fault_inputs, tmp_path)
    proc = fx.run(name, args, fsize=2 << 20)
    line = fx.one_error_line(proc)
    assert "expected room to write" in line
    assert "File too large" in line or (kind == "train" and "a failed write (" in line and "pos" in line)
    _nothing_half_written(tmp_path)


def _int8_kill_points():
    """The phases of ``quantize_int8``, by the scratch folder each one makes inside the work folder."""
    return [("calibration", "fcnseg-calib-"), ("accuracy check", "fcnseg-eval-")]


def _in_phase(folder: Path, mark: str) -> bool:
    for work in folder.glob(".*.tmpdir"):
        try:
            if any(p.name.startswith(mark) for p in work.iterdir()):
                return True
        except OSError:   # removed meanwhile
            pass
    return False


@pytest.mark.slow
@pytest.mark.parametrize("point,mark", _int8_kill_points())
def test_a_killed_int8_export_is_cleaned_by_the_next_run(fx, point, mark, fault_inputs, tmp_path):
    """SIGKILL during calibration or the accuracy check: the scratch folder stays beside the output (nothing in
    the system's temporary folder), the earlier INT8 graph is intact, and the next run removes the leftovers."""
    _, args = _export_args("int8", fault_inputs, tmp_path)
    assert fx.run("fcn-export", args).returncode == 0
    before = fx.sha1(tmp_path / "m8.onnx")
    system_tmp = set(Path(tempfile.gettempdir()).iterdir())
    proc = fx.start("fcn-export", args)
    assert fx.kill_when(proc, lambda: _in_phase(tmp_path, mark)), f"the run ended before its {point}"
    left = fx.temporaries(tmp_path)
    assert left and fx.sha1(tmp_path / "m8.onnx") == before
    assert not [p.name for p in set(Path(tempfile.gettempdir()).iterdir()) - system_tmp
                if p.name.startswith(("fcnseg-calib", "fcnseg-eval", "ort.quant"))]
    assert fx.run("fcn-export", args).returncode == 0
    assert fx.temporaries(tmp_path) == [] and (tmp_path / "m8.onnx").is_file()


@pytest.mark.slow
def test_a_killed_engine_build_is_cleaned_by_the_next_run(fx, fault_inputs, tmp_path):
    """SIGKILL while ``fcn-export trt --fp16`` lowers the FP32 graph: the earlier engine and sidecar are intact."""
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT for RTX to build an engine on the CPU")
    _, args = _export_args("trt", fault_inputs, tmp_path)
    assert fx.run("fcn-export", args).returncode == 0
    plan, side = tmp_path / "m.plan", tmp_path / "m.plan.json"
    before = (fx.sha1(plan), fx.sha1(side))
    proc = fx.start("fcn-export", args + ["--fp16"])
    assert fx.kill_when(proc, lambda: any(n.endswith(".tmpdir") for n in fx.temporaries(tmp_path)))
    assert fx.temporaries(tmp_path) and (fx.sha1(plan), fx.sha1(side)) == before
    assert fx.run("fcn-export", args + ["--fp16"]).returncode == 0
    assert fx.temporaries(tmp_path) == [] and json.loads(side.read_text())["precision"] == "fp16"


@pytest.mark.slow
def test_a_killed_training_resumes_with_its_checkpoint_intact(fx, fault_inputs, tmp_path):
    """SIGKILL in the second epoch: checkpoint.pth of the first is intact, the lock is released by the kernel,
    and ``--resume`` finishes the run."""
    out = tmp_path / "run"
    args = ["--data-path", fault_inputs["voc"], *TRAIN, "--epochs", "8", "--output-dir", out]
    proc = fx.start("fcn-train", args)
    ckpt = out / "checkpoint.pth"
    assert fx.kill_when(proc, ckpt.is_file), "the run ended before its first checkpoint"
    saved = fx.sha1(ckpt)
    resumed = fx.run("fcn-train", args + ["--resume", ckpt])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert fx.sha1(ckpt) != saved and fx.temporaries(out) == [] and fx.temporaries(tmp_path) == []


def test_a_second_training_in_the_same_folder_refuses_naming_the_first(fx, fault_inputs, tmp_path):
    """Two fcn-train runs on one --output-dir: the second refuses in one line, naming the first one's pid."""
    import os

    from fcnseg.core.atomic import run_lock

    out = tmp_path / "run"
    with run_lock(out, "fcn-train"):
        proc = fx.run("fcn-train", ["--data-path", fault_inputs["voc"], *TRAIN, "--epochs", "1", "--output-dir", out])
    line = fx.one_error_line(proc)
    assert f"another fcn-train (pid {os.getpid()}) writing there" in line
    assert not out.exists() and not list(tmp_path.glob(".run.fcnseg-lock"))


def test_a_read_only_filesystem_is_refused_before_the_export(fx, fault_inputs, tmp_path):
    with fx.tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        proc = fx.run("fcn-export", ["onnx", fault_inputs["ckpt"], "-o", ro / "m.onnx", "--no-verify"])
        line = fx.one_error_line(proc)
        assert "expected a writable folder for -o" in line and list(ro.iterdir()) == []


def test_a_busy_port_is_named(fx, triton_install, tiny_conv_onnx, tmp_path):
    """fcn-serve on a port another process listens on: which port, which option, and what to try."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = fx.run("fcn-serve", ["--model", tiny_conv_onnx, "--port", port, "--grpc-port", "0", "--metrics-port",
                                 "0", "--repo", tmp_path / "repo"], timeout=120)
    line = fx.one_error_line(proc)
    assert f"expected port {port} on 127.0.0.1 to be free for --port (HTTP)" in line and "try --port 0" in line


def _peak_rss_mb(args, tmp_path: Path) -> float:
    """Peak RSS (MiB) of one fcn-predict process, as ``resource.getrusage`` reports it."""
    import subprocess
    import sys

    code = ("import resource, sys\nfrom fcnseg.runtime.cli import predict_main\ntry:\n    predict_main(sys.argv[1:])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_24_megapixel_photo_with_an_overlay_stays_within_twice_the_image_plus_the_mask(fx, fault_inputs, tmp_path):
    """6000x4000: the overlay adds at most 2x the decoded image plus the mask to the peak (it blended in float64
    at once before: 1.1 GB more than the mask alone)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (4000, 6000, 3), dtype=np.uint8)).save(photo, quality=80)
    base = ["-m", fault_inputs["onnx"], photo, "--backend", "onnxruntime"]
    mask_only = _peak_rss_mb(base + ["-o", tmp_path / "a"], tmp_path)
    with_overlay = _peak_rss_mb(base + ["-o", tmp_path / "b", "--overlay"], tmp_path)
    image_mb, mask_mb = 4000 * 6000 * 3 / 2**20, 4000 * 6000 / 2**20
    print(f"\npeak RSS: mask only {mask_only:.0f} MiB, with overlay {with_overlay:.0f} MiB "
          f"(bound: + {2 * image_mb + mask_mb:.0f} MiB)")
    assert (tmp_path / "b" / "photo_overlay.png").is_file()
    assert with_overlay - mask_only < 2 * image_mb + mask_mb
