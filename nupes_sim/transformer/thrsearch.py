"""Threshold requantization (ARITHMETIC.md §6) over a whole stage on the CPU.

code = qmin + #{j : v >= thr[j]} for one non-decreasing row thr. The binary search of
primitives.count_ge is a chain of ~8 dependent loads and mispredicted branches per value;
the CPU backend's bucket index (cpu.requant.threshold_index, read by cpu.kernels.count_ge_ix,
whose docstring has the proof that it gives count_ge's count for every int64 v) finds the
same count with one index load and a short scan. This module only applies that one
implementation to a transformer stage and keeps the index of each (frozen) table.
"""

import weakref

import numpy as np
from numba import prange

from ..cpu.jit import kernel
from ..cpu.kernels import count_ge, count_ge_ix
from ..cpu.requant import threshold_index

_CACHE = {}  # id(Thresholds) -> (weakref, (thr (1, n), index)): the tables are frozen


def _tables(requant):
    hit = _CACHE.get(id(requant))
    if hit is not None and hit[0]() is requant:
        return hit[1]
    thr = np.ascontiguousarray(requant.thr[:1], np.int64)
    tabs = (thr, threshold_index(thr) if thr.shape[1] else None)
    _CACHE[id(requant)] = (weakref.ref(requant), tabs)
    return tabs


@kernel(parallel=True)
def _by_index(v, thr, qmin, tix, out):
    n = thr.shape[1]
    for i in prange(v.size):
        out[i] = qmin + count_ge_ix(v[i], thr, 0, n, tix)


@kernel(parallel=True)
def _by_search(v, thr, qmin, out):
    n = thr.shape[1]
    for i in prange(v.size):
        out[i] = qmin + count_ge(v[i], thr, 0, n)


def requantize(requant, v, out, use_directory=True):
    """out[i] = requant.qmin + count(v[i]) (flat int64 arrays) for a one-row Thresholds;
    use_directory=False: the plain binary search (tests compare the two)."""
    thr, tix = _tables(requant)
    if tix is None or not use_directory:
        _by_search(v, thr, requant.qmin, out)
    else:
        _by_index(v, thr, requant.qmin, tix, out)
    return out
