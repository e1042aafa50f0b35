"""Host tables: every LUT entry, every threshold and multiplier checked exhaustively."""

from fractions import Fraction

import exact_ref
import numpy as np
import pytest

from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.rounding import MODES, round_float
from nupes_sim.tables import bias_table, decode_table, product_table, rescale_table, threshold_table

HALF_MODES = ["half_even", "half_away", "half_up"]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("a", [0.25, 0.7, 1.0, 3.0])
@pytest.mark.parametrize("rounding", HALF_MODES + ["floor", "ceil", "toward_zero"])
def test_decode_lut_every_entry(bits, a, rounding):
    """Every entry equals the independent 600-bit generator (tests/exact_ref.py), i.e. is the
    correctly rounded real R(sign(q)(s|q|)^(1/a)·2^F) (ARITHMETIC.md §3)."""
    f = PowerFormat(bits, True, a, np.array([0.05, 1.3]), "channel")
    t = decode_table(f, 10, rounding)
    q = f.range.all_codes()
    for row, s in enumerate(f.scale):
        want = [
            exact_ref.round_real(((Fraction(float(s)) * abs(int(c)), a),), int(np.sign(c)) * 2**10, rounding)
            for c in q
        ]
        assert t.lut[row].tolist() == want
        if rounding in ("half_even", "half_away", "toward_zero"):
            assert (t.lut[row] == -t.lut[row][::-1]).all()  # sign symmetric
    assert t.unit == 2.0**-10


def test_half_modes_differ_only_on_ties():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 0.51])
    assert round_float(x, "half_even").tolist() == [0, 2, 2, 0, -2, -2, 0, 1]
    assert round_float(x, "half_away").tolist() == [1, 2, 3, -1, -2, -3, 0, 1]
    assert round_float(x, "half_up").tolist() == [1, 2, 3, 0, -1, -2, 0, 1]
    assert round_float(x, "toward_zero").tolist() == [0, 1, 2, 0, -1, -2, 0, 0]


def test_uniform_decode_table_is_exact_affine():
    u = UniformFormat(8, True, 0.02, -3)
    t = decode_table(u, 4)
    q = u.range.all_codes()
    assert (t.lut[0] == (q + 3) * 16).all()
    assert t.unit == 0.02 / 16


@pytest.mark.parametrize("wbits, xbits", [(2, 2), (4, 8), (8, 8)])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_product_table_every_entry(wbits, xbits, granularity):
    """Every entry of the product table (by product and pair) against the exact real product
    in table LSBs; per-tensor/channel weight scales are factored out into channel_factor."""
    scales = {"tensor": 0.11, "channel": np.array([0.11, 0.7]), "group": np.array([[0.11, 0.7], [0.3, 0.05]])}
    wf = PowerFormat(
        wbits, True, 0.6, scales[granularity], granularity, group_size=2 if granularity == "group" else 0
    )
    mw = wf.range.max_magnitude
    for a_x in (0.6, 0.6000001):
        xf = PowerFormat(xbits, False, a_x, 0.02)
        t = product_table(wf, xf, 14)
        assert t.by_product == (a_x == 0.6)
        mx = xf.range.max_magnitude
        rows = wf.scale.reshape(-1) if granularity == "group" else np.ones(1)
        if granularity != "group":
            assert np.allclose(t.channel_factor, wf.scale.reshape(-1) ** (1 / 0.6), rtol=1e-15)
        else:
            assert t.channel_factor is None
        assert t.lut.shape[0] == len(rows)
        for r, sw in enumerate(rows):
            for m in range(mw + 1):
                for n in range(mx + 1):
                    exact = (sw * m) ** (1 / 0.6) * (0.02 * n) ** (1 / a_x) * 2.0**14
                    idx = m * n if t.by_product else m * (mx + 1) + n
                    assert abs(t.lut[r, idx] - exact) <= 0.5 + 1e-12 * exact  # + float64 pow error


