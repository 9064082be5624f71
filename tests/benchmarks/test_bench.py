import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.benchmarks.bench import STAGES, bench_models, bench_table
from fcnseg.benchmarks.cli import bench_main


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A tiny conv net as FP32 ONNX and as an ONNX with in-graph argmax (exported with the real exporter)."""
    import torch

    from fcnseg.core.metadata import ModelMetadata

    class Tiny(torch.nn.Module):
        def __init__(self, argmax):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 21, 3, padding=1)
            self.argmax = argmax

        def forward(self, x):
            y = self.conv(x)
            return y.argmax(1).to(torch.uint8) if self.argmax else y

    import onnx

    root = tmp_path_factory.mktemp("bench")
    paths = []
    for argmax in (False, True):
        path = root / f"tiny_{'mask' if argmax else 'logits'}.onnx"
        torch.manual_seed(0)
        torch.onnx.export(Tiny(argmax), torch.zeros(1, 3, 32, 32), str(path), input_names=["input"],
                          output_names=["mask" if argmax else "logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}})
        model = onnx.load(str(path))
        for k, v in ModelMetadata(arch="tiny", argmax=argmax).to_props().items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(path))
        paths.append(str(path))
    return paths


def test_bench_models_reports_every_stage_and_ratios(two_models):
    results = bench_models(two_models, [(40, 56)], [1, 2], warmup=1, iters=4, rounds=2)
    assert [(r.shape, r.batch) for r in results] == [((40, 56), 1)] * 2 + [((40, 56), 2)] * 2
    for r in results:
        assert r.iters == 4 and set(r.stages) == set(STAGES)
        assert 0 < r.e2e.min <= r.e2e.median <= r.e2e.max
        assert r.stages["infer"].median > 0 and r.peak_host_mb > 0
        assert r.images_per_s == pytest.approx(r.batch * 1e3 / r.e2e.median)
    assert results[0].speedup == 1.0 and results[2].speedup == 1.0
    assert results[1].speedup == pytest.approx(results[0].e2e.median / results[1].e2e.median)
    table = bench_table(results)
    assert "tiny_mask.onnx" in table and "speedup" in table


class BlockRecorder:
    """Takes the place of a power monitor to see each model's timed blocks (start, end)."""

    def __init__(self):
        self.blocks = []

    def summarize(self, windows, images):
        self.blocks.append(list(windows))
        return {}


def test_each_timed_block_starts_after_a_settling_pause(two_models):
    """No model is timed while the previous one's idle threads may still spin (ONNX Runtime's do)."""
    from fcnseg.benchmarks.bench import bench_shape

    rec = BlockRecorder()
    bench_shape(two_models, (24, 24), 1, warmup=1, iters=4, rounds=2, power=rec, settle_s=0.05)
    starts_ends = sorted(w for model in rec.blocks for w in model)
    assert len(rec.blocks) == 2 and len(starts_ends) == 4
    gaps = [nxt[0] - prev[1] for prev, nxt in zip(starts_ends, starts_ends[1:])]
    assert min(gaps) >= 0.05, gaps


def test_fcn_bench_cli_writes_json_and_csv(two_models, tmp_path):
    out_json, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    r = CliRunner().invoke(bench_main, ["--model", two_models[0], "--model", two_models[1], "--shape", "33x47",
                                        "--iters", "3", "--warmup", "1", "--rounds", "1", "--json", str(out_json),
                                        "--csv", str(out_csv)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out_json.read_text())
    assert [d["shape"] for d in doc] == [[33, 47], [33, 47]] and np.isfinite(doc[1]["e2e"]["median"])
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 2 and float(rows[0]["speedup"]) == 1.0


def test_fcn_bench_cli_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(bench_main, ["--model", str(tmp_path / "missing.onnx")])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(bench_main, [])
    assert r.exit_code == 2 and "expected --engine PATH or --model PATH" in r.output


def test_providers_reach_onnx_models_only(two_models, tmp_path):
    """--providers with a .pth in the same run must not fail the .pth (it has no providers to choose)."""
    from fcnseg.runtime.backends.onnxruntime import providers_for

    assert providers_for("a.onnx", None, ["cpu"]) == ["cpu"] and providers_for("a.pth", None, ["cpu"]) is None
    assert providers_for("fcn.plan", None, ["cuda"]) is None and providers_for("a.onnx", "openvino", ["cpu"]) is None
    r = CliRunner().invoke(bench_main, ["--model", two_models[0], "--providers", "cpu", "--shape", "16x16",
                                        "--iters", "1", "--warmup", "0", "--rounds", "1"])
    assert r.exit_code == 0, r.output


def test_slide_mode_reports_tiles_per_second(tiny_conv_onnx):
    """fcn-bench --mode slide: images at their own size, in tiles; each row says how many tiles and how fast."""
    from fcnseg.benchmarks.bench import Timing, run_benchmark
    from fcnseg.runtime.tiling import Tiling, tile_count

    run = run_benchmark([str(tiny_conv_onnx)], [(200, 300)], [1], timing=Timing(warmup=1, iters=2, rounds=1),
                        view={"mode": "slide", "tile": 64, "stride": 48})
    (row,) = run.results
    assert row.extra["tiles_per_image"] == tile_count((200, 300), Tiling(64, 48)) == 4 * 6
    assert row.extra["tiles_per_s"] == pytest.approx(24 * 1e3 / row.e2e.median)
