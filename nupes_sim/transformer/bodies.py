"""What one transformer kernel thread computes (ARITHMETIC.md §4, §6, §10-§14), written once.

One output element of MatMul, one row of Softmax or of LayerNorm: plain Python over
integers, compiled by `compile_all(decorator)` with numba.njit for the CPU kernels
(transformer/cpu.py loops over them with prange) and cuda.jit(device=True) for the CUDA
kernels (cuda/transformer.py runs one per thread), each re-bound to the primitives
(nupes_sim.primitives, transformer.prims) compiled by the same decorator. The kernel files
keep only the loop or launch, so the two backends run one source. The sequence of every sum
is the contract's, so results do not depend on the loop order or launch shape.

The host helpers at the end build the kernels' arguments for both backends (`put` copies an
array to the device, or is the identity on the CPU). The primitives imported below make the
bodies plain Python functions too; compile_all replaces them by their compiled siblings.
"""

import types

import numpy as np

from .. import primitives as P
from ..primitives import SATURATE, STOCHASTIC, WRAP, count_ge, hash32, rescale, sat_add, sat_step, wrap
from ..tables import Rescale, Thresholds
from . import prims
from .prims import isqrt, round_div

RQ_NONE, RQ_THR, RQ_RESCALE = 0, 1, 2  # requantization kinds (kernel arguments only)
DP_OPERAND, DP_PRODUCT = 0, 1


def requant_one(v, i, kind, thr, qmin, m, sh, zp, lo, hi, mode, seed, tid):
    """§6 of value v (flat output index i) by a per-tensor table: none, thresholds (one
    non-decreasing row, Thresholds construction) or rescale."""
    if kind == RQ_NONE:
        return v
    if kind == RQ_THR:
        return qmin + count_ge(v, thr, 0, thr.shape[1])
    r = hash32(seed, tid, i) if mode == STOCHASTIC else 0
    return rescale(v, m, sh, zp, lo, hi, mode, r)


def accumulated(s, sat, mode, width):
    """The §4 accumulator of exact sum s: wrapped, saturated (sat, accumulated alongside) or s."""
    if mode == WRAP:
        return wrap(s, width)
    if mode == SATURATE:
        return sat
    return s


