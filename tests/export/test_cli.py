"""``fcn-export``: each subcommand end to end, and bad input -> one line on stderr, non-zero exit, no file left."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from fcnseg.export.cli import main
from fcnseg.core.errors import FcnsegError


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def corrupt_files(r18_onnx, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model at all\n" * 4)
    data = r18_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    return garbage, truncated


def test_onnx_command_writes_verified_argmax_graph(r18_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    result = run("onnx", r18_ckpt, "-o", out, "--argmax", "--verify-shapes", "1x64x80", "--trt8")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "onnxruntime vs pytorch OK shape 1x21x64x80" in result.stderr
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["mask"] and model.opset_import[0].version == 17


def test_check_command_exit_codes(r18_onnx, r18_int8, tmp_path):
    ok = run("check", r18_int8.path)
    assert ok.exit_code == 0 and ok.stdout.startswith("OK: ")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Reader:
        feeds = [{"input": __import__("numpy").zeros((1, 3, 64, 64), "float32") + 0.5}]

        def get_next(self):
            return self.feeds.pop() if self.feeds else None

    asym = tmp_path / "asym.onnx"
    quantize_static(str(r18_onnx), str(asym), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    bad = run("check", asym)
    assert bad.exit_code == 1 and bad.stdout.startswith("FAIL: ") and "zero-point" in bad.stdout


@pytest.mark.parametrize("command", ["check", "fp16", "int8", "trt"])
def test_corrupt_or_truncated_onnx_is_one_line(command, corrupt_files, tiny_voc, tmp_path):
    for src in corrupt_files:
        out = tmp_path / f"out_{command}.{'plan' if command == 'trt' else 'onnx'}"
        extra = {"check": [], "fp16": ["-o", out], "int8": ["--calib-data", tiny_voc, "-o", out],
                 "trt": ["--int8", "--calib-data", tiny_voc, "-o", out]}[command]
        result = run(command, src, *extra)
        assert_one_line_error(result, "could not read", src.name, "as an ONNX model")
        assert not out.exists()


def test_checkpoint_with_other_class_count(r18_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    result = run("onnx", r18_ckpt, "--num-classes", "5", "-o", out)
    assert_one_line_error(result, "expected a checkpoint with 5 classes, got 21", "--num-classes 21")
    assert list(tmp_path.iterdir()) == []


def test_unknown_arch(r18_ckpt, tmp_path):
    result = run("onnx", r18_ckpt, "--arch", "fcn_resnet7", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, "fcn_resnet7", "fcn8s_resnet18")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run("onnx", tmp_path / "nope.pth"), "does not exist")


def test_empty_calibration_set(r18_onnx, tiny_voc, tmp_path):
    out = tmp_path / "q.onnx"
    result = run("int8", r18_onnx, "--calib-data", tiny_voc, "--calib-split", "empty", "-o", out,
                 "--cache", tmp_path / "c.json")
    assert_one_line_error(result, "got an empty list")
    assert list(tmp_path.iterdir()) == []


def test_int8_command_reports_miou(r18_onnx, r18_int8, tiny_voc, tmp_path):
    out = tmp_path / "q.onnx"
    result = run("int8", r18_onnx, "--calib-data", tiny_voc, "--num-images", "4", "--method", "minmax",
                 "--cache", r18_int8.cache_path, "--eval-images", "2", "--max-drop", "100", "--no-progress",
                 "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(str(out)) and "mIoU fp32" in result.stdout
    assert "from cache" in result.stderr and out.is_file()


def test_debug_shows_the_exception(r18_ckpt, tmp_path):
    result = run("--debug", "onnx", r18_ckpt, "--num-classes", "5", "-o", tmp_path / "m.onnx")
    assert result.exit_code != 0 and isinstance(result.exception, FcnsegError)


def test_trt_without_tensorrt_is_one_line(r18_onnx, tmp_path):
    result = run("trt", r18_onnx, "-o", tmp_path / "m.plan", "--library", "tensorrt")  # absent here (RTX is not)
    assert_one_line_error(result, "TensorRT")
    assert list(tmp_path.iterdir()) == []


def test_trt_int8_needs_calibration_data(r18_onnx, tmp_path):
    assert_one_line_error(run("trt", r18_onnx, "--int8", "-o", tmp_path / "m.plan"), "--calib-data")
    both = run("trt", r18_onnx, "--int8", "--fp16")   # INT8 with FP16 elsewhere (issue 21): needs calibration too
    assert_one_line_error(both, "--calib-data")


def test_trt_fp16_converts_then_builds(r18_onnx, tmp_path, monkeypatch):
    """With TensorRT faked out: --fp16 on an FP32 graph runs the fp16 step, then builds from its output."""
    from fcnseg.export import tensorrt as trt_build
    from fcnseg.runtime.backends import tensorrt as trt_runtime

    src = tmp_path / "model.onnx"
    src.write_bytes(r18_onnx.read_bytes())
    calls = []
    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda library="auto": object())
    monkeypatch.setattr(trt_build, "build_engine", lambda onnx_path, **kw: calls.append((onnx_path, kw)) or
                        kw["output"])
    result = run("trt", src, "--fp16", "--opt-shape", "1x3x64x64", "--workspace", "2")
    assert result.exit_code == 0, result.stderr
    (graph, kw), = calls
    # the FP16 graph was an intermediate in a temporary folder (issue 8): nothing written next to the input
    assert Path(graph).name == "model_fp16.onnx" and not Path(graph).exists() and not (tmp_path / "model_fp16.onnx").exists()
    options = kw["options"]
    assert options.precision == "fp16" and options.opt_shape == (1, 3, 64, 64) and options.workspace_gib == 2.0
    assert kw["output"] == str(tmp_path / "model.plan") and result.stdout.strip() == str(tmp_path / "model.plan")


def test_trt_timing_cache_guard(r18_onnx, tmp_path, monkeypatch):
    """--timing-cache: a new, empty or binary file reaches the build; a text file only with --force."""
    from fcnseg.export import tensorrt as trt_build
    from fcnseg.runtime.backends import tensorrt as trt_runtime

    specs = []
    monkeypatch.setattr(trt_runtime, "import_tensorrt", lambda library="auto": object())
    monkeypatch.setattr(trt_build, "build_engine_from_spec", lambda spec, output: specs.append(spec) or output)
    (tmp_path / "empty.cache").write_bytes(b"")
    (tmp_path / "binary.cache").write_bytes(b"\x01\x00\x00\x00trt")
    (tmp_path / "notes.txt").write_text("my notes\n")
    for name in ("new.cache", "empty.cache", "binary.cache"):
        result = run("trt", r18_onnx, "-o", tmp_path / "m.plan", "--timing-cache", tmp_path / name)
        assert result.exit_code == 0, result.stderr
    assert [Path(s.timing_cache).name for s in specs] == ["new.cache", "empty.cache", "binary.cache"]
    assert_one_line_error(run("trt", r18_onnx, "-o", tmp_path / "m.plan", "--timing-cache", tmp_path / "notes.txt"),
                          "is not an engine timing cache; pass --force")
    assert len(specs) == 3 and (tmp_path / "notes.txt").read_text() == "my notes\n"
    forced = run("trt", r18_onnx, "-o", tmp_path / "m.plan", "--timing-cache", tmp_path / "notes.txt", "--force")
    assert forced.exit_code == 0, forced.stderr


def test_trt_wrong_suffix_refused_before_conversion(r18_onnx, tmp_path, monkeypatch):
    """-o must end in .plan/.engine: checked before the FP16 step (which would have written --save-onnx)."""
    from fcnseg.export import fp16

    monkeypatch.setattr(fp16, "convert_fp16", lambda *a, **k: pytest.fail("the FP16 step ran"))
    result = run("trt", r18_onnx, "--fp16", "--save-onnx", tmp_path / "m16.onnx", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, "expected an engine path ending in .plan or .engine", "try -o")
    assert list(tmp_path.iterdir()) == []


def test_trt_reports_bad_shapes_even_without_tensorrt(r18_onnx):
    """Shape errors are the user's to fix whatever machine they are on: checked before TensorRT is looked for."""
    from click.testing import CliRunner

    from fcnseg.export.cli import main

    r = CliRunner().invoke(main, ["trt", str(r18_onnx), "--max-shape", "1x3x4096x4096"])
    assert r.exit_code == 2 and "expected heights and widths within [64, 2048]" in r.output
    r = CliRunner().invoke(main, ["trt", str(r18_onnx), "--min-shape", "1x3x600x600", "--max-shape", "1x3x512x512"])
    assert r.exit_code == 2 and "expected min <= opt <= max" in r.output
