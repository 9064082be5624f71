"""Cross-backend parity on a trained model: the same images through PyTorch, ONNX FP32/FP16/INT8 (and TensorRT)."""

import json
import subprocess
import sys

import pytest

from fcnseg.eval.evaluate import TOLERANCES, class_delta_table, compare_models, parity_table


@pytest.mark.slow
def test_every_onnx_precision_matches_pytorch_within_tolerance(trained):
    paths = [str(trained[k]) for k in ("ckpt", "fp32", "fp16", "int8", "int8_cpu")]
    rows = compare_models(paths, str(trained["data"]), "val", progress=False)
    print("\n" + parity_table(rows) + "\n" + class_delta_table(rows))
    ref = rows[0]
    assert ref.format == "PyTorch" and ref.miou > 0.6, "the fixture model should have learned something"
    assert [r.precision for r in rows] == ["fp32", "fp32", "fp16", "int8", "int8"]
    for row in rows[1:]:
        assert row.status == "ok" and row.comparison is not None
        assert abs(row.comparison.delta) <= TOLERANCES[row.precision], parity_table(rows)
        assert len(row.comparison.class_delta) == 21


@pytest.mark.slow
def test_fcn_eval_compare_writes_json_and_fails_loudly_on_a_bad_model(trained, tmp_path):
    from fcnseg.export.torch_export import export_onnx
    from fcnseg.train.checkpoint import save_checkpoint
    from fcnseg.train.models import get_model

    untrained = tmp_path / "untrained.pth"
    save_checkpoint({"model": get_model("fcn8s_resnet18").state_dict(), "arch": "fcn8s_resnet18",
                     "num_classes": 21, "base_size": 128}, untrained)
    bad = export_onnx(untrained, tmp_path / "bad.onnx", verify=False).path

    def fcn_eval(*models):
        out = tmp_path / "eval.json"
        cmd = [sys.executable, "-c", "from fcnseg.eval.cli import eval_main; eval_main()",
               "--data-path", str(trained["data"]), "--limit", "8", "--json", str(out), "--compare", *map(str, models)]
        return subprocess.run(cmd, capture_output=True, text=True), out

    r, out = fcn_eval(trained["ckpt"], trained["fp32"], trained["int8_cpu"])
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert [m["passed"] for m in doc["models"][1:]] == [True, True]
    assert "per-class IoU" in r.stdout and "ONNX" in r.stdout
    r, _ = fcn_eval(trained["ckpt"], bad)
    assert r.returncode == 1 and "outside tolerance" in r.stderr and "FAIL" in r.stdout


@pytest.mark.tensorrt
def test_tensorrt_engines_match_the_onnx_references(trained, tensorrt_gpu, tmp_path):
    from fcnseg.export.tensorrt import build_engine

    shapes = {"min_shape": (1, 3, 64, 64), "opt_shape": (1, 3, 96, 128), "max_shape": (1, 3, 256, 256)}
    plans = [build_engine(trained[k], output=tmp_path / f"{k}.plan", **shapes) for k in ("fp16", "int8")]
    rows = compare_models([str(trained["ckpt"])] + [str(p) for p in plans], str(trained["data"]), "val",
                          progress=False)
    print("\n" + parity_table(rows))
    assert all(r.ok for r in rows), parity_table(rows)
