"""Parity through OpenVINO on the trained synthetic model: FP32 and INT8 rows within the same tolerances."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fcnseg.benchmarks.cli import eval_main
from fcnseg.benchmarks.evaluate import TOLERANCES, compare_models, parity_table

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
                          backends=["openvino"], precision_hint="bf16", progress=False)
    assert [(r.backend, r.precision_hint) for r in rows] == [("pytorch", ""), ("openvino", "bf16")]
    print("\n" + parity_table(rows))
    assert rows, parity_table(rows)
