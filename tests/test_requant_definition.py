"""Built layers' requantized outputs against their DEFINITION (issue #16), not another backend.

Thresholds: code(acc) = clip(R(sign(y)|y|^a/s)), y = relu/clip(acc·unit), evaluated exactly
(tests/exact_ref.py: 600-bit mpmath + sympy for ties) at acc = thr - 1 and thr of every
threshold, at the accumulator ends and 0, for every mode; formats whose boundaries are exact
rationals put ties on those accs on purpose. Rescale: m and sh from f = unit/s_out and the
output clamp(R(acc·m/2^sh) + zp) with Python ints, every mode, multiplier widths 1-31 with
constructed carries, nonzero zero points with ReLU. Each layer runs through the oracle and
the CPU backend; acc = bias[o] + x[b] (weights decode to 1) reaches any chosen value.
"""

import dataclasses
import os
from fractions import Fraction

import exact_ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nupes_sim import cpu, oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Linear
from nupes_sim.rounding import MODES, hash_words
from nupes_sim.tables import THRESHOLD_MODES

ONE = PowerFormat(2, True, 1.0, 1.0)  # weight code 1 decodes to 1 (F = 0)


def probe_layer(x_scale, out_fmt, acc, centers, **kw):
    """Linear with one output channel per center: acc[b, o] = bias[o] + x[b], x in [-128, 127]
    (x_lut = q, unit = x_scale); bias[o] = center clamped into the accumulator."""
    O = len(centers)
    layer = Linear.build(
        "probe",
        np.ones((O, 1), np.int64),
        ONE,
        UniformFormat(8, True, x_scale, 0),
        w_frac_bits=0,
        x_frac_bits=0,
        acc=acc,
        out_fmt=out_fmt,
        **kw,
    )
    lo, hi = acc.lo, acc.hi
    bias = np.array([min(max(int(c), lo), hi) for c in centers], np.int64)
    return dataclasses.replace(layer, bias=bias)


# NUPES_DEFINITION_CPU=0 checks the oracle only (quick mutation runs: no numba compile)
WITH_CPU = os.environ.get("NUPES_DEFINITION_CPU", "1") != "0"


def run_both(layer, x):
    a = oracle.run_layer(layer, x)
    if WITH_CPU:
        b = cpu.run_layer(layer, x)
        for k in a:
            assert (a[k] == b[k]).all(), k
    return a


def code_def(acc, unit, fmt, rounding, relu, clip_max):
    """The quantizer of §6(i) on the exact real y = acc·unit."""
    y = Fraction(int(acc)) * Fraction(unit)
    if relu:
        y = max(y, Fraction(0))
    if clip_max is not None:
        y = min(y, Fraction(clip_max))
    if y == 0:
        q = 0
    else:
        sgn = 1 if y > 0 else -1
        q = exact_ref.round_real(
            ((abs(y), 1 / Fraction(fmt.exponent)),), sgn / Fraction(float(fmt.scale[0])), rounding
        )
    return min(max(q, fmt.range.qmin), fmt.range.qmax)


# (exponent, scale, unit): exact-rational boundaries (ties land on integer accs) and generic ones
THR_FORMATS = [
    (1.0, 0.125, 1 / 64),
    (0.5, 0.25, 2.0**-10),
    (2.0, 0.125, 2.0**-12),
    (0.7, 0.05, 1e-3),
    (1.5, 0.3, 3e-3),
]


@pytest.mark.parametrize("rounding", THRESHOLD_MODES)
@pytest.mark.parametrize("a, s, unit", THR_FORMATS)
@pytest.mark.parametrize(
    "signed, relu, clip_max",
    [
        (True, False, None),
        (False, True, None),
        (True, True, None),
        (False, True, "mid"),
        (True, False, "tie"),
    ],
)
def test_thresholds_against_the_exact_quantizer(rounding, a, s, unit, signed, relu, clip_max):
    fmt = PowerFormat(4, signed, a, s)
    if clip_max == "mid":  # inside the code range: halfway between the decodes of codes 5 and 6
        clip_max = float((fmt.decode_real(np.array([5.0]))[0] + fmt.decode_real(np.array([6.0]))[0]) / 2)
    elif clip_max == "tie":  # exactly on a boundary when boundaries are rational: y_β of code 4
        clip_max = float((s * 3.5) ** (1 / a))
    acc = Accumulator(20, "wrap")
    probe = probe_layer(unit, fmt, acc, [0], requant_rounding=rounding, relu=relu, clip_max=clip_max)
    thr = probe.requant.thr[0]
    assert (np.diff(thr) >= 0).all()
    if clip_max is not None and clip_max < 6:
        assert probe.requant.qmax < fmt.range.qmax  # the clip really is inside the range
    centers = sorted({int(t) for t in thr} | {acc.lo, acc.hi, 0})
    layer = probe_layer(unit, fmt, acc, centers, requant_rounding=rounding, relu=relu, clip_max=clip_max)
    x = np.array([[-1], [0]])  # acc = center - 1 and center
    out = run_both(layer, x)
    accs = out["acc"]
    for (b, o), got in np.ndenumerate(out["out"]):
        want = code_def(accs[b, o], unit, fmt, rounding, relu, clip_max)
        assert got == want, (int(accs[b, o]), got, want)


