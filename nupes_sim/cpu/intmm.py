"""Exact integer GEMMs on the CPU's int8 dot-product units (torch._int_mm: oneDNN, VNNI/AMX).

Claim (I). Let A (N, Kc) and B (Kc, O) be int8 matrices with Kc <= 2^16. Then
torch._int_mm(A, B) returns the exact integer product A @ B (int32).
Proof: every true partial sum (the sum of any subset of the Kc products a·b) has magnitude
<= Kc·128·128 = 2^30 < 2^31, so the exact result and every partial sum of any order or
blocking is representable in int32. Implementations on x86 that feed the signed A through the
unsigned VNNI port as A + 128 in [0, 255] and subtract 128·colsum(B) afterwards form partial
sums of magnitude <= Kc·255·128 <= 2139095040 < 2^31 (and 128·colsum(B) <= 2^30): also
representable. So no int32 operation can overflow, whatever the order. What (I) cannot cover
from outside the library is a kernel that saturates narrower intermediates (the pre-VNNI
vpmaddubsw pair sums saturate at int16); ``available()`` therefore probes the installed
library once per process on the extreme operands (every sign combination of +-128/127 at
Kc = 2^16, pairs 255·128 that would saturate int16, odd shapes) against int64 NumPy and the
path is never used if one value differs. Tests force the path on and compare with the oracle.

The layer's integer matrices (the features A[n, kJ+j] = G[x[n,k], j] and the weights
B[kJ+j, o] = H[key(o,k), j] of gemm.py's decomposition (*); operand datapath: J = 1, the
decoded values) are split into balanced base-256 limbs, v = sum_l 2^(8l)·v_l with
v_l in [-128, 127] (d = ((r + 128) & 255) - 128, r <- (r - d) >> 8, exact in int64), as many
limbs as the actual used values need (a table of <= 8 bits of magnitude: 1 limb; the product
datapath's one-hot side (+-1): 1 limb). Codes never enter these matrices, only limbs of
table entries and the one-hot +-1/0, so a full-range format (ARITHMETIC.md §1: the code
-2^(b-1), magnitude 2^(b-1) in the product index) changes table values only, which the split
takes whatever they are, and (I) holds for every int8 value, -128 included. Then
    A @ B = sum_{l, m} 2^(8(l+m)) · sum_chunks (A_l[:, chunk] @ B_m[chunk, :])
with chunks of <= int8_chunk_k (<= 2^16) consecutive k, each limb GEMM exact by (I). The
recombination is done in int64 (``_finish_limbs``); every partial sum there is bounded by
T = max|bias| + sum_{l,m} 2^(8(l+m))·K'·max|A_l|·max|B_m| (K' = K·J), and the path is used
only when T < 2^63 (checked on the host in Python integers), so no int64 operation
overflows and the result is the exact sum. Like every fast path this gives the order-free
sum: fused() runs it for wrap/exact accumulators, or saturate when no clamp can act.

Path choice (``choose``): int8=False never; int8=True whenever (I) and T apply; int8=None
(default) when additionally the limb pairs na·nb <= int8_max_pairs. Reason: measured on the
project machine (AMD EPYC, AVX-512 VNNI) _int_mm runs 8-10x the float32 GEMM of the same
shape, and the float path needs at least one float32 GEMM of the same K·J columns (float64,
at half that speed, as soon as a product reaches 2^24), so up to about 9 limb pairs the
int8 path is the faster one. Conv layers (int8_max_conv = 4 limb pairs times one-hot
columns): measured on a quiet machine, the int8 path lost to the float path on the conv
product datapath (J = 7: 270 vs 123 ms) and on conv with the demo's 3x3 limbs (101 vs 53 ms),
won with 2x2 limbs (44 vs 50 ms) and 1 limb (22 vs 30 ms): its per-limb im2col and the larger
int32 result are not overlapped with the GEMMs as the float path's worker blocks are.
Without torch (the 'reference' extra) the float path runs.
"""

import numpy as np
from numba import prange

from .. import primitives as P
from .jit import kernel
from .kernels import count_ge_ix, wrap
from .options import note

CHUNK_MAX = 2**16  # (I): Kc·255·128 < 2^31
_STATE = {}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if hasattr(torch, "_int_mm") else None


