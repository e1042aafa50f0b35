"""Integer numba kernels of the CPU backend: accumulators, MAC sums, im2col, pooling.

Integer arithmetic is the scalar primitives of nupes_sim.primitives, compiled here by
primitives.compile_all(numba.njit) from their own bytecode (never re-implemented, never
fastmath, no floats). Every sum stays below 2^63 because it is the bias plus a subset of the
products and the layer bound (>= |bias| + sum of max |product|) is < 2^63.
"""

import numpy as np
from numba import njit, prange

from .. import primitives as P
from .jit import kernel

PRIMITIVE_NAMES = P.NAMES
prim = P.compile_all(njit)
hash32 = prim.hash32
sat_add = prim.sat_add
sat_step = prim.sat_step
wrap = prim.wrap
count_ge = prim.count_ge
rescale = prim.rescale

WRAP, SATURATE, EXACT = P.WRAP, P.SATURATE, P.EXACT


@njit(inline="always")
def count_ge_ix(v, thr, row, n, tix):
    """count_ge(v, thr, row, n) (n >= 1) through the bucket index tix of
    requant.threshold_index: tix[row, 0] = shift s (-1: no index, binary search),
    tix[row, 1 + b] = #{j : thr[row, j] <= t0 + (b << s) - 1}, t0 = thr[row, 0].
    Proof: v < t0 counts 0 and v >= thr[row, n-1] counts n (non-decreasing row). Else
    0 <= v - t0 < D = thr[row, n-1] - t0 (no overflow: |t0|, D < 2^61, checked), b = (v - t0) >> s
    is a bucket (D >> s < 2^10), and lo = t0 + (b << s) <= v. The entries <= v form a prefix
    that contains the prefix of the entries <= lo - 1, of length j = tix[row, 1 + b] <= n - 1
    (thr[row, n-1] > v >= lo); the scan adds the following entries while they are <= v and
    stops at thr[row, n-1] at the latest. Few steps: a bucket holds few thresholds."""
    sh = tix[row, 0]
    if sh < 0:
        return count_ge(v, thr, row, n)
    t0 = thr[row, 0]
    if v < t0:
        return 0
    if v >= thr[row, n - 1]:
        return n
    j = tix[row, 1 + ((v - t0) >> sh)]
    while thr[row, j] <= v:
        j += 1
    return j


@kernel  # serial: trivial work, and no thread hand-off next to BLAS threads
def wrap_array(x, width):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = wrap(x[i], width)
    return out


@kernel(parallel=True)
def accumulate_rows(prods, start, mode, width, tile, lo, hi):
    """Rows of products (R, K) -> (exact, acc) by the accumulator contract (mode: P.WRAP,
    P.SATURATE or P.EXACT; saturate goes through primitives.sat_step, k ascending)."""
    R, K = prods.shape
    exact = np.empty(R, np.int64)
    acc = np.empty(R, np.int64)
    for r in prange(R):
        s = start[r]
        for k in range(K):
            s += prods[r, k]  # exact: |every prefix| <= layer bound < 2^63
        exact[r] = s
        if mode == EXACT:
            acc[r] = s
        elif mode == WRAP:
            acc[r] = wrap(s, width)
        else:
            a = start[r]
            part = 0
            for k in range(K):
                a, part = sat_step(a, part, prods[r, k], k, K, tile, lo, hi)
            acc[r] = a
    return exact, acc


@kernel(parallel=True)
def add_values(a, b, alut, aq0, blut, bq0, mode, width, tile, lo, hi):
    """The Add layer's (exact, acc) per element: accumulate_rows on the rows (va, vb) with
    start 0 (a then b), the same arithmetic, without materializing the (n, 2) products."""
    n = a.size
    exact = np.empty(n, np.int64)
    acc = np.empty(n, np.int64)
    for i in prange(n):
        va = alut[a[i] - aq0]
        vb = blut[b[i] - bq0]
        s = np.int64(0) + va + vb  # |va| + |vb| <= layer bound < 2^63
        exact[i] = s
        if mode == EXACT:
            acc[i] = s
        elif mode == WRAP:
            acc[i] = wrap(s, width)
        else:
            x, part = sat_step(np.int64(0), np.int64(0), va, 0, 2, tile, lo, hi)
            x, part = sat_step(x, part, vb, 1, 2, tile, lo, hi)
            acc[i] = x
    return exact, acc


# ---- MAC integer kernels: X (N, K) per row, weights (O, K) per output; result (N, O) -----------
# operand datapath: product = WV[o, k] * XV[n, k] (decoded values; padded taps have XV = 0).
# product datapath: product = wsign[o,k] * sign(q) * lut[off[o,k] + mul[o,k] * |q|], q = XC[n, k]
#   (q = 0 for padded taps, so sign 0 makes the product 0, as in the oracle).
@njit(inline="always")
def _sign(q):
    return (q > 0) - (q < 0)


