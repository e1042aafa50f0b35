"""Host rounding (rounding.round_float) against an exact-rational reference, exhaustively on
the floats where float64 fraction arithmetic is fragile: every float within 4 ulp of each
half-integer and integer in [-1000, 1000], and floats in (-1, 0) (issue #15 item 1)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Linear
from nupes_sim.rounding import HOST_MODES, random_words, round_float
from nupes_sim.tables import decode_table


def ref_round(x, mode, r=0):
    """docs/ARITHMETIC.md §3 on the exact value of a float: f = floor(x), d = x - f."""
    v = Fraction(float(x))
    f = math.floor(v)
    d = v - f
    h = Fraction(1, 2)
    up = {
        "floor": False,
        "ceil": d > 0,
        "toward_zero": d > 0 and v < 0,
        "half_up": d >= h,
        "half_away": d > h or (d == h and v > 0),
        "half_even": d > h or (d == h and f % 2),
        "stochastic": d * 2**32 > r,
    }[mode]
    return f + int(up)


def _neighbours(points, n=4):
    out = []
    for p in points:
        lo = hi = float(p)
        out.append(lo)
        for _ in range(n):
            lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
            out += [lo, hi]
    return np.array(out)


def fragile_floats():
    k = np.arange(-1000, 1001)
    near = _neighbours(np.concatenate([k + 0.5, k]))
    rng = np.random.default_rng(15)
    inside = np.concatenate(
        [
            -rng.random(20000),
            -rng.random(2000) * 2.0**-30,
            -(2.0 ** -np.arange(1, 1075)),
            [-0.49999999999999994, -0.5, np.nextafter(-0.5, 0), np.nextafter(-1.0, 0)],
        ]
    )
    return np.concatenate([near, inside, -inside])


@pytest.mark.parametrize("mode", HOST_MODES)
def test_round_float_exhaustive_near_half_integers_and_in_minus_one_zero(mode):
    x = fragile_floats()
    words = random_words(7, 3, x.size)
    got = round_float(x, mode, seed=7, tensor_id=3)
    want = [ref_round(v, mode, int(r)) for v, r in zip(x, words)]
    bad = [(float(v), int(g), w) for v, g, w in zip(x, got, want) if g != w]
    assert not bad, bad[:5]


def test_half_away_issue_example():
    assert round_float(np.array([-0.49999999999999994]), "half_away").tolist() == [0]


def test_stochastic_negative_fraction_just_above_the_word():
    """x in (-1/2, 0) whose exact fraction 1 - |x| lies 2^-54 above r/2^32: float64 computes
    1 - |x| = r/2^32 exactly, which would not round up; the exact rule rounds up to 0."""
    for i in range(64):
        r = int(random_words(1, 2, i + 1)[i])
        if 2**31 < r < 3 * 2**30:
            break
    x = -np.nextafter(1.0 - r / 2**32, 0.0)
    assert Fraction(1) - Fraction(-x) > Fraction(r, 2**32)
    words = np.zeros(i + 1, np.int64)
    words[i] = r
    arr = np.zeros(i + 1)
    arr[i] = x
    assert round_float(arr, "stochastic", words=words)[i] == 0
    assert round_float(arr, "stochastic", seed=1, tensor_id=2)[i] == 0


def test_half_away_lut_is_sign_symmetric_and_cancels():
    """The issue's layer: lut[-8] = -lut[8], and weights [8, -8] on equal inputs sum to 0."""
    wf = PowerFormat(8, True, 0.7, 2.0**-10)
    t = decode_table(wf, 9, "half_away")
    assert (t.lut[0] == -t.lut[0][::-1]).all()
    xf = UniformFormat(8, True, 1.0, 0)
    layer = Linear.build(
        "l",
        np.array([[8, -8]]),
        wf,
        xf,
        w_frac_bits=9,
        x_frac_bits=0,
        rounding="half_away",
        acc=Accumulator(32, "wrap"),
    )
    x = np.array([[5, 5], [-128, -128], [127, 127]])
    assert oracle.run_layer(layer, x)["acc"].tolist() == [[0], [0], [0]]


def test_double_round_is_not_a_host_rounding():
    with pytest.raises(ValueError, match="only to rescale"):
        round_float(np.array([0.5]), "double_round")