def _probe(torch):
    """True when _int_mm is exact on the cases (I) names (see the module docstring)."""
    rng = np.random.default_rng(0)
    cases = [(1, 1, 1), (3, 5, 7), (17, 33, 9), (2, CHUNK_MAX, 3)]
    for v in (-128, 127):
        for w in (-128, 127):
            cases.append((np.full((2, CHUNK_MAX), v, np.int8), np.full((CHUNK_MAX, 3), w, np.int8)))
    a = np.tile(np.array([127, -128], np.int8), (4, CHUNK_MAX // 2))  # int16 pair sums saturate
    cases.append((a, np.tile(np.array([[-128], [127]], np.int8), (CHUNK_MAX // 2, 2))))
    for c in cases:
        if len(c) == 3:
            A = rng.integers(-128, 128, c[:2]).astype(np.int8)
            B = rng.integers(-128, 128, c[1:]).astype(np.int8)
        else:
            A, B = c
        try:
            r = torch._int_mm(torch.from_numpy(A), torch.from_numpy(B)).numpy()
        except RuntimeError:
            return False
        if r.dtype != np.int32 or not np.array_equal(r, A.astype(np.int64) @ B.astype(np.int64)):
            return False
    return True


def available():
    """torch._int_mm, when it is importable and passed the probe in this process; else None."""
    if "torch" not in _STATE:
        torch = _torch()
        _STATE["torch"] = torch if torch is not None and _probe(torch) else None
        if torch is not None and _STATE["torch"] is None:
            note("int8_probe_failed")
    return _STATE["torch"]


def limb_split(v):
    """Balanced base-256 limbs (n, *v.shape) int8 of int64 v (|v| <= 2^62: the layer's tables):
    v = sum_l 2^(8l) limbs[l], n the fewest that represent every value."""
    r = np.asarray(v, np.int64).copy()
    out = []
    while True:
        d = ((r + 128) & 255) - 128
        out.append(d.astype(np.int8))
        r = (r - d) >> 8  # exact: r - d is a multiple of 256
        if not r.any():
            return np.stack(out)


@kernel(parallel=True)
def finish_limbs(R, wlm, bias, o0, Otot, P_, mode, width, thr, tix, qmin, do_thr, exact, acc, out):
    """exact = bias + sum_{c,l,m} wlm[l, m]·R[c, n, l, m, o] (int64, no overflow: T < 2^63),
    acc (wrap or identity) and the threshold codes, written at flat (b*Otot + o0 + o)*P_ + p
    for row n = b*P_ + p, as fused._finish. Blocks of up to 64 rows of one image: the sums
    are formed row by row (R read in order) into a block buffer, then written o by o."""
    C, N, na, nb, Og = R.shape
    nthr = thr.shape[1]
    BL = 64
    nblk_img = (P_ + BL - 1) // BL
    B = N // P_
    for blk in prange(B * nblk_img):
        b = blk // nblk_img
        p0 = (blk - b * nblk_img) * BL
        p1 = min(P_, p0 + BL)
        S = np.empty((p1 - p0, Og), np.int64)
        for p in range(p0, p1):
            n = b * P_ + p
            for o in range(Og):
                S[p - p0, o] = bias[o]
            for c in range(C):
                for l in range(na):
                    for m in range(nb):
                        w = wlm[l, m]
                        for o in range(Og):
                            S[p - p0, o] += w * np.int64(R[c, n, l, m, o])
        for o in range(Og):
            base = (b * Otot + o0 + o) * P_
            row = 0 if thr.shape[0] == 1 else o0 + o
            for p in range(p0, p1):
                s = S[p - p0, o]
                i = base + p
                exact[i] = s
                a = wrap(s, width) if mode == P.WRAP else s
                acc[i] = a
                if do_thr:
                    out[i] = qmin + count_ge_ix(a, thr, row, nthr, tix)


def plan(G, H, KJ, bias_max, opts, conv=False):
    """(Ga (na, nq, J), Hl (nb, keys, J) int8 limbs of the two sides, wlm (na, nb) int64 limb
    weights, chunk bounds of k') for the int8 path, or None when it does not apply (no exact
    _int_mm, T >= 2^63, or the automatic rule prefers the float path). G: the used activation
    codes' rows (others 0), H: the used weight keys' rows (others 0), KJ = K·J."""
    if opts.int8 is False or available() is None:
        return None
    Ga, Hl = limb_split(G), limb_split(H)
    na, nb = Ga.shape[0], Hl.shape[0]
    J = G.shape[1]
    if opts.int8 is None and (na * nb > opts.int8_max_pairs or (conv and na * nb * J > opts.int8_max_conv)):
        return None
    amax = [int(np.abs(a.astype(np.int64)).max(initial=0)) for a in Ga]
    bmax = [int(np.abs(b.astype(np.int64)).max(initial=0)) for b in Hl]
    T = bias_max + sum((1 << 8 * (i + j)) * KJ * amax[i] * bmax[j] for i in range(na) for j in range(nb))
    if T >= 2**63:
        return None
    wlm = np.array([[1 << 8 * (i + j) for j in range(nb)] for i in range(na)], np.int64)
    bounds = list(range(0, KJ, opts.int8_chunk_k)) + [KJ]
    return Ga, Hl, wlm, bounds


@kernel
def used_keys(qw, tidx, nw, wqmin, nkeys):
    """used[key] for key = t*nw + qw - qmin over every weight (o, k)."""
    used = np.zeros(nkeys, np.bool_)
    O, K = qw.shape
    for o in range(O):
        for k in range(K):
            used[tidx[o, k] * nw + (qw[o, k] - wqmin)] = True
    return used


@kernel(parallel=True)
def weight_limbs(qw, tidx, perm, nw, wqmin, Hl, Bcat):
    """Bcat[k*J + j, m*Og + o] = Hl[m, key, j], key = t*nw + qw - qmin of weight (o, perm[k]):
    the weight limbs of all nb limbs side by side (one GEMM per chunk serves every limb).
    Blocks of 32 k: the block's rows of Bcat stay in cache while o runs."""
    Og = qw.shape[0]
    K = perm.shape[0]
    nb, _, J = Hl.shape
    KB = 32
    for kb in prange((K + KB - 1) // KB):
        k0 = kb * KB
        k1 = min(K, k0 + KB)
        for o in range(Og):
            for k in range(k0, k1):
                kk = perm[k]
                key = tidx[o, kk] * nw + (qw[o, kk] - wqmin)
                for m in range(nb):
                    for j in range(J):
                        Bcat[k * J + j, m * Og + o] = Hl[m, key, j]


def run_gemms(torch, A, Bcat, bounds, R, r0):
    """R[c, r0:r0+rows] = chunk c of A (rows, na, K') @ Bcat (K', nb*Og), exact by (I); rows
    ordered (row, limb) so the int32 result lands in R in place."""
    rows, na, _ = A.shape
    for c in range(len(bounds) - 1):
        k0, k1 = bounds[c], bounds[c + 1]
        a = A.reshape(rows * na, -1)[:, k0:k1]
        dst = R[c, r0 : r0 + rows].reshape(rows * na, -1)
        torch._int_mm(torch.from_numpy(a), torch.from_numpy(Bcat[k0:k1]), out=torch.from_numpy(dst))