def _float_code(acc, unit, fmt, rounding, relu, clip_max):
    y = acc * unit
    if relu:
        y = max(y, 0.0)
    if clip_max is not None:
        y = min(y, clip_max)
    return int(fmt.encode(np.array([y]), rounding)[0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("rounding", ["half_even", "half_away", "half_up", "floor", "ceil", "toward_zero"])
def test_every_threshold_against_the_float_quantizer(bits, signed, rounding):
    """thr[j] is the first acc with code >= qmin+1+j: check code(thr) and code(thr - 1).

    Skipped only where the float boundary y_beta/unit is within 2^-40 (relative) of the
    integer threshold, as documented in ARITHMETIC.md §6."""
    for a, s, unit, relu, clip_max in (
        (0.6, 0.05, 1e-4, False, None),
        (1.0, 0.1, 0.01, True, None),
        (2.5, 0.3, 3e-3, True, 6.0),
    ):
        fmt = PowerFormat(bits, signed, a, s)
        tab = threshold_table(unit, fmt, 32, rounding, relu, clip_max)
        thr = tab.thr[0]
        assert (np.diff(thr) >= 0).all()
        checked = 0
        for j, t in enumerate(thr):
            code = tab.qmin + 1 + j
            for acc, want_ge in ((int(t), True), (int(t) - 1, False)):
                got = _float_code(acc, unit, fmt, rounding, relu, clip_max)
                z = np.sign(acc * unit) * abs(acc * unit) ** a / s
                near = min(abs(z - (k + 0.5)) for k in range(-300, 300)) < 1e-9 * max(1, abs(z)) or min(
                    abs(z - k) for k in range(-300, 300)
                ) < 1e-9 * max(1, abs(z))
                if near:
                    continue
                checked += 1
                assert (min(max(got, tab.qmin), tab.qmax) >= code) == want_ge, (a, j, acc, got, code)
        assert checked >= len(thr)


def test_threshold_worked_example():
    # y = acc/64; a = 1, s = 1/8, 4-bit unsigned, half_up: code c needs y >= (c - 1/2)/8,
    # i.e. acc >= 8c - 4 (binary-exact values, so float64 computes the boundaries exactly).
    tab = threshold_table(1 / 64, PowerFormat(4, False, 1.0, 0.125), 16, "half_up")
    assert tab.thr[0].tolist() == [8 * c - 4 for c in range(1, 16)]
    # half_even: the tie at acc = 8c - 4 belongs to the upper code only when c is even
    tab = threshold_table(1 / 64, PowerFormat(4, False, 1.0, 0.125), 16, "half_even")
    assert tab.thr[0].tolist() == [8 * c - 4 + (c % 2) for c in range(1, 16)]
    # decimal values are not binary-exact and each float64 counts as its exact binary value:
    # 0.1 = 0.1000000000000000055.., 0.01 = 0.01000000000000000020.., so y_β/unit for code 1
    # is 0.05000000000000000277../0.01000000000000000020.. = 5.00000000000000017.. > 5 and the
    # threshold is 6 (5·unit is below the boundary); float64 division gives exactly 5.0.
    tab = threshold_table(0.01, PowerFormat(4, False, 1.0, 0.1), 16, "half_up")
    assert tab.thr[0][:2].tolist() == [6, 16]


def test_threshold_rejects_stochastic():
    with pytest.raises(ValueError, match="stochastic"):
        threshold_table(0.01, PowerFormat(4, False, 1.0, 0.1), 16, "stochastic")


def test_rescale_multiplier_accuracy():
    for f in (1e-6, 0.0123, 0.5, 0.999999, 1.0, 3.7):
        r = rescale_table(f * 0.1, UniformFormat(8, True, 0.1, 0), 32, 31)
        m, sh = int(r.multiplier[0]), int(r.shift[0])
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0**-sh - f) <= 2.0 ** -(sh + 1)
    with pytest.raises(ValueError, match="exceeds 63"):
        rescale_table(0.1, UniformFormat(8, True, 0.1, 0), 48, 31)


def test_bias_table_checks_range():
    assert bias_table([1.0, -2.5], 0.5, 16).tolist() == [2, -5]
    with pytest.raises(ValueError, match="accumulator range"):
        bias_table([1e6], 1e-3, 16)


def test_rounding_names():
    assert set(MODES) == {
        "half_even",
        "half_away",
        "half_up",
        "floor",
        "ceil",
        "toward_zero",
        "stochastic",
        "double_round",
    }
    with pytest.raises(ValueError, match="rounding='nearest'"):
        decode_table(PowerFormat(4, True, 0.5, 1.0), 8, "nearest")