@kernel(parallel=True)
def mac_operand_sum(XV, WV, bias):
    N, K = XV.shape
    O = WV.shape[0]
    exact = np.empty((N, O), np.int64)
    for o in prange(O):
        w = WV[o]
        for n in range(N):
            x = XV[n]
            s = 0
            for k in range(K):
                s += w[k] * x[k]  # |w x| < 2^62 and every partial sum <= bound < 2^63
            exact[n, o] = s + bias[o]
    return exact


@kernel(parallel=True)
def mac_product_sum(XC, wsign, off, mul, lut, bias):
    N, K = XC.shape
    O = wsign.shape[0]
    exact = np.empty((N, O), np.int64)
    for o in prange(O):
        ws = wsign[o]
        of = off[o]
        mu = mul[o]
        for n in range(N):
            x = XC[n]
            s = 0
            for k in range(K):
                q = x[k]
                a = q if q >= 0 else -q
                s += ws[k] * _sign(q) * lut[of[k] + mu[k] * a]
            exact[n, o] = s + bias[o]
    return exact


@kernel(parallel=True)
def mac_operand_sat(XV, WV, bias, lo, hi, tile):
    N, K = XV.shape
    O = WV.shape[0]
    exact = np.empty((N, O), np.int64)
    acc = np.empty((N, O), np.int64)
    for i in prange(N * O):
        n = i // O
        o = i - n * O
        s = bias[o]
        a = bias[o]
        part = 0
        for k in range(K):
            p = WV[o, k] * XV[n, k]
            s += p
            a, part = sat_step(a, part, p, k, K, tile, lo, hi)
        exact[n, o] = s
        acc[n, o] = a
    return exact, acc


@kernel(parallel=True)
def mac_product_sat(XC, wsign, off, mul, lut, bias, lo, hi, tile):
    N, K = XC.shape
    O = wsign.shape[0]
    exact = np.empty((N, O), np.int64)
    acc = np.empty((N, O), np.int64)
    for i in prange(N * O):
        n = i // O
        o = i - n * O
        s = bias[o]
        a = bias[o]
        part = 0
        for k in range(K):
            q = XC[n, k]
            m = q if q >= 0 else -q
            p = wsign[o, k] * _sign(q) * lut[off[o, k] + mul[o, k] * m]
            s += p
            a, part = sat_step(a, part, p, k, K, tile, lo, hi)
        exact[n, o] = s
        acc[n, o] = a
    return exact, acc


@kernel(parallel=True)
def im2col(x, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """Columns (B*ho*wo, cg*kh*kw) of channels c0..c0+cg of x (B, C, H, W); k = (c, i, j),
    c slowest; padded taps are 0 (a decoded value 0 / a code 0 whose sign is 0)."""
    B, _, H, W = x.shape
    K = cg * kh * kw
    cols = np.zeros((B * ho * wo, K), x.dtype)
    for r in prange(B * ho * wo):
        b = r // (ho * wo)
        rem = r - b * ho * wo
        oh = rem // wo
        ow = rem - oh * wo
        for c in range(cg):
            for i in range(kh):
                h = oh * sh - ph + i * dh
                if h < 0 or h >= H:
                    continue
                for j in range(kw):
                    w = ow * sw - pw + j * dw
                    if 0 <= w < W:
                        cols[r, (c * kh + i) * kw + j] = x[b, c0 + c, h, w]
    return cols


@kernel(parallel=True)
def pool_windows(v, kh, kw, sh, sw, ho, wo):
    """Windows (B*C*ho*wo, kh*kw) of v (B, C, H, W), rows then columns."""
    B, C, H, W = v.shape
    out = np.empty((B * C * ho * wo, kh * kw), np.int64)
    for r in prange(B * C * ho * wo):
        bc = r // (ho * wo)
        rem = r - bc * ho * wo
        oh = rem // wo
        ow = rem - oh * wo
        b = bc // C
        c = bc - b * C
        for i in range(kh):
            for j in range(kw):
                out[r, i * kw + j] = v[b, c, oh * sh + i, ow * sw + j]
    return out


@kernel(parallel=True)
def maxpool(x, kh, kw, sh, sw, ph, pw, ho, wo):
    B, C, H, W = x.shape
    out = np.empty((B, C, ho, wo), np.int64)
    for bc in prange(B * C):
        b = bc // C
        c = bc - b * C
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * sh - ph
                w0 = ow * sw - pw
                best = np.int64(0)
                first = True
                for h in range(max(h0, 0), min(h0 + kh, H)):
                    for w in range(max(w0, 0), min(w0 + kw, W)):
                        v = np.int64(x[b, c, h, w])
                        if first or v > best:
                            best = v
                            first = False
                out[b, c, oh, ow] = best
    return out


@kernel
def minmax(x):
    mn = x[0]
    mx = x[0]
    for i in range(1, x.size):
        v = x[i]
        if v < mn:
            mn = v
        elif v > mx:
            mx = v
    return mn, mx
