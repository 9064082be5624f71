"""``python -m fcnseg.benchmarks.gpu_smoke``: its dry run end to end on the CPU (report structure), the memory
round-trip check (which must catch a lost or changed byte), and the errors where no GPU is."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fcnseg.benchmarks import gpu_smoke
from fcnseg.benchmarks.torch_cuda import TORCH_MODES
from fcnseg.core.errors import FcnsegError

STEP_NAMES = [name for name, _ in gpu_smoke.STEPS]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The CLI's dry run, once: (click result, output folder)."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    result = CliRunner().invoke(gpu_smoke.main, ["--dry-run", "--out", str(out)])
    return result, out


def test_dry_run_exits_0_and_prints_one_timed_line_per_step(dry_run):
    result, out = dry_run
    assert result.exit_code == 0, result.output + result.stderr
    for i, name in enumerate(STEP_NAMES, 1):
        assert f"[{i}/{len(STEP_NAMES)}] {name}: ok (" in result.stderr, result.stderr
    assert f"wrote {out / 'gpu_smoke.md'} and {out / 'gpu_smoke.json'}" in result.stderr


def test_dry_run_json_has_every_step(dry_run):
    _, out = dry_run
    report = json.loads((out / "gpu_smoke.json").read_text())
    assert [s["name"] for s in report["stages"]] == STEP_NAMES
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in report["stages"]), report["stages"]
    assert report["exit_code"] == 0 and report["failures"] == [] and report["config"]["dry_run"] is True
    data = report["data"]
    assert data["environment"]["run_on"] == "cpu" and data["environment"]["torch"] == torch.__version__
    memory = data["cuda memory"]
    assert memory["library"] == "host memory (dry run)"
    assert [r["check"] for r in memory["rows"]] == ["async copies host->device->host",
                                                    "CUDA graph replay of the copies"]
    assert all(r["bytes"] == 1 << 20 for r in memory["rows"])
    train = data["train step"]
    assert train["device"] == "cpu" and math.isfinite(train["train_loss"]) and train["epoch"] == 0
    assert (out / "train" / "model_best.pth").is_file()
    assert data["eval"]["backend"] == "pytorch" and 0 <= data["eval"]["miou"] <= 1 and data["eval"]["images"] == 2
    assert data["eval"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")   # where PyTorchBackend runs


def test_dry_run_benchmark_rows_carry_their_speedups(dry_run):
    _, out = dry_run
    rows = json.loads((out / "gpu_smoke.json").read_text())["data"]["pytorch cuda"]
    assert [r["mode"] for r in rows] == list(TORCH_MODES)
    fp32 = rows[0]
    assert fp32["median_ms"] > 0 and fp32["x_fp32"] == 1.0 and fp32["device"] == "cpu"
    assert fp32["iters"] == 2 and fp32["arch"] == gpu_smoke.ARCH
    for row in rows[1:]:
        assert row["skipped"] == "needs CUDA (dry run)" and row["x_fp32"] is None and "median_ms" not in row


def test_dry_run_markdown_shows_each_step_and_leaves_no_temporary_file(dry_run):
    _, out = dry_run
    md = (out / "gpu_smoke.md").read_text()
    assert md.startswith("# fcnseg GPU smoke test") and "Dry run on the CPU" in md
    for name in STEP_NAMES:
        assert f"## {name}: ok (" in md
    for line in ("round trips through host memory (dry run), every byte compared", "one optimizer step",
                 "fcn-eval, PyTorch backend", "needs CUDA (dry run)", "x fp32"):
        assert line in md
    assert not [p for p in out.iterdir() if ".fcnseg-" in p.name]


class _DropsAByte(gpu_smoke.HostCudaMemory):
    def memcpy_dtoh_async(self, dst, src, stream):
        super().memcpy_dtoh_async(dst, src, stream)
        self._queue(stream, lambda: dst.__setitem__(7, dst[7] ^ 1))


class _GraphDoesNothing(gpu_smoke.HostCudaMemory):
    def graph_launch(self, graph_exec, stream):
        pass


class _Counting(gpu_smoke.HostCudaMemory):
    def __init__(self):
        super().__init__()
        self.live = {"device": 0, "host": 0, "stream": 0, "graph": 0}

    def malloc(self, nbytes):
        self.live["device"] += 1
        return super().malloc(nbytes)

    def free(self, ptr):
        self.live["device"] -= 1
        super().free(ptr)

    def malloc_host(self, nbytes):
        self.live["host"] += 1
        return super().malloc_host(nbytes)

    def free_host(self, array):
        self.live["host"] -= 1

    def stream_create(self):
        self.live["stream"] += 1
        return super().stream_create()

    def stream_destroy(self, stream):
        self.live["stream"] -= 1

    def graph_capture_end(self, stream):
        self.live["graph"] += 1
        return super().graph_capture_end(stream)

    def graph_destroy(self, graph_exec):
        self.live["graph"] -= 1


def test_memory_check_round_trips_every_byte():
    result = gpu_smoke.check_cuda_memory(gpu_smoke.HostCudaMemory(), 4096)
    assert [r["bytes"] for r in result["rows"]] == [4096, 4096]


@pytest.mark.parametrize("memory,which", [(_DropsAByte, "async copies"), (_GraphDoesNothing, "CUDA graph replay")])
def test_memory_check_catches_a_wrong_byte(memory, which):
    with pytest.raises(FcnsegError, match=f"expected 4096 bytes back unchanged from {which}.*got [1-9]"):
        gpu_smoke.check_cuda_memory(memory(), 4096)


@pytest.mark.parametrize("fail", [False, True])
def test_memory_check_releases_everything(fail, monkeypatch):
    mem = _Counting()
    if fail:
        monkeypatch.setattr(mem, "graph_launch", lambda g, s: (_ for _ in ()).throw(RuntimeError("launch failed")))
        with pytest.raises(RuntimeError, match="launch failed"):
            gpu_smoke.check_cuda_memory(mem, 256)
    else:
        gpu_smoke.check_cuda_memory(mem, 256)
    assert mem.live == {"device": 0, "host": 0, "stream": 0, "graph": 0}


def test_speedups_are_fp32_over_each_mode():
    rows = [{"arch": "a", "shape": [8, 8], "batch": 1, "mode": m, "median_ms": t}
            for m, t in (("fp32", 10.0), ("fp16", 4.0), ("cuda_graph_fp16", 2.5))]
    rows.append({"arch": "a", "shape": [8, 8], "batch": 1, "mode": "channels_last_fp16", "error": "OOM"})
    assert [r["x_fp32"] for r in gpu_smoke.with_speedups(rows)] == [1.0, 2.5, 4.0, None]


def test_bad_iters_and_missing_gpu_are_one_line(tmp_path):
    result = CliRunner().invoke(gpu_smoke.main, ["--dry-run", "--iters", "0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr.strip() == "error: expected --iters >= 1, got 0"
    if torch.cuda.is_available():
        return
    result = CliRunner().invoke(gpu_smoke.main, ["--out", str(tmp_path / "o")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "expected a CUDA GPU" in lines[0] and "--dry-run" in lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_memory_check_on_the_gpu():
    from fcnseg.runtime.backends.cuda_memory import load_cuda_memory

    mem = load_cuda_memory()
    result = gpu_smoke.check_cuda_memory(mem, 1 << 20)
    assert result["library"] == mem.name and all(r.get("bytes") == 1 << 20 or r.get("skipped")
                                                 for r in result["rows"])
    assert np.isfinite([r["seconds"] for r in result["rows"] if "seconds" in r]).all()
