"""Requantization on the CPU (ARITHMETIC.md §6): thresholds and rescale, row = channel."""

import numpy as np
from numba import prange

from .. import primitives as P
from ..tables import Rescale, Thresholds
from .jit import kernel
from .kernels import count_ge, hash32, rescale


@kernel(parallel=True)
def _requant_thresholds(v, thr, inner, nch, qmin, monotone):
    out = np.empty(v.size, np.int64)
    R, n = thr.shape
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        if monotone:
            c = count_ge(v[i], thr, row, n)
        else:  # not a valid (non-decreasing) table: count entries <= v one by one, as the oracle
            c = 0
            for j in range(n):
                if v[i] >= thr[row, j]:
                    c += 1
        out[i] = qmin + c
    return out


@kernel(parallel=True)
def _requant_rescale(v, mult, shift, lim, zp, lo, hi, mode, seed, tensor_id, inner, nch):
    """primitives.rescale per element; elements outside its |v*m| < 2^62 precondition are
    flagged (out = 0, flag = 1): the caller refuses them (layers prevent them)."""
    out = np.empty(v.size, np.int64)
    flag = np.zeros(v.size, np.uint8)
    R = mult.shape[0]
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        x = v[i]
        if x <= lim[row] and x >= -lim[row]:
            r = hash32(seed, tensor_id, i) if mode == P.STOCHASTIC else 0
            out[i] = rescale(x, mult[row], shift[row], zp, lo, hi, mode, r)
        else:
            out[i] = 0
            flag[i] = 1
    return out, flag


def monotone_thresholds(requant, nch):
    """(thr int64, True) when `requant` is a non-decreasing Thresholds table with one row or
    >= nch rows and at least one column (what the fused output pass can apply), else (None, False)."""
    if not isinstance(requant, Thresholds):
        return None, False
    t = np.asarray(requant.thr)
    if t.ndim == 2 and t.dtype.kind in "iu" and (t.shape[0] == 1 or t.shape[0] >= nch) and t.shape[1] > 0:
        t = np.ascontiguousarray(t, np.int64)
        if t.shape[1] < 2 or (np.diff(t, axis=1) >= 0).all():
            return t, True
    return None, False


def requantize(values, requant, channel_axis, seed, tensor_id):
    """Same contract as oracle.requantize: row = channel if the table has several rows."""
    if requant is None:
        return values.copy()
    shape = values.shape
    nch = shape[channel_axis] if values.ndim else 1
    inner = int(np.prod(shape[channel_axis + 1 :])) if values.ndim else 1
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if isinstance(requant, Thresholds):
        thr = np.ascontiguousarray(requant.thr, dtype=np.int64)
        if thr.ndim != 2 or (thr.shape[0] != 1 and thr.shape[0] < nch and v.size):
            raise IndexError(f"thresholds with {thr.shape[0]} rows cannot requantize {nch} channels")
        monotone = bool(thr.shape[1] < 2 or (np.diff(thr, axis=1) >= 0).all())
        out = _requant_thresholds(v, thr, max(inner, 1), max(nch, 1), requant.qmin, monotone)
        return out.reshape(shape)
    assert isinstance(requant, Rescale)
    mult = np.ascontiguousarray(requant.multiplier, dtype=np.int64).reshape(-1)
    shift = np.ascontiguousarray(requant.shift, dtype=np.int64).reshape(-1)
    if (mult.shape[0] != 1 and mult.shape[0] < nch and v.size) or shift.shape[0] < mult.shape[0]:
        raise IndexError(f"rescale with {mult.shape[0]} multipliers cannot requantize {nch} channels")
    # lim[row]: |x| <= lim  =>  |x*m| <= 2^62 - 1 (rescale's precondition), and 0 <= shift <= 62
    # (round_shift's). Rows violating the shift range get lim = -1: every element is flagged.
    lim = np.empty(mult.shape[0], np.int64)
    for r in range(mult.shape[0]):
        m, s = int(mult[r]), int(shift[r])
        lim[r] = -1 if not 0 <= s <= 62 else ((2**62 - 1) // abs(m) if m else 2**62 - 1)
    out, flag = _requant_rescale(
        v,
        mult,
        shift,
        lim,
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
        seed,
        tensor_id,
        max(inner, 1),
        max(nch, 1),
    )
    if flag.any():  # layers refuse such requantizers at construction (_check_requant_input)
        raise ValueError("rescale input beyond its |acc·m| < 2^62 precondition; the layer was not validated")
    return out.reshape(shape)
