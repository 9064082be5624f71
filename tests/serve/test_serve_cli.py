"""fcn-serve as a user runs it: one command starts Triton on 127.0.0.1, answers, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from click.testing import CliRunner

from fcnseg.runtime import Segmenter
from fcnseg.serve import free_port
from fcnseg.serve.cli import main as serve_cli

FCN_SERVE = Path(sys.executable).with_name("fcn-serve")


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"fcn-serve not ready within {timeout} s")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _collect_lines(stream) -> list:
    """Read ``stream`` line by line in a thread into the returned list (so a full pipe never blocks the server)."""
    lines: list = []

    def read() -> None:
        for line in iter(stream.readline, b""):
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_serve_answers_and_ctrl_c_stops(triton_install, tiny_conv_onnx, tmp_path):
    model = tiny_conv_onnx
    ports = [free_port() for _ in range(3)]
    names = tmp_path / "names.txt"   # the user's names for the model's 4 classes, served with it
    names.write_text("sky\nroad\ncrack\nweed\n")
    cmd = [str(FCN_SERVE), "--model", str(model), "--port", str(ports[0]), "--grpc-port", str(ports[1]),
           "--metrics-port", str(ports[2]), "--max-batch", "4", "--repo", str(tmp_path / "repo"),
           "--precision-hint", "f32", "--classes", str(names)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_ready(ports[0], proc)
        image = np.random.default_rng(2).integers(0, 256, (21, 34, 3), dtype=np.uint8)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        inp = httpclient.InferInput("image", [1, 21, 34, 3], "UINT8")
        inp.set_data_from_numpy(image[None])
        mask = client.infer("fcnseg", [inp]).as_numpy("mask")[0]
        client.close()
        with Segmenter.load(model, precision_hint="f32") as seg:
            assert int((mask != seg(image)).sum()) == 0
        # The server answers before fcn-serve prints its banner: wait for the banner, then press Ctrl-C.
        lines = _collect_lines(proc.stderr)
        deadline = time.monotonic() + 30
        while not any(b"Ctrl-C stops" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)                                 # what Ctrl-C sends
        proc.wait(timeout=40)
        err = b"".join(lines).decode(errors="replace")
        assert proc.returncode == 0, err[-2000:]
        assert "Ctrl-C stops" in err and "stopping" in err and not any(_listening(p) for p in ports)
        assert (tmp_path / "repo" / "fcnseg" / "config.pbtxt").is_file()     # a given --repo is kept
        folder = tmp_path / "repo" / "fcnseg"
        assert (folder / "labels.txt").read_text().split() == ["sky", "road", "crack", "weed"]
        served = json.loads((folder / "1" / "classes.json").read_text())   # what the served Segmenter loaded
        assert [c["name"] for c in served["classes"]] == ["sky", "road", "crack", "weed"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.parametrize("args, expected", [
    ([], "expected --model FILE or --repo DIR"),
    (["--model", "missing.onnx", "--triton-env", "/nonexistent-env"], "nvidia-pytriton"),
    (["--model", "m.onnx", "--port", "70000"], "'--port': 70000 is not in the range 0<=x<=65535"),
    (["--model", "m.onnx", "--grpc-port", "-1"], "'--grpc-port': -1 is not in the range 0<=x<=65535"),
    (["--repo", "r", "--classes", "c.txt"], "expected --classes with --model FILE, got them with --repo alone"),
    (["--repo", "r", "--precision-hint", "f32"], "expected --precision-hint with --model FILE"),
])
def test_serve_errors_are_one_line(args, expected):
    result = CliRunner().invoke(serve_cli, args)
    assert result.exit_code == 2 and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
