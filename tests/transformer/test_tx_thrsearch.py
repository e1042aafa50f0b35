"""thrsearch (the CPU backend's bucket index applied to a stage) gives count_ge's codes for
every value, and the CPU transformer kernels give the oracle's stages with the threshold pass
off too."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_tx_cpu import same
from tx_strategies import ALL_CASES

from nupes_sim.tables import Thresholds
from nupes_sim.transformer import cpu as tcpu
from nupes_sim.transformer import thrsearch

I64 = np.iinfo(np.int64)


def probes(thr):
    """Every threshold, its neighbours, the int64 ends and a few values between."""
    t = thr.astype(object)
    v = {int(I64.min), int(I64.max), 0}
    for x in t:
        v.update((x - 1, x, x + 1))
    v.update((t[i] + t[i + 1]) // 2 for i in range(len(t) - 1))
    return np.array(sorted(x for x in v if I64.min <= x <= I64.max), np.int64)


def check(thr, qmin=-3):
    rq = Thresholds(np.asarray(thr, np.int64)[None, :], qmin, qmin + len(thr))
    v = probes(rq.thr[0])
    want = qmin + np.searchsorted(rq.thr[0], v, side="right")  # #{j : thr[j] <= v}
    for use in (True, False):
        out = np.empty_like(v)
        thrsearch.requantize(rq, v, out, use_directory=use)
        assert (out == want).all(), (use, v[out != want][:5], out[out != want][:5], want[out != want][:5])
    return int(thrsearch._tables(rq)[1][0, 0])  # the index's shift; -1: binary search


@st.composite
def rows(draw):
    n = draw(st.integers(1, 300))
    # spans up to past (D)'s 2^62 limit (Thresholds' own check needs differences < 2^63)
    span = draw(st.sampled_from([0, 1, 5, 300, 2**20, 2**40, 2**62 - 2, 2**62 + 5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo = -(2**61) - 3 if span > 2**61 else int(rng.integers(-(2**61), 2**61))
    steps = rng.integers(0, 3, n) if span < n else None
    if steps is not None:  # dense: duplicates and unit steps
        thr = lo + np.cumsum(steps)
    else:
        thr = np.sort(rng.integers(0, min(span, 2**63 - 1), n, dtype=np.int64) + np.int64(lo))
    if draw(st.booleans()):  # power-format-like: dense near the middle, a far "never reached" end
        thr[-1] = int(thr[-1]) + 2**40
    return np.sort(thr)


@given(rows())
def test_directory_equals_binary_search(thr):
    check(thr)


def test_directory_edges():
    assert check([5]) == -1  # short rows (< 16 entries) binary search
    assert check([7] * 20) == 0  # all equal: every value is below or at/after the row
    assert check([-(2**61)] + [0] * 15 + [2**61 - 1]) == -1  # |thr[0]| = 2^61: binary search
    assert check([-(2**60)] + [0] * 15 + [2**60]) == -1  # span 2^61: binary search
    assert check([-(2**60) + 1] + [0] * 15 + [2**60]) > 0  # span 2^61 - 1: the index
    assert check(list(range(-5000, 5000, 3)) + [2**50]) > 0  # a wide span: shift > 0, scans


@pytest.mark.parametrize("op", ["matmul", "softmax", "layernorm"])
def test_kernels_with_threshold_pass_off(op, monkeypatch):
    """On (the default) is test_tx_cpu's case; off, count_ge runs inside the kernels."""
    monkeypatch.setattr(tcpu, "THRESHOLD_PASS", False)

    @given(ALL_CASES[op]())
    def run(case):
        same(*case)

    run()
