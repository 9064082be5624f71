"""Power per frame (``fcn-bench --power``): the tegrastats parser on recorded lines of Xavier, Nano/TX2, Orin and
Orin Nano, the INA3221 sysfs layouts, and ``fcn-bench --power`` end to end on recorded tegrastats output replayed
by a stand-in ``tegrastats`` executable on PATH."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fcnseg.benchmarks.cli import bench_main
from fcnseg.benchmarks.power import (SysfsMonitor, find_sysfs_rails, open_power_monitor, parse_tegrastats,
                                     total_power_mw)
from fcnseg.core.errors import FcnsegError
from fcnseg.core.metadata import ModelMetadata

DATA = Path(__file__).parent / "data"
NOT_POWER = ("RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ", "APE", "NVENC", "NVDEC", "VIC")


def recorded(name: str) -> list:
    return [line for line in (DATA / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


def now_mw(line: str, rail: str) -> float:
    """The rail's first number, read off the line's words (independent of the parser's regex)."""
    words = line.split()
    value = next(w for name, w in zip(words, words[1:]) if name == rail and "/" in w)
    return float(value.split("/")[0].replace("mW", ""))


@pytest.mark.parametrize("name,rails,input_rail", [
    ("tegrastats_xavier.txt", {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"}, None),
    ("tegrastats_orin.txt", {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, "VDD_IN"),
    ("tegrastats_orin_nano.txt", {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, "VDD_IN"),
])
def test_parser_on_recorded_lines(name, rails, input_rail):
    for line in recorded(name):
        parsed = parse_tegrastats(line)
        assert set(parsed) == rails and not set(parsed) & set(NOT_POWER)
        assert all(parsed[r] == now_mw(line, r) for r in rails)
        total, source = total_power_mw(parsed)
        if input_rail:
            assert (total, source) == (now_mw(line, input_rail), input_rail)
        else:   # AGX Xavier has no input rail: the rails add up
            assert total == sum(now_mw(line, r) for r in rails) and source.startswith("sum of ")


def test_parser_on_jetpack4_input_rails():
    nano, tx2 = recorded("tegrastats_jetpack4_input_rail.txt")
    assert total_power_mw(parse_tegrastats(nano)) == (now_mw(nano, "POM_5V_IN"), "POM_5V_IN")
    assert total_power_mw(parse_tegrastats(tx2)) == (now_mw(tx2, "VDD_IN"), "VDD_IN")
    assert set(parse_tegrastats(tx2)) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU",
                                          "VDD_SYS_DDR"}


def test_lines_without_power_give_nothing():
    assert parse_tegrastats("RAM 2673/7765MB (lfb 118x4MB) SWAP 0/3883MB (cached 0MB) IRAM 0/252kB(lfb 252kB)") == {}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_sysfs_layouts(tmp_path):
    """hwmon (JetPack 5+: mV x mA) and iio (JetPack 4: mW) laid out as on the devices."""
    hwmon = tmp_path / "ina3221/1-0040/hwmon/hwmon3"
    for n, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 4990, 300)], start=1):
        write(hwmon / f"in{n}_label", label)
        write(hwmon / f"in{n}_input", str(mv))
        write(hwmon / f"curr{n}_input", str(ma))
    iio = tmp_path / "ina3221x/6-0040/iio:device0"
    write(iio / "rail_name_0", "POM_5V_IN")
    write(iio / "in_power0_input", "2545")
    rails = find_sysfs_rails(str(tmp_path))
    assert {k: v() for k, v in rails.items()} == {"VDD_IN": 5000 * 1200 / 1e3, "VDD_CPU_GPU_CV": 4990 * 300 / 1e3,
                                                  "POM_5V_IN": 2545.0}
    with SysfsMonitor(rails, interval_ms=5) as monitor:
        monitor._stop.wait(0.2)
    samples = monitor.samples
    assert samples and all(total_power_mw(s.rails) == (6000.0, "VDD_IN") for s in samples)
    summary = monitor.summarize([(samples[0].t, samples[-1].t)], images=10)
    assert summary["avg_w"] == pytest.approx(6.0) and summary["samples"] == len(samples)
    assert summary["energy_mj_per_image"] == pytest.approx(6.0 * summary["seconds"] / 10 * 1e3)
    assert monitor.summarize([(0.0, 1e-9)], images=10)["avg_w"] is None


def test_neither_source_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FcnsegError, match="expected tegrastats on PATH or INA3221 power rails"):
        open_power_monitor(sysfs_root=str(tmp_path / "no_sys"))


FAKE_TEGRASTATS = """\
#!/bin/bash
# Replays recorded tegrastats lines, one every --interval ms, as JetPack's tegrastats prints them.
interval=1000
while [ $# -gt 0 ]; do case "$1" in --interval) interval=$2; shift ;; esac; shift; done
printf -v secs '%d.%03d' $((interval / 1000)) $((interval % 1000))
while true; do
  while IFS= read -r line; do
    case "$line" in "#"*|"") continue ;; esac
    echo "$line"
    sleep "$secs"
  done < "{fixture}"
done
"""


@pytest.fixture
def tiny_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in ModelMetadata(arch="tiny", num_classes=3, input_size=32).to_props().items():
        model.metadata_props.add(key=k, value=v)
    paths = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for p in paths:
        onnx.save(model, str(p))
    return paths


def test_fcn_bench_power_on_recorded_tegrastats(tmp_path, tiny_models, monkeypatch):
    lines = recorded("tegrastats_orin_nano.txt")[3:]            # the three with jetson_clocks
    fixture = tmp_path / "recorded.txt"
    fixture.write_text("\n".join(lines) + "\n")
    fake = tmp_path / "bin" / "tegrastats"
    fake.parent.mkdir()
    fake.write_text(FAKE_TEGRASTATS.format(fixture=fixture))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("tegrastats") == str(fake)
    out = tmp_path / "bench.json"
    args = ["--power", "--power-interval", "10", "--shape", "32x32", "--warmup", "1", "--iters", "40", "--rounds", "4",
            "--json", str(out)] + [a for m in tiny_models for a in ("--model", str(m))]
    result = CliRunner().invoke(bench_main, args)
    assert result.exit_code == 0, result.output
    print(result.output)
    assert "power: tegrastats every 10 ms, VDD_IN; nvpmodel: unknown (no nvpmodel)" in result.output
    expected_w = {now_mw(line, "VDD_IN") / 1e3 for line in lines}
    assert len(expected_w) == 1                                   # jetson_clocks: the input rail holds still
    for row in json.loads(out.read_text()):
        power = row["extra"]["power"]
        assert power["samples"] >= 1 and power["rail"] == "VDD_IN"
        assert power["images_per_s"] == pytest.approx(row["iters"] * row["batch"] / power["seconds"])
        assert power["avg_w"] == pytest.approx(next(iter(expected_w)))
        assert power["energy_mj_per_image"] == pytest.approx(
            power["avg_w"] * power["seconds"] / (row["iters"] * row["batch"]) * 1e3)


def test_fcn_bench_power_off_a_jetson_is_one_line(tmp_path, tiny_models, monkeypatch):
    if find_sysfs_rails():
        pytest.skip("this machine has INA3221 rails: --power works here")
    monkeypatch.setenv("PATH", str(tmp_path))     # no tegrastats
    result = CliRunner().invoke(bench_main, ["--power", "--model", str(tiny_models[0]), "--shape", "32x32"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: expected tegrastats on PATH or INA3221 power rails")
