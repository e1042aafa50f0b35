"""Exact integer GEMMs in floating point: the one proof, and the planner built on it.

Claim (E). Let L = 2^24 (float32) or 2^53 (float64). For integer matrices A (N, K) and
B (K, O) with |A| < L, |B| < L and, for every output (n, o), sum_k |A[n,k]|·|B[k,o]| < L, the
float GEMM A @ B returns the exact integer product.
Proof: a classical GEMM (OpenBLAS/numpy; no Strassen-type algorithm) computes each C[n,o] by
multiplying pairs and adding, in some order and blocking, possibly with fused multiply-adds,
starting from 0 (alpha = 1, beta = 0). Every value it forms -- a product, or a partial sum,
i.e. the sum of some subset of the K products -- is an integer of magnitude
<= sum_k |A||B| < L, hence representable; a correctly rounded operation whose exact result is
representable returns it unchanged. So no operation rounds, and the result (converted to
int64, exactly) is the exact sum. The operands convert exactly because |A|, |B| < L.

Every fast path of the backend is (E) applied to integer matrices whose entries are the
layer's products, or an exact decomposition of them; the sums the backend then forms in int64
are the bias plus sums over subsets of the layer's products, so |.| <= layer bound < 2^63
(bound >= |bias| + sum_k max |product|, checked at construction). Three ways to meet (E):

(1) Chunking. The k axis is cut greedily into chunks with max_o sum_{k in chunk} cost(o, k) < L,
    cost(o, k) >= sum_j |A[n, kJ+j]|·|B[kJ+j, o]| for every n (the J GEMM terms of one k);
    (E) holds per chunk; the chunk results are added to the bias in int64.
(2) Splits (bound >= 2^53 with no short chunking). A = Ah·2^S + Al, Ah = A >> S (floor),
    Al = A & (2^S-1): A @ B = 2^S (Ah @ B) + Al @ B. With sB = max_o sum_k |B[k,o]| (exact),
    sum|Al||B| <= (2^S-1)·sB and sum|Ah||B| <= sum(|A|/2^S + 1)|B| <= (bnd >> S) + 1 + sB, so
    each part satisfies (E) when those bounds are < L (S is searched; either operand may be
    split). 2^S·Rh + Rl is formed in int64 with two's complement wrap-around: congruent to the
    true value mod 2^64, whose magnitude is <= bnd < 2^63, so it is the true value.
(3) One-hot decomposition. A product depends on (key, q): key = t·nw + (qw - qmin_w) (t = the
    weight's table row, nw = number of weight codes), q = the activation code. It is written
        product(key, q) = sum_{j<J} G[q, j]·H[key, j]                                      (*)
      operand: J = 1, G[q, 0] = x_lut[q], H[key, 0] = w_lut[t, qw] ((*) is the definition);
      product, one-hot on the weights: j over the (t, m) pairs present (m = |qw| > 0),
        G[q, j] = sign(q)·lut[t_j, idx(m_j, |q|)],  H[key, j] = sign(qw)·[(t, |qw|) = (t_j, m_j)];
      product, one-hot on the activations: j over the magnitudes a_j > 0 of [min x, max x],
        G[q, j] = sign(q)·[|q| = a_j],              H[key, j] = sign(qw)·lut[t, idx(|qw|, a_j)].
    (*) is verified on the host in int64 for every used key and every q in [min x, max x]
    against the product as the oracle forms it, and each row of G (or of H) has at most one
    nonzero entry, so sum_j |G[q,j]|·|H[key,j]| = |product(key, q)|: the decomposed GEMM
    A[n, kJ+j] = G[x[n,k], j], B[kJ+j, o] = H[key(o,k), j] has per-k cost = the largest
    |product|, and (1) applies unchanged (operand: cost = |w_lut|·max|x_lut|). The unfused
    path runs the weights-side columns (t, m) as separate GEMMs (each partial sum is a sum over
    a subset of the products, <= bound), each exact by (E) or (2).
A padded conv tap has A = 0 (its product is 0). These paths give order-free sums only: they
run for wrap/exact accumulators, or saturate when no clamp can act (no_overflow_possible()).
"""

import numpy as np
from numba import prange

from .jit import kernel
from .options import F24, F53, note


def maxabs(a):
    return int(np.abs(a).max(initial=0)) if a.size else 0


def max_row_abs_sum(a):
    """max_r sum_k |a[r, k]| exactly (Python ints when int64 could overflow)."""
    if a.size == 0:
        return 0
    m = maxabs(a)
    if m * a.shape[1] < 2**63:
        return int(np.abs(a).sum(axis=1).max())
    return max(sum(int(v) for v in np.abs(row.astype(object))) for row in a)


