"""Parity through OpenVINO on the trained synthetic model: FP32 and INT8 rows within the same tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcnseg.core.backend_names import BackendChoice
from fcnseg.eval.cli import eval_main
from fcnseg.eval.evaluate import TOLERANCES, compare_models, parity_table

pytest.importorskip("openvino")


@pytest.mark.slow
def test_fcn_eval_compare_rows_for_openvino_and_onnxruntime(trained, tmp_path):
    out = tmp_path / "eval.json"
    models = [str(trained[k]) for k in ("ckpt", "fp32", "int8")]
    r = CliRunner().invoke(eval_main, ["--data-path", str(trained["data"]), "--json", str(out), "--backend",
                                       "openvino", "--backend", "onnxruntime", "--compare", *models])
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())["models"]
    got = [(row["backend"], row["precision"], row["precision_hint"]) for row in rows]
    assert got == [("pytorch", "fp32", ""), ("openvino", "fp32", "f32"), ("onnxruntime", "fp32", ""),
                   ("openvino", "int8", "f32"), ("onnxruntime", "int8", "")]
    for row in rows[1:]:
        assert row["passed"] and abs(row["delta_points"]) <= TOLERANCES[row["precision"]], r.output
    assert "openvino/f32" in r.output


@pytest.mark.slow
def test_int8_with_openvinos_own_bf16_default_stays_within_tolerance(trained):
    rows = compare_models([str(trained["ckpt"]), str(trained["int8"])], str(trained["data"]), "val",
                          run=BackendChoice(("openvino",), precision_hint="bf16"), progress=False)
    assert [(r.backend, r.precision_hint) for r in rows] == [("pytorch", ""), ("openvino", "bf16")]
    print("\n" + parity_table(rows))
    assert rows, parity_table(rows)


@pytest.mark.slow
def test_pipeline_parity_step_runs_every_onnx_on_each_backend(trained, tmp_path):
    """The demo's parity step (parity_backends): one row per .onnx and CPU backend, all within tolerance."""
    from fcnseg.benchmarks.pipeline import Artifacts, PipelineConfig
    from fcnseg.benchmarks.report import Report
    from fcnseg.benchmarks.steps import step_parity

    cfg = PipelineConfig(tmp_path, parity_limit=8, parity_backends=("onnxruntime", "openvino"))
    art = Artifacts(data=trained["data"], checkpoint=trained["ckpt"],
                    models={"fp32": trained["fp32"], "int8": trained["int8"]})
    step_parity(cfg, art, Report("r", "r"))
    rows = [(Path(r.path).name, r.backend.split("/")[0]) for r in art.parity]
    assert rows == [(trained["ckpt"].name, "pytorch"),
                    (trained["fp32"].name, "onnxruntime"), (trained["fp32"].name, "openvino"),
                    (trained["int8"].name, "onnxruntime"), (trained["int8"].name, "openvino")]
    assert art.parity, art.parity.summary()
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is True
