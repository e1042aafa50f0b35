"""Formats: exhaustive encode/decode over every code up to 8 bits, and input validation."""

import numpy as np
import pytest

from nupes_sim.formats import CodeRange, PowerFormat, UniformFormat

EXPONENTS = [0.1, 0.5, 0.73, 1.0, 1.9, 4.0]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("a", EXPONENTS)
def test_encode_decode_round_trip_every_code(bits, signed, a):
    for s in (1e-3, 0.37, 5.0):
        f = PowerFormat(bits, signed, a, s)
        q = f.range.all_codes()
        assert f.encode(f.decode_real(q)).tolist() == q.tolist()


@pytest.mark.parametrize("bits", range(2, 9))
def test_code_ranges(bits):
    r = CodeRange(bits, True)
    assert (r.qmin, r.qmax) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    r = CodeRange(bits, False)
    assert (r.qmin, r.qmax) == (0, 2**bits - 1)
    u = UniformFormat(bits, True, 1.0, 0)
    assert (u.range.qmin, u.range.qmax) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def test_encode_clips_and_rounds():
    f = PowerFormat(4, True, 0.5, 0.25)
    assert f.encode(np.array([0.3]))[0] == 2  # ARITHMETIC.md §1 worked example
    assert f.decode_real(np.array([2]))[0] == pytest.approx(0.25)
    assert f.encode(np.array([1e9, -1e9])).tolist() == [7, -7]
    assert f.encode(np.array([0.0])).tolist() == [0]


def test_decode_is_monotone_in_the_code():
    for a in EXPONENTS:
        f = PowerFormat(8, True, a, 0.01)
        v = f.decode_real(f.range.all_codes())
        assert (np.diff(v) > 0).all()


def test_group_scale_index():
    f = PowerFormat(4, True, 0.7, np.arange(1, 7, dtype=float).reshape(2, 3), "group", group_size=2)
    idx = f.scale_index((2, 6))
    assert idx.tolist() == [[0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bits=1, signed=True, exponent=0.5, scale=1.0), "bits=1"),
        (dict(bits=9, signed=True, exponent=0.5, scale=1.0), "bits=9"),
        (dict(bits=4, signed=True, exponent=0.0, scale=1.0), "exponent"),
        (dict(bits=4, signed=True, exponent=-1.0, scale=1.0), "exponent"),
        (dict(bits=4, signed=True, exponent=float("nan"), scale=1.0), "exponent"),
        (dict(bits=4, signed=True, exponent=float("inf"), scale=1.0), "exponent"),
        (dict(bits=4, signed=True, exponent=0.5, scale=float("nan")), "scale"),
        (dict(bits=4, signed=True, exponent=0.5, scale=float("inf")), "scale"),
        (dict(bits=4, signed=True, exponent=0.5, scale=0.0), "scale"),
        (dict(bits=4, signed=True, exponent=0.5, scale=[1.0, 2.0]), "scale"),
        (dict(bits=4, signed=True, exponent=0.5, scale=1.0, granularity="row"), "granularity"),
    ],
)
def test_bad_format_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PowerFormat(**kwargs)


def test_bad_types():
    with pytest.raises(TypeError, match="bits"):
        PowerFormat(4.0, True, 0.5, 1.0)
    with pytest.raises(TypeError, match="signed"):
        PowerFormat(4, 1, 0.5, 1.0)
    with pytest.raises(ValueError, match="zero_point"):
        UniformFormat(8, True, 0.1, 200)
