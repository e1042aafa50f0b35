"""The bucket-indexed threshold count of the CPU output pass (kernels.count_ge_ix with
requant.threshold_index) equals primitives.count_ge for every row and value: ties, clusters,
one huge gap, the index limits (2^61) and v at every threshold, one either side, and the
int64 extremes."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from nupes_sim import primitives as P
from nupes_sim.cpu.kernels import count_ge_ix
from nupes_sim.cpu.requant import threshold_index

I64 = np.iinfo(np.int64)


@njit
def _counts(v, thr, row, tix):
    out = np.empty(v.size, np.int64)
    for i in range(v.size):
        out[i] = count_ge_ix(v[i], thr, row, thr.shape[1], tix)
    return out


def _check(thr):
    thr = np.ascontiguousarray(thr, np.int64)
    tix = threshold_index(thr)
    for r in range(thr.shape[0]):
        t = thr[r]
        near = np.concatenate([t, t[t > I64.min] - 1, t[t < I64.max] + 1])
        v = np.unique(np.concatenate([near, [I64.min, I64.max, 0, -1, 1]]))
        want = np.array([P.count_ge(int(x), thr, r, thr.shape[1]) for x in v])
        assert np.array_equal(_counts(v, thr, r, tix), want), (r, tix[r, 0])
    return tix


@st.composite
def rows(draw):
    n = draw(st.integers(1, 300))
    lo = draw(st.sampled_from([-(2**40), -1000, 0, 2**60 - 2**20, -(2**61) + 5]))
    steps = draw(st.lists(st.sampled_from([0, 0, 1, 2, 7, 1000, 2**20, 2**35]), min_size=n, max_size=n))
    t = lo + np.cumsum(np.array(steps, dtype=object))
    R = draw(st.integers(1, 3))
    return np.array([[int(x) + 3 * r for x in t] for r in range(R)], dtype=object)


@settings(max_examples=80, deadline=None)
@given(rows())
def test_indexed_count_equals_count_ge(thr):
    lo, hi = min(map(int, thr.ravel())), max(map(int, thr.ravel()))
    if lo < I64.min or hi > I64.max:
        return
    _check(thr.astype(np.int64))


def test_index_limits():
    """Spans and first entries at 2^61 - 1 use the index, at 2^61 binary search; short rows
    always binary search; every value is still counted exactly."""
    base = np.arange(20, dtype=np.int64) * 3
    assert _check(base[None, :])[0, 0] == 0  # span 57 < 2^10: shift 0
    assert _check(base[None, :15])[0, 0] == -1  # fewer than 16 entries
    wide = base.copy()
    wide[-1] = 2**61 - 1
    assert _check(wide[None, :])[0, 0] == 61 - 10
    wide[-1] = 2**61
    assert _check(wide[None, :])[0, 0] == -1
    far = base + 2**61  # first entry 2^61
    assert _check(far[None, :])[0, 0] == -1
    far = base + (2**61 - 1 - 57)
    assert _check(far[None, :])[0, 0] == 0
    neg = base - 2**61
    assert _check(neg[None, :])[0, 0] == -1
    ties = np.repeat(np.array([-5, 0, 0, 9, 2**40], np.int64), 40)
    _check(ties[None, :])
    dense_top = np.concatenate([[-(2**50)], np.arange(100, dtype=np.int64)])  # one bucket holds 100
    _check(dense_top[None, :])
