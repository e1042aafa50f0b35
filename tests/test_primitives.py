"""Scalar primitives (executed as plain Python here) against the exact-rational oracle.

The same functions are compiled by the CPU and CUDA backends, whose tests compare them to
the oracle through whole layers; here each primitive is checked exhaustively on small
ranges and on the boundary values 2^i - 1, 2^i, and the int64 limits.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit

from nupes_sim import oracle
from nupes_sim import primitives as P
from nupes_sim.rounding import MODES, hash_words

DETERMINISTIC = [m for n, m in MODES.items() if n != "stochastic"]


def boundary_ints(limit_bits=61):
    vals = {0, 1, -1}
    for i in range(1, limit_bits + 1):
        for v in (2**i - 1, 2**i, 2**i + 1):
            if v < 2**62:
                vals.update({v, -v})
    return sorted(vals)


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_round_shift_exhaustive_small(mode):
    for s in range(0, 9):
        for x in range(-600, 601):
            assert P.round_shift(x, s, mode, 0) == oracle.round_div_pow2(x, s, mode), (x, s, mode)


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_round_shift_boundaries(mode):
    for s in (1, 2, 31, 32, 33, 61, 62):
        for x in boundary_ints():
            assert P.round_shift(x, s, mode, 0) == oracle.round_div_pow2(x, s, mode), (x, s, mode)


def test_round_shift_worked_example():
    # docs/ARITHMETIC.md §7: -3 / 2 = -1.5
    want = {"half_even": -2, "half_away": -2, "half_up": -1, "floor": -2, "ceil": -1, "toward_zero": -1}
    for name, v in want.items():
        assert P.round_shift(-3, 1, MODES[name], 0) == v
    assert P.round_shift(5, 1, MODES["half_even"], 0) == 2
    assert P.round_shift(7, 1, MODES["half_even"], 0) == 4


@given(x=st.integers(-(2**62) + 1, 2**62 - 1), s=st.integers(0, 62), r=st.integers(0, 2**32 - 1))
def test_round_shift_stochastic_matches_oracle(x, s, r):
    assert P.round_shift(x, s, P.STOCHASTIC, r) == oracle.round_div_pow2(x, s, P.STOCHASTIC, r)


def test_stochastic_probability_is_exact_for_small_shifts():
    # Over all 2^s equally likely top-bit patterns of r, x/2^s rounds up exactly rem times.
    for s in range(1, 7):
        for x in range(-70, 71):
            ups = sum(P.round_shift(x, s, P.STOCHASTIC, t << (32 - s)) - (x >> s) for t in range(2**s))
            assert ups == x - ((x >> s) << s)
            mean = Fraction((x >> s) * 2**s + ups, 2**s)
            assert mean == Fraction(x, 2**s)  # unbiased


@given(a=st.integers(-(2**20), 2**20), b=st.integers(-(2**20), 2**20), width=st.integers(8, 22))
def test_sat_add_is_clamped_sum(a, b, width):
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    a = min(max(a, lo), hi)
    assert P.sat_add(a, b, lo, hi) == min(max(a + b, lo), hi)


def test_sat_add_int64_limits():
    lo, hi = -(2**63), 2**63 - 1
    big = 2**62 - 1
    assert P.sat_add(hi, big, lo, hi) == hi
    assert P.sat_add(lo, -big, lo, hi) == lo
    assert P.sat_add(hi - 5, 5, lo, hi) == hi
    assert P.sat_add(hi - 5, 4, lo, hi) == hi - 1
    assert P.sat_add(lo + 3, -3, lo, hi) == lo
    assert P.sat_add(hi, -big, lo, hi) == hi - big


@pytest.mark.parametrize("tile", [0, 1, 2, 3, 5])
def test_sat_step_is_the_oracle_accumulator(tile):
    """sat_step over a sequence (k ascending) gives oracle.accumulate's saturating result:
    every 8-bit-accumulator sequence of length <= 4 over products {-200, -128, -1, 0, 1, 127,
    200}, from the biases lo, -1, 0, hi (sequences that clamp inside a tile and across tiles)."""
    import itertools

    from nupes_sim.layers import Accumulator

    acc_cfg = Accumulator(8, "saturate", tile)
    lo, hi = acc_cfg.lo, acc_cfg.hi
    values = (-200, -128, -1, 0, 1, 127, 200)
    for n in range(0, 5):
        for seq in itertools.product(values, repeat=n):
            for bias in (lo, -1, 0, hi):
                a, part = bias, 0
                for k, p in enumerate(seq):
                    a, part = P.sat_step(a, part, p, k, n, tile, lo, hi)
                _, want = oracle.accumulate(np.array([seq], np.int64).reshape(1, n), bias, acc_cfg)
                assert a == int(want[0]), (seq, bias, tile)


def test_overflow_ids_follow_the_layer_modes():
    from nupes_sim.layers import OVERFLOW_MODES

    assert tuple(P.OVERFLOW_IDS) == OVERFLOW_MODES
    assert list(P.OVERFLOW_IDS.values()) == [P.WRAP, P.SATURATE, P.EXACT] == [0, 1, 2]


@pytest.mark.parametrize("width", [8, 9, 16, 31, 32, 33, 48, 62, 63, 64])
def test_wrap_boundaries(width):
    for x in boundary_ints(61) + [2**63 - 1, -(2**63)]:
        assert P.wrap(x, width) == oracle.wrap(x, width), (x, width)


def test_count_ge_against_direct_count():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(0, 12))
        thr = np.sort(rng.integers(-20, 20, (1, n)), axis=1)
        for v in range(-22, 23):
            assert P.count_ge(v, thr, 0, n) == int((thr[0] <= v).sum())


def test_count_ge_exhaustive_small():
    """Every non-decreasing row of length <= 7 over 4 values (with ties), every v around
    them, in a later row of the table: Python and the compiled kernel primitive alike."""
    from itertools import combinations_with_replacement

    from nupes_sim.cpu import prim

    for n in range(8):
        for row in combinations_with_replacement(range(4), n):
            thr = np.zeros((2, 8), np.int64)
            thr[1, :n] = row
            thr[1, n:] = -5  # beyond n: never read
            for v in range(-1, 5):
                want = sum(t <= v for t in row)
                assert P.count_ge(v, thr, 1, n) == want, (row, v)
                assert prim.count_ge(v, thr, 1, n) == want, (row, v)


@given(a=st.integers(0, 2**32 - 1), b=st.integers(0, 2**32 - 1))
def test_mul32(a, b):
    assert P.mul32(a, b) == (a * b) % 2**32


def test_hash32_numpy_twin_and_uniformity():
    idx = np.concatenate([np.arange(5000), [2**32 - 1, 2**32, 2**40 + 7, 2**62 - 1]]).astype(np.int64)
    for seed, tid in ((0, 0), (1, 0), (0, 1), (2**32 - 1, 12345)):
        words = hash_words(seed, tid, idx)
        assert [P.hash32(seed, tid, int(i)) for i in idx] == words.tolist()
    words = hash_words(7, 3, np.arange(65536))
    assert ((0 <= words) & (words < 2**32)).all()
    # chi-square over 256 buckets of the top byte: 255 d.o.f., p ~ 1e-6 at 370
    counts = np.bincount(words >> 24, minlength=256)
    chi2 = ((counts - 256.0) ** 2 / 256.0).sum()
    assert chi2 < 370
    # different seeds/tensors give different streams
    assert (hash_words(7, 4, np.arange(64)) != hash_words(7, 3, np.arange(64))).mean() > 0.9


# Stochastic rounding on its boundary: rounds up iff the compared fraction bits exceed r
# strictly (ARITHMETIC.md §7). Random draws meet equality with probability 2^-32, so these
# literal cases put the fraction exactly on r and one step above, in both branches (s <= 32:
# rem vs r >> (32 - s); s > 32: rem >> (s - 32) vs r) and both signs of x.
STOCHASTIC_EDGES = [  # (x, s, r, expected)
    ((3 << 8) + 0xAB, 8, 0xAB << 24, 3),
    ((3 << 8) + 0xAC, 8, 0xAB << 24, 4),
    (-(3 << 8) + 0xAB, 8, 0xAB << 24, -3),
    (-(3 << 8) + 0xAC, 8, 0xAB << 24, -2),
    ((7 << 32) + 1000, 32, 1000, 7),
    ((7 << 32) + 1001, 32, 1000, 8),
    ((2 << 33) + 2001, 33, 1000, 2),
    ((2 << 33) + 2002, 33, 1000, 3),
    ((5 << 40) + (12345 << 8) + 255, 40, 12345, 5),
    ((5 << 40) + (12346 << 8), 40, 12345, 6),
    (-(3 << 40) + (12345 << 8), 40, 12345, -3),
    (-(3 << 40) + (12346 << 8), 40, 12345, -2),
    (7 << 30, 62, 7, 0),
    (8 << 30, 62, 7, 1),
    ((1 << 1) + 1, 1, 2**31 - 1, 2),  # s = 1: r >> 31 = 0 < rem = 1: up
    ((1 << 1) + 1, 1, 2**31, 1),  # r >> 31 = 1 = rem: not up
]


@pytest.mark.parametrize("x, s, r, want", STOCHASTIC_EDGES)
def test_stochastic_rounding_on_its_boundary(x, s, r, want):
    fast = P.compile_all(njit)
    assert oracle.round_div_pow2(x, s, P.STOCHASTIC, r) == want
    assert P.round_shift(x, s, P.STOCHASTIC, r) == want
    assert fast.round_shift(x, s, P.STOCHASTIC, r) == want
