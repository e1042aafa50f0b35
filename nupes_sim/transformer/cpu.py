"""Numba CPU kernels of the transformer ops: bit-exact twins of transformer.oracle.

Integers only (int64; no floats, no fastmath). The scalar rules are nupes_sim.primitives and
transformer.prims, compiled here with numba.njit from their own bytecode. Pure data movement
(embedding lookup, element-wise table lookup, layout ops) is NumPy indexing: no arithmetic.
"""

import numpy as np
from numba import njit, prange

from .. import primitives as P
from ..tables import Rescale, Thresholds
from . import oracle as _oracle
from . import prims
from .layers import (
    ElementwiseTable,
    Embedding,
    LayerNorm,
    MatMul,
    PadMask,
    Reshape,
    Slice,
    Softmax,
    Transpose,
)

_p = P.compile_all(njit)
_q = prims.compile_all(njit)
sat_add, wrap, hash32, count_ge, rescale = _p.sat_add, _p.wrap, _p.hash32, _p.count_ge, _p.rescale
round_div, isqrt = _q.round_div, _q.isqrt

MODE_EXACT, MODE_WRAP, MODE_SAT = 0, 1, 2
_MODES = {"exact": MODE_EXACT, "wrap": MODE_WRAP, "saturate": MODE_SAT}
RQ_NONE, RQ_THR, RQ_RESCALE = 0, 1, 2


# ---- requantization of a flat int64 array (one per-tensor row) ------------------------------------
@njit(inline="always")
def _requant_one(v, i, kind, thr, monotone, qmin, m, sh, zp, lo, hi, mode, seed, tid):
    if kind == RQ_NONE:
        return v
    if kind == RQ_THR:
        n = thr.shape[1]
        if monotone:
            return qmin + count_ge(v, thr, 0, n)
        c = 0
        for j in range(n):
            if v >= thr[0, j]:
                c += 1
        return qmin + c
    r = hash32(seed, tid, i) if mode == P.STOCHASTIC else 0
    return rescale(v, m, sh, zp, lo, hi, mode, r)


def _rq_args(requant):
    """Kernel arguments of a per-tensor Thresholds/Rescale/None (layers check one row)."""
    empty = np.zeros((1, 0), np.int64)
    if requant is None:
        return (RQ_NONE, empty, True, 0, 0, 0, 0, 0, 0, 0)
    if isinstance(requant, Thresholds):
        thr = np.ascontiguousarray(requant.thr[:1], np.int64)
        mono = bool(thr.shape[1] < 2 or (np.diff(thr, axis=1) >= 0).all())
        return (RQ_THR, thr, mono, requant.qmin, 0, 0, 0, 0, 0, 0)
    assert isinstance(requant, Rescale)
    return (
        RQ_RESCALE,
        empty,
        True,
        0,
        int(requant.multiplier[0]),
        int(requant.shift[0]),
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
    )


