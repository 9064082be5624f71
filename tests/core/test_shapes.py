import pytest

from fcnseg.core.errors import FcnsegError
from fcnseg.core.shapes import parse_dims, parse_hw


def test_parse_dims_and_hw():
    assert parse_dims(" 2X3x97x131 ") == (2, 3, 97, 131)
    assert parse_hw("375x500") == (375, 500)


@pytest.mark.parametrize("text", ["", "520", "1x520x520", "0x5", "5x-1", "5.5x5", "5,5"])
def test_parse_hw_rejects(text):
    with pytest.raises(FcnsegError, match="expected a shape like 520x520"):
        parse_hw(text)