def exact_matmul(A, B, bnd, opts, depth=0):
    """Exact int64 A @ B.T for A (N, K), B (O, K) with bnd >= max sum_k |A||B| (by (E), split
    by (2) when needed), or None if no exact split was found."""
    amax, bmax = maxabs(A), maxabs(B)
    if opts.use_float32 and bnd < F24 and amax < F24 and bmax < F24:
        note("gemm_f32")
        return (A.astype(np.float32) @ B.astype(np.float32).T).astype(np.int64)
    if bnd < F53 and amax < F53 and bmax < F53:
        note("gemm_f64")
        return (A.astype(np.float64) @ B.astype(np.float64).T).astype(np.int64)
    if depth >= 2:
        return None
    for swap in (False, True):
        X, Y = (B, A) if swap else (A, B)
        sY = max_row_abs_sum(Y)
        for S in range(1, 63):
            bl = ((1 << S) - 1) * sY
            bh = (bnd >> S) + 1 + sY
            if bl < F53 and bh < F53:
                Xh, Xl = X >> S, X & ((1 << S) - 1)
                rh = exact_matmul(*((Y, Xh) if swap else (Xh, Y)), bh, opts, depth + 1)
                rl = exact_matmul(*((Y, Xl) if swap else (Xl, Y)), bl, opts, depth + 1)
                if rh is None or rl is None:
                    break
                note("gemm_split")
                with np.errstate(over="ignore"):
                    return (rh << np.int64(S)) + rl  # wrap-around in int64, see (2)
    return None


def mac_unfused(layer, X, wts, bias, opts):
    """Order-free exact sums (N, O) of the unfused path ((E), (2), (3) weights side as one GEMM
    per (t, m)), or None when no proof applies."""
    bnd = int(layer.bound.max(initial=0))  # >= |bias| + sum_k max|product| for every channel
    if layer.datapath == "operand":
        r = exact_matmul(X, wts["WV"], bnd, opts)
        return None if r is None else r + bias[None, :]
    mw, tidx = wts["mw"], wts["tidx"]
    pt = layer.p_table
    T, nm = pt.lut.shape[0], int(mw.max(initial=0)) + 1
    if T * (nm - 1) > opts.product_gemm_max and T > opts.product_gemm_max:
        return None  # e.g. per-channel weight scales: one product table per output channel
    present = np.bincount((tidx * nm + mw).reshape(-1), minlength=T * nm).reshape(T, nm)
    present[:, 0] = 0  # |qw| = 0 contributes nothing
    pairs = np.argwhere(present > 0)
    if len(pairs) > opts.product_gemm_max:
        return None
    lut = np.asarray(pt.lut, np.int64)
    ax = np.abs(X)
    sx = np.sign(X)
    total = np.zeros((X.shape[0], wts["wsign"].shape[0]), np.int64)
    for t, m in pairs:
        idx = pt.index(m, ax)
        Tm = sx * lut[t, idx]
        Wm = np.where((tidx == t) & (mw == m), wts["wsign"], 0)
        r = exact_matmul(Tm, Wm, bnd, opts)
        if r is None:
            return None
        total += r  # partial totals are sums over disjoint k sets: |.| <= bound < 2^63
    note("product_gemm")
    return total + bias[None, :]