# ---- MatMul -------------------------------------------------------------------------------------------
@njit(parallel=True)
def _matmul(
    a,
    b,
    dp,
    alut,
    aq0,
    blut,
    bq0,
    plut,
    pbase,
    pstep,
    mode,
    width,
    tile,
    lo,
    hi,
    kind,
    thr,
    mono,
    qmin,
    m,
    sh,
    zp,
    rlo,
    rhi,
    rmode,
    seed,
    tid,
    exact,
    acc,
    out,
):
    """a (G, M, K), b (G, K, N) codes -> (G, M, N); products k ascending, §4 accumulator."""
    G, M, K = a.shape
    N = b.shape[2]
    for r in prange(G * M * N):
        g = r // (M * N)
        mm = (r // N) % M
        n = r % N
        s = 0
        sat = 0
        part = 0
        for k in range(K):
            qa = a[g, mm, k]
            qb = b[g, k, n]
            if dp == 0:
                p = alut[qa - aq0] * blut[qb - bq0]
            else:
                ma = qa if qa >= 0 else -qa
                mb = qb if qb >= 0 else -qb
                idx = pbase[ma] + pstep[ma] * mb  # ProductTable.index(ma, mb), host terms
                sg = ((qa > 0) - (qa < 0)) * ((qb > 0) - (qb < 0))
                p = sg * plut[idx]
            s += p  # |every prefix| <= k_max·max|p| < 2^63 (MatMul construction)
            if mode == MODE_SAT:
                if tile == 0:
                    sat = sat_add(sat, p, lo, hi)
                else:
                    if k % tile == 0:
                        part = 0
                    part = sat_add(part, p, lo, hi)
                    if k % tile == tile - 1 or k == K - 1:
                        sat = sat_add(sat, part, lo, hi)
        exact[r] = s
        v = s if mode == MODE_EXACT else (wrap(s, width) if mode == MODE_WRAP else sat)
        acc[r] = v
        out[r] = _requant_one(v, r, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


def matmul(layer, a, b):
    bk, K = layer.check_inputs(a, b)
    lead, M, N = a.shape[:-2], a.shape[-2], bk.shape[-1]
    G = int(np.prod(lead, dtype=np.int64))
    A = np.ascontiguousarray(a, np.int64).reshape(G, M, K)
    B = np.ascontiguousarray(bk, np.int64).reshape(G, K, N)
    z1 = np.zeros(1, np.int64)
    if layer.datapath == "operand":
        args = (
            0,
            np.ascontiguousarray(layer.a_table.lut[0], np.int64),
            layer.a_range.qmin,
            np.ascontiguousarray(layer.b_table.lut[0], np.int64),
            layer.b_range.qmin,
            z1,
            z1,
            z1,
        )
    else:
        pt = layer.p_table
        base, step = pt.index_terms(np.arange(layer.a_range.max_magnitude + 1, dtype=np.int64))
        lut = np.ascontiguousarray(pt.lut[0], np.int64)
        args = (
            1,
            z1,
            0,
            z1,
            0,
            lut,
            np.ascontiguousarray(base, np.int64),
            np.ascontiguousarray(step, np.int64),
        )
    size = G * M * N
    exact, acc, out = (np.empty(size, np.int64) for _ in range(3))
    ac = layer.acc
    if size:
        _matmul(
            A,
            B,
            *args,
            _MODES[ac.overflow],
            ac.width,
            ac.tile,
            ac.lo,
            ac.hi,
            *_rq_args(layer.requant),
            layer.seed,
            layer.tensor_id,
            exact,
            acc,
            out,
        )
    shape = lead + (M, N)
    return dict(
        acc_exact=exact.reshape(shape),
        acc=acc.reshape(shape),
        out=(out if layer.requant is not None else acc.copy()).reshape(shape),
    )


# ---- Softmax ------------------------------------------------------------------------------------------
@njit(parallel=True)
def _softmax(
    x,
    keep,
    lut,
    pbits,
    prmode,
    mode,
    width,
    lo,
    hi,
    kind,
    thr,
    mono,
    qmin,
    m,
    sh,
    zp,
    rlo,
    rhi,
    rmode,
    seed,
    tid,
    exact,
    acc,
    prob,
    out,
):
    R, T = x.shape
    for r in prange(R):
        qm = 0
        any_kept = False
        for j in range(T):
            if keep[r, j] and (not any_kept or x[r, j] > qm):
                qm = x[r, j]
                any_kept = True
        s = 0
        sat = 0
        for j in range(T):
            if keep[r, j]:
                e = lut[qm - x[r, j]]
                s += e
                sat = sat_add(sat, e, lo, hi)
        exact[r] = s
        v = s if mode == MODE_EXACT else (wrap(s, width) if mode == MODE_WRAP else sat)
        acc[r] = v
        for j in range(T):
            i = r * T + j
            p = 0
            if keep[r, j] and v > 0:
                w = hash32(seed, tid, i) if prmode == P.STOCHASTIC else 0
                p = round_div(lut[qm - x[r, j]] << pbits, v, prmode, w)
            prob[i] = p
            out[i] = _requant_one(p, i, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


def softmax(layer, x, mask=None):
    keep = layer.keep_mask(x, mask)
    T = x.shape[-1]
    R = x.size // T if T else 0
    size = x.size
    exact, acc = np.empty(R, np.int64), np.empty(R, np.int64)
    prob, out = np.empty(size, np.int64), np.empty(size, np.int64)
    ac = layer.acc
    if size:
        _softmax(
            np.ascontiguousarray(x, np.int64).reshape(R, T),
            np.ascontiguousarray(keep).reshape(R, T),
            layer.exp_lut,
            layer.prob_bits,
            layer.prob_rounding,
            _MODES[ac.overflow],
            ac.width,
            ac.lo,
            ac.hi,
            *_rq_args(layer.requant),
            layer.seed,
            layer.tensor_id,
            exact,
            acc,
            prob,
            out,
        )
    else:
        exact[:] = 0
        acc[:] = 0
    rows = x.shape[:-1]
    return dict(
        acc_exact=exact.reshape(rows),
        acc=acc.reshape(rows),
        prob=prob.reshape(x.shape),
        out=(out if layer.requant is not None else prob.copy()).reshape(x.shape),
    )


# ---- LayerNorm ----------------------------------------------------------------------------------------
@njit(parallel=True)
def _layernorm(
    x,
    lut,
    q0,
    eps,
    R,
    G,
    Bt,
    mrmode,
    kind,
    thr,
    mono,
    qmin,
    m,
    sh,
    zp,
    rlo,
    rhi,
    rmode,
    seed,
    tid,
    mean,
    inv,
    y,
    out,
):
    rows, C = x.shape
    num = C << (2 * R)  # < 2^62 (LayerNorm construction)
    for r in prange(rows):
        s = 0
        for c in range(C):
            s += lut[x[r, c] - q0]
        w = hash32(seed, tid, r) if mrmode == P.STOCHASTIC else 0
        mu = round_div(s, C, mrmode, w)
        V = 0
        for c in range(C):
            d = lut[x[r, c] - q0] - mu
            V += d * d
        iv = isqrt(num // (V + C * eps))
        mean[r] = mu
        inv[r] = iv
        for c in range(C):
            i = r * C + c
            v = (lut[x[r, c] - q0] - mu) * iv * G[c] + Bt[c]
            y[i] = v
            out[i] = _requant_one(v, i, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


def layernorm(layer, x):
    layer.check_input(x)
    C = layer.channels
    rows = x.size // C
    mean, inv = np.empty(rows, np.int64), np.empty(rows, np.int64)
    y, out = np.empty(x.size, np.int64), np.empty(x.size, np.int64)
    if rows:
        _layernorm(
            np.ascontiguousarray(x, np.int64).reshape(rows, C),
            np.ascontiguousarray(layer.x_table.lut[0], np.int64),
            layer.x_range.qmin,
            layer.eps_int,
            layer.inv_frac_bits,
            layer.gamma,
            layer.beta,
            layer.mean_rounding,
            *_rq_args(layer.requant),
            layer.seed,
            layer.tensor_id,
            mean,
            inv,
            y,
            out,
        )
    lead = x.shape[:-1]
    return dict(
        mean=mean.reshape(lead),
        inv=inv.reshape(lead),
        y=y.reshape(x.shape),
        out=(out if layer.requant is not None else y.copy()).reshape(x.shape),
    )


# Lookups and layout ops: no arithmetic, the oracle's NumPy indexing is the implementation.
OPS = {
    MatMul: matmul,
    Softmax: softmax,
    LayerNorm: layernorm,
    Embedding: _oracle.embedding,
    ElementwiseTable: _oracle.elementwise,
    Reshape: _oracle.reshape,
    Transpose: _oracle.transpose,
    Slice: _oracle.slice_,
    PadMask: _oracle.padmask,
}
