"""Requantization on the CPU (ARITHMETIC.md §6): thresholds and rescale, row = channel."""

import numpy as np
from numba import prange

from .. import primitives as P
from ..tables import Rescale, Thresholds
from .jit import kernel
from .kernels import count_ge, hash32, rescale


@kernel(parallel=True)
def _requant_thresholds(v, thr, inner, nch, qmin):
    """qmin + #{j : v >= thr[row, j]} by binary search (Thresholds rows are non-decreasing,
    checked at construction)."""
    out = np.empty(v.size, np.int64)
    R, n = thr.shape
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        out[i] = qmin + count_ge(v[i], thr, row, n)
    return out


@kernel(parallel=True)
def _requant_rescale(v, mult, shift, zp, lo, hi, mode, seed, tensor_id, inner, nch):
    """primitives.rescale per element; its |v*m| < 2^62 precondition holds for every value the
    layer's accumulator can produce (layers.base.check_requant_input, at construction)."""
    out = np.empty(v.size, np.int64)
    R = mult.shape[0]
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        r = hash32(seed, tensor_id, i) if mode == P.STOCHASTIC else 0
        out[i] = rescale(v[i], mult[row], shift[row], zp, lo, hi, mode, r)
    return out


def monotone_thresholds(requant):
    """(thr int64, True) when `requant` is a Thresholds table with at least one column (what
    the fused output pass applies), else (None, False). Layers guarantee 1 or O rows."""
    if isinstance(requant, Thresholds) and requant.thr.shape[1] > 0:
        return requant.thr, True
    return None, False


INDEX_BITS = 10  # buckets of threshold_index per row


def threshold_index(thr):
    """(R, 1 + 2^INDEX_BITS) int64 bucket index of a non-decreasing threshold table for
    kernels.count_ge_ix (its docstring has the proof): per row the shift s with
    (thr[-1] - thr[0]) >> s < 2^INDEX_BITS, then #{thr <= t0 + (b << s) - 1} per bucket b.
    A row with fewer than 16 entries, |thr[0]| >= 2^61 or a span >= 2^61 gets s = -1 (binary
    search); so t0 + (b << s) stays below 2^62 in magnitude."""
    R, n = thr.shape
    NB = 1 << INDEX_BITS
    tix = np.zeros((R, 1 + NB), np.int64)
    for r in range(R):
        t0 = int(thr[r, 0]) if n else 0
        span = int(thr[r, n - 1]) - t0 if n else 0
        if n < 16 or abs(t0) >= 2**61 or span >= 2**61:
            tix[r, 0] = -1
            continue
        sh = max(0, span.bit_length() - INDEX_BITS)
        lo = t0 + (np.arange(NB, dtype=np.int64) << np.int64(sh)) - 1
        tix[r, 0] = sh
        tix[r, 1:] = np.searchsorted(thr[r], lo, side="right")
    return tix


def requantize(values, requant, channel_axis, seed, tensor_id):
    """Same contract as oracle.requantize: row = channel if the table has several rows (the
    layer's constructor guarantees 1 row or one per channel)."""
    if requant is None:
        return values.copy()
    shape = values.shape
    nch = shape[channel_axis] if values.ndim else 1
    inner = int(np.prod(shape[channel_axis + 1 :])) if values.ndim else 1
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if isinstance(requant, Thresholds):
        out = _requant_thresholds(v, requant.thr, max(inner, 1), max(nch, 1), requant.qmin)
        return out.reshape(shape)
    assert isinstance(requant, Rescale)
    out = _requant_rescale(
        v,
        requant.multiplier,
        requant.shift,
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
        seed,
        tensor_id,
        max(inner, 1),
        max(nch, 1),
    )
    return out.reshape(shape)