def decomposition(layer, xmin, xmax, opts):
    """(G, H, cost_key) int64 of (*) for activation codes in [xmin, xmax], or None (too many
    one-hot columns / too large a host check)."""
    nq = layer.x_range.n_codes
    xq0 = layer.x_range.qmin
    if layer.datapath == "operand":
        G = np.asarray(layer.x_table.lut[0], np.int64)[:, None]
        H = np.asarray(layer.w_table.lut, np.int64).reshape(-1, 1)
        xmaxabs = int(np.abs(G[xmin - xq0 : xmax - xq0 + 1]).max())
        # used keys: |w_lut|·max|x_lut| < 2^62 (the layer's construction rule); entries of
        # unused codes may be larger: clamped so the int64 product cannot wrap (never read)
        return G, H, np.minimum(np.abs(H[:, 0]), (2**62 - 1) // max(xmaxabs, 1)) * xmaxabs
    pt = layer.p_table
    lut = np.asarray(pt.lut, np.int64)
    T = lut.shape[0]
    nw, wq0 = layer.w_range.n_codes, layer.w_range.qmin
    qw = layer.w_codes.reshape(layer.out_channels, -1)
    keys_used = np.flatnonzero(
        np.bincount((layer.w_table_index * nw + (qw - wq0)).reshape(-1), minlength=T * nw)
    )
    kt, kw_ = keys_used // nw, keys_used % nw + wq0  # table row and weight code of each used key
    q = np.arange(xmin, xmax + 1)
    if len(q) * len(keys_used) > opts.product_check_max:
        return None

    idx = pt.index

    # the products as the oracle forms them, (q range, used keys)
    P_true = (
        np.sign(kw_)[None, :]
        * np.sign(q)[:, None]
        * lut[kt[None, :], idx(np.abs(kw_)[None, :], np.abs(q)[:, None])]
    )
    pairs = sorted({(int(t), int(abs(w))) for t, w in zip(kt, kw_) if w != 0})
    mags = sorted({abs(int(v)) for v in q if v != 0})
    side = opts.one_hot or ("activations" if len(mags) < len(pairs) else "weights")
    G = np.zeros((nq, 0), np.int64)
    H = np.zeros((T * nw, 0), np.int64)
    if side == "weights" and pairs:
        G = np.zeros((nq, len(pairs)), np.int64)
        H = np.zeros((T * nw, len(pairs)), np.int64)
        for j, (t, m) in enumerate(pairs):
            G[q - xq0, j] = np.sign(q) * lut[t, idx(m, np.abs(q))]
            sel = (kt == t) & (np.abs(kw_) == m)
            H[keys_used[sel], j] = np.sign(kw_[sel])
    elif side == "activations" and mags:
        G = np.zeros((nq, len(mags)), np.int64)
        H = np.zeros((T * nw, len(mags)), np.int64)
        for j, a in enumerate(mags):
            G[q - xq0, j] = np.sign(q) * (np.abs(q) == a)
            H[keys_used, j] = np.sign(kw_) * lut[kt, idx(np.abs(kw_), a)]
    if G.shape[1] > opts.product_gemm_max:
        return None
    if G.shape[1] == 0:  # every product is 0 (all weights or all activations are 0)
        G, H = np.zeros((nq, 1), np.int64), np.zeros((T * nw, 1), np.int64)
    Gr, Hu = G[q - xq0], H[keys_used]
    one_hot = ((Gr != 0).sum(axis=1) <= 1).all() or ((Hu != 0).sum(axis=1) <= 1).all()
    if not one_hot or not np.array_equal(Gr @ Hu.T, P_true):  # int64: one nonzero term each
        raise AssertionError(f"{layer.name}: product decomposition does not reproduce the table")
    cost = np.zeros(T * nw, np.int64)
    cost[keys_used] = np.abs(P_true).max(axis=0)  # one-hot: sum_j |G||H| = |product|
    return G, H, cost


@kernel(parallel=True)
def _wt_build(qw, tidx, perm, nw, wqmin, Hf, cost_key, Wt, costT):
    """Wt[k*J + j, o] = Hf[key, j], costT[k, o] = cost_key[key], key = t*nw + qw - qmin of the
    weight (o, perm[k]) (perm: the fused path's order of k; the sum is order-free)."""
    O = qw.shape[0]
    K = perm.shape[0]
    J = Hf.shape[1]
    for k in prange(K):
        kk = perm[k]
        for o in range(O):
            key = tidx[o, kk] * nw + (qw[o, kk] - wqmin)
            costT[k, o] = cost_key[key]
            for j in range(J):
                Wt[k * J + j, o] = Hf[key, j]


@kernel
def cut_chunks(costT, limit, max_chunks):
    """Greedy cut of k into chunks with max_o sum cost < limit ((1)); (bounds, n) or n = -1."""
    K, O = costT.shape
    bounds = np.empty(K + 1, np.int64)
    bounds[0] = 0
    n = 0
    run = np.zeros(O, np.int64)
    for k in range(K):
        over = False
        for o in range(O):
            c = costT[k, o]
            if c >= limit:
                return bounds, -1
            if run[o] + c >= limit:  # run, c < limit <= 2^53: no int64 overflow
                over = True
        if over:
            n += 1
            if n >= max_chunks:
                return bounds, -1
            bounds[n] = k
            run[:] = 0
        for o in range(O):
            run[o] += costT[k, o]
    n += 1
    bounds[n] = K
    return bounds, n


def weight_matrix(layer, sl, perm, H, cost, dt):
    """(Wt (K*J, O_sl) of dtype dt, costT (K, O_sl) int64) of (3) for output rows sl, k in the
    order perm."""
    O = layer.out_channels
    qw = np.ascontiguousarray(layer.w_codes.reshape(O, -1)[sl])
    tidx = np.ascontiguousarray(layer.w_table_index[sl])
    K, J = qw.shape[1], H.shape[1]
    Wt = np.empty((K * J, qw.shape[0]), dt)
    costT = np.empty((K, qw.shape[0]), np.int64)
    _wt_build(qw, tidx, perm, layer.w_range.n_codes, layer.w_range.qmin, H.astype(dt), cost, Wt, costT)
    return Wt, costT


def fused_plan(layer, xmin, xmax, sl, perm, opts):
    """Weights side of the fused path for output rows sl, k in the order perm:
    (Wt, bounds, n_chunks, dtype, Gf) by (3) and (1), or None."""
    dec = decomposition(layer, xmin, xmax, opts)
    if dec is None:
        return None
    G, H, cost = dec
    K = len(perm)
    gmax = maxabs(G[xmin - layer.x_range.qmin : xmax - layer.x_range.qmin + 1])
    hmax = maxabs(H)
    J = G.shape[1]
    limits = {np.float32: opts.chunk_limit_f32, np.float64: opts.chunk_limit_f64}
    for dt in (np.float32, np.float64) if opts.use_float32 else (np.float64,):
        lim = limits[dt]
        if gmax >= lim or hmax >= lim:
            continue
        Wt, costT = weight_matrix(layer, sl, perm, H, cost, dt)
        bounds, n = cut_chunks(costT, lim, opts.f32_max_chunks + 1 if dt is np.float32 else K + 1)
        if n > 0:
            return Wt, bounds[: n + 1] * J, n, dt, G.astype(dt)
    return None
