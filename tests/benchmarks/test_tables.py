from fcnseg.benchmarks.bench import Stats, parse_hw
from fcnseg.benchmarks.tables import format_table
from fcnseg.runtime.errors import FcnsegError

import pytest


def test_table_aligns_numbers_right_and_text_left():
    out = format_table(["name", "ms"], [["a", 1.5], ["longer", 12.25]]).splitlines()
    assert out[0].startswith("name") and out[2].endswith(" 1.50") and out[3].endswith("12.25")
    assert len({len(line) for line in out[2:]}) == 1


def test_stats_percentiles_in_ms():
    s = Stats.of([0.001 * i for i in range(1, 101)])
    assert s.min == pytest.approx(1.0) and s.max == pytest.approx(100.0)
    assert s.median == pytest.approx(50.5) and s.p90 == pytest.approx(90.1)


def test_parse_hw():
    assert parse_hw("375x500") == (375, 500)
    with pytest.raises(FcnsegError, match="520x520 \\(HxW\\)"):
        parse_hw("375")