def test_ties_are_exercised():
    """The exact-rational formats above put accs exactly on boundaries (so a tie rule sent to
    the wrong code is seen): a = 1, s = 1/8, unit = 1/64 has z = acc/8, ties at acc = 8c - 4."""
    fmt = PowerFormat(4, False, 1.0, 0.125)
    for rounding in ("half_even", "half_away", "half_up"):
        probe = probe_layer(1 / 64, fmt, Accumulator(16, "wrap"), [0], requant_rounding=rounding)
        t = probe.requant.thr[0]
        tie_accs = [8 * c - 4 for c in range(1, 16)]
        assert all(ta in (int(v), int(v) - 1) for ta, v in zip(tie_accs, t))


@pytest.mark.parametrize("width", [8, 10])
@pytest.mark.parametrize("rounding", ["half_even", "floor", "ceil"])
def test_saturated_accumulator_against_the_definition(width, rounding):
    """Thresholds beyond the accumulator clamp to acc_max + 1 (never reached) and acc_min: a
    saturated sum at acc_max/acc_min gets the code of its own value."""
    fmt = PowerFormat(4, True, 0.7, 0.05)
    acc = Accumulator(width, "saturate")
    unit = 0.15 / 2 ** (width - 1)  # |y| <= 0.15: codes beyond ±6 (y_β ≈ ±0.2) are out of reach
    layer = probe_layer(unit, fmt, acc, [acc.hi, acc.lo, acc.hi - 3, acc.lo + 3], requant_rounding=rounding)
    assert (layer.requant.thr[0] == acc.hi + 1).any() and (layer.requant.thr[0] == acc.lo).any()
    x = np.array([[127], [-128], [0], [5], [-5]])
    out = run_both(layer, x)
    assert out["acc"].max() == acc.hi and out["acc"].min() == acc.lo
    for (b, o), got in np.ndenumerate(out["out"]):
        assert got == code_def(out["acc"][b, o], unit, fmt, rounding, False, None)


def ref_round_shift(x, s, mode, r):
    """§7 with Python ints and Fractions (independent of primitives and oracle)."""
    if s == 0:
        return x
    fr = Fraction(x, 2**s)
    fl = fr.numerator // fr.denominator
    d = fr - fl
    h = Fraction(1, 2)
    name = {v: k for k, v in MODES.items()}[mode]
    if name == "double_round":  # TOSA apply_scale_32, double_round
        if s <= 31:
            return fl + (d >= h)
        return (x + 2 ** (s - 1) + (2**30 if x >= 0 else -(2**30))) // 2**s
    if name == "stochastic":
        rem = x - fl * 2**s
        return fl + (rem > (r >> (32 - s)) if s <= 32 else (rem >> (s - 32)) > r)
    up = {
        "floor": False,
        "ceil": d > 0,
        "toward_zero": d > 0 and x < 0,
        "half_up": d >= h,
        "half_away": d > h or (d == h and x >= 0),
        "half_even": d > h or (d == h and fl % 2 == 1),
    }[name]
    return fl + int(up)


def multiplier_def(f, mb):
    """m, sh of §6(ii) from the exact f."""
    e = 0
    while Fraction(2) ** (e + 1) <= f:
        e += 1
    while Fraction(2) ** e > f:
        e -= 1
    sh = mb - 1 - e
    t = f * 2**sh
    m = int(t) + (t - int(t) > Fraction(1, 2) or (t - int(t) == Fraction(1, 2) and int(t) % 2 == 1))
    if m == 2**mb:
        m, sh = 2 ** (mb - 1), sh - 1
    return m, sh


@settings(max_examples=60)
@given(
    mb=st.integers(1, 31),
    e=st.integers(-30, 8),
    carry=st.booleans(),
    frac=st.integers(0, 2**20),
    zp=st.integers(-100, 100),
    relu=st.booleans(),
    mode=st.sampled_from(sorted(MODES)),
    centers=st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=4),
)
def test_rescale_against_the_exact_rational_definition(mb, e, carry, frac, zp, relu, mode, centers):
    # f = (2^mb - 1/4)·2^(e-mb+1) rounds to 2^mb (a carry); else a generic f in [2^e, 2^(e+1))
    if carry:
        f = (Fraction(2**mb) - Fraction(1, 4)) * Fraction(2) ** (e - mb + 1)
    else:
        f = Fraction(2) ** e * (1 + Fraction(frac, 2**20))
    fmt = UniformFormat(8, True, 1.0, zp)
    acc = Accumulator(24, "wrap")
    try:
        layer = probe_layer(
            float(f), fmt, acc, centers, requant_rounding=mode, relu=relu, mult_bits=mb, seed=9, tensor_id=5
        )
    except ValueError as err:  # refused only when sh would leave [0, 62] or acc·m could reach 2^62
        m, sh = multiplier_def(f, mb)
        assert sh < 0 or sh > 62 or (sh == -1 and carry) or "63" in str(err), err
        return
    rq = layer.requant
    m, sh = multiplier_def(f, mb)
    assert (int(rq.multiplier[0]), int(rq.shift[0])) == (m, sh)
    assert 2 ** (mb - 1) <= m < 2**mb
    x = np.array([[-128], [-1], [0], [1], [127], [64]])
    out = run_both(layer, x)
    accs = out["acc"]
    words = hash_words(9, 5, np.arange(accs.size)).reshape(accs.shape)
    qmin = max(-128, zp) if relu else -128
    for (b, o), got in np.ndenumerate(out["out"]):
        y = ref_round_shift(int(accs[b, o]) * m, sh, MODES[mode], int(words[b, o])) + zp
        assert got == min(max(y, qmin), 127), (int(accs[b, o]), m, sh, mode)
