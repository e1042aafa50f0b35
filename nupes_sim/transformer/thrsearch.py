"""Threshold requantization (ARITHMETIC.md §6) over a whole stage on the CPU, by a directory.

code = qmin + #{j : v >= thr[j]} for one non-decreasing row thr[0..n-1]. The binary search
of primitives.count_ge is a chain of ~8 dependent loads and mispredicted branches per value
(~45 ns measured); this finds the same count with one directory load and a short scan.

Directory (host, per row): t0 = thr[0], tl = thr[n-1], a shift s with
nb = ((tl - 1 - t0) >> s) + 1 <= 2^DIR_BITS, and cnt[b] = #{j : thr[j] < t0 + (b << s)}.
Claim (D): for every int64 v, count(v) = #{j : thr[j] <= v} equals
- 0 if v < t0 and n if v >= tl (thr non-decreasing);
- otherwise, with b = (v - t0) >> s (0 <= b < nb): scan from pos = cnt[b] while
  pos < n and thr[pos] <= v. Every j < cnt[b] has thr[j] < t0 + (b << s) <= v (counted); every
  j >= cnt[b] has thr[j] >= t0 + (b << s), and the scan stops at the first thr[pos] > v, after
  which all are > v (non-decreasing). So pos = count(v).
No int64 operation overflows: the directory is used only when tl - t0 < 2^62 (host check,
Python integers), so 0 <= v - t0 < tl - t0 in the kernel; otherwise count_ge runs.
"""

import weakref

import numpy as np
from numba import njit, prange

from ..primitives import count_ge as _count_ge

DIR_BITS = 14
_count_ge = njit(_count_ge)
_CACHE = {}  # id(Thresholds) -> (weakref, directory): the tables are frozen


def directory(requant):
    """(t0, tl, s, cnt int64) of a one-row Thresholds, or None when (D)'s width check fails
    (or the row is empty)."""
    hit = _CACHE.get(id(requant))
    if hit is not None and hit[0]() is requant:
        return hit[1]
    thr = np.asarray(requant.thr[0], np.int64)
    out = None
    if thr.size and int(thr[-1]) - int(thr[0]) < 2**62:
        t0, tl = int(thr[0]), int(thr[-1])
        span = max(tl - 1 - t0, 0)
        s = max(span.bit_length() - DIR_BITS, 0)
        nb = (span >> s) + 1
        starts = t0 + (np.arange(nb, dtype=np.int64) << s)
        out = (t0, tl, s, np.searchsorted(thr, starts, side="left").astype(np.int64))
    _CACHE[id(requant)] = (weakref.ref(requant), out)
    return out


@njit(parallel=True)
def _by_directory(v, thr, qmin, t0, tl, s, cnt, out):
    n = thr.size
    for i in prange(v.size):
        x = v[i]
        if x < t0:
            c = 0
        elif x >= tl:
            c = n
        else:
            c = cnt[(x - t0) >> s]
            while c < n and thr[c] <= x:
                c += 1
        out[i] = qmin + c


@njit(parallel=True)
def _by_search(v, thr2, qmin, out):
    for i in prange(v.size):
        out[i] = qmin + _count_ge(v[i], thr2, 0, thr2.shape[1])


def requantize(requant, v, out, use_directory=True):
    """out[i] = requant.qmin + count(v[i]) (flat int64 arrays) for a one-row Thresholds."""
    d = directory(requant) if use_directory else None
    thr2 = np.ascontiguousarray(requant.thr[:1], np.int64)
    if d is None:
        _by_search(v, thr2, requant.qmin, out)
    else:
        _by_directory(v, thr2[0], requant.qmin, *d, out)
    return out