def matmul_element(
    r, a, b, dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out,
):  # fmt: skip
    """Output r = (g, m, n) of a (G, M, K) @ b (G, K, N): products k ascending (§10)."""
    M = a.shape[1]
    K = a.shape[2]
    N = b.shape[2]
    g = r // (M * N)
    mm = (r // N) % M
    n = r % N
    s = 0
    sat = 0
    part = 0
    for k in range(K):
        qa = a[g, mm, k]
        qb = b[g, k, n]
        if dp == DP_OPERAND:
            p = alut[qa - aq0] * blut[qb - bq0]
        else:  # sign(qa)·sign(qb)·|p| with selects, not branches (random signs mispredict)
            ma = qa if qa >= 0 else -qa
            mb = qb if qb >= 0 else -qb
            sg = ((1 if qa > 0 else 0) - (1 if qa < 0 else 0)) * ((1 if qb > 0 else 0) - (1 if qb < 0 else 0))
            p = sg * plut[pbase[ma] + pstep[ma] * mb]  # ProductTable.index(ma, mb): host terms
        s += p  # |every prefix| <= k_max·max|p| < 2^63 (MatMul construction)
        if mode == SATURATE:
            sat, part = sat_step(sat, part, p, k, K, tile, lo, hi)
    exact[r] = s
    v = accumulated(s, sat, mode, width)
    acc[r] = v
    out[r] = requant_one(v, r, kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


def softmax_row(
    r, x, keep, lut, pbits, prmode, mode, width, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, prob, out,
):  # fmt: skip
    """Row r of x (R, T), keep (R, T) nonzero = kept: max, exp-table sum, probabilities (§12-§13)."""
    T = x.shape[1]
    qm = 0
    any_kept = False
    for j in range(T):
        if keep[r, j] != 0 and (not any_kept or x[r, j] > qm):
            qm = x[r, j]
            any_kept = True
    s = 0
    sat = 0
    for j in range(T):
        if keep[r, j] != 0:
            e = lut[qm - x[r, j]]
            s += e
            sat = sat_add(sat, e, lo, hi)
    exact[r] = s
    v = accumulated(s, sat, mode, width)
    acc[r] = v
    for j in range(T):
        i = r * T + j
        p = 0
        if keep[r, j] != 0 and v > 0:
            w = hash32(seed, tid, i) if prmode == STOCHASTIC else 0
            p = round_div(lut[qm - x[r, j]] << pbits, v, prmode, w)
        prob[i] = p
        out[i] = requant_one(p, i, kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


def layernorm_row(
    r, x, lut, q0, eps, R, G, Bt, mrmode,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, mean, inv, y, out,
):  # fmt: skip
    """Row r of x (rows, C): mean, inverse deviation, affine output (§14)."""
    C = x.shape[1]
    s = 0
    for c in range(C):
        s += lut[x[r, c] - q0]
    w = hash32(seed, tid, r) if mrmode == STOCHASTIC else 0
    mu = round_div(s, C, mrmode, w)
    V = 0
    for c in range(C):
        d = lut[x[r, c] - q0] - mu
        V += d * d
    iv = isqrt((C << (2 * R)) // (V + C * eps))  # C << 2R < 2^62 (LayerNorm construction)
    mean[r] = mu
    inv[r] = iv
    for c in range(C):
        i = r * C + c
        v = (lut[x[r, c] - q0] - mu) * iv * G[c] + Bt[c]
        y[i] = v
        out[i] = requant_one(v, i, kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


NAMES = ("requant_one", "accumulated", "matmul_element", "softmax_row", "layernorm_row")


def compile_all(decorator, body_decorator=None):
    """The bodies compiled by `body_decorator` (default `decorator`), bound to the primitives
    `decorator` compiles (one namespace: no compiled body calls back into Python)."""
    ns = {k: v for k, v in globals().items() if isinstance(v, int) and not isinstance(v, bool)}
    for dep in (P.compile_all(decorator), prims.compile_all(decorator)):
        ns.update(vars(dep))
    body_decorator = body_decorator or decorator
    out = {}
    for name in NAMES:
        f = globals()[name]
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__qualname__ = f"transformer.bodies.{name}"
        ns[name] = out[name] = body_decorator(g)
    return types.SimpleNamespace(**out)


# ---- host side: the kernels' arguments ------------------------------------------------------------
def _same(x):
    return x


def requant_args(requant, put=_same):
    """(kind, thr, qmin, m, sh, zp, lo, hi, mode) of a per-tensor Thresholds/Rescale/None
    (the layers accept one row only)."""
    if isinstance(requant, Thresholds):
        return (RQ_THR, put(np.ascontiguousarray(requant.thr[:1], np.int64)), requant.qmin) + (0,) * 6
    empty = put(np.zeros((1, 0), np.int64))
    if requant is None:
        return (RQ_NONE, empty) + (0,) * 7
    assert isinstance(requant, Rescale)
    return (
        RQ_RESCALE,
        empty,
        0,
        int(requant.multiplier[0]),
        int(requant.shift[0]),
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
    )


def matmul_args(layer, put=_same):
    """(dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi) of a MatMul:
    decoded-operand tables, or the product table with its index terms per |qa| (pt.index_terms,
    the host's one index formula)."""
    z1 = put(np.zeros(1, np.int64))
    if layer.datapath == "operand":
        dp = (
            DP_OPERAND,
            put(np.ascontiguousarray(layer.a_table.lut[0], np.int64)),
            layer.a_range.qmin,
            put(np.ascontiguousarray(layer.b_table.lut[0], np.int64)),
            layer.b_range.qmin,
            z1,
            z1,
            z1,
        )
    else:
        pt = layer.p_table
        base, step = pt.index_terms(np.arange(layer.a_range.max_magnitude + 1, dtype=np.int64))
        dp = (DP_PRODUCT, z1, 0, z1, 0) + tuple(
            put(np.ascontiguousarray(t, np.int64)) for t in (pt.lut[0], base, step)
        )
    ac = layer.acc
    return dp + (P.OVERFLOW_IDS[ac.overflow], ac.width, ac.tile, ac.lo, ac.hi)
