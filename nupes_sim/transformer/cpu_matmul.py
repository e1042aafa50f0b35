"""Fast path of the CPU MatMul (ARITHMETIC.md §11): decode, one exact GEMM, then §4 and §6.

Operand datapath only: product(qa, qb) = A[qa]·B[qb] with A, B the decoded-operand tables,
so the exact sums are s = Â @ B̂ for the decoded matrices Â = A[a], B̂ = B[b].

Claim (E). With `bound` = k_max·max|A|·max|B| (MatMul construction: < 2^63) and K <= k_max,
every partial sum of any subset of the K products of one output, in any order or blocking,
has magnitude <= bound. So:
- int64 GEMM (``_gemm_i64``): no int64 operation overflows and integer addition is
  associative: the result is the exact s of the contract's k-ascending sum.
- float64 GEMM (np.matmul, BLAS), used only when bound < 2^53: every product and every
  partial sum is an integer of magnitude < 2^53, hence representable, so each IEEE multiply,
  add or fused multiply-add returns it exactly, whatever order BLAS sums in: s exactly. (The
  int64 -> float64 casts: max|A|, max|B| <= bound as k_max >= 1, unless the other table is all
  zero, when every product is 0 whatever the cast gives.)
The accumulator (§4) is then a function of s alone for wrap (wrap(s)) and exact (s). For
saturate it is s whenever bound <= hi: every saturating step (tile == 0: acc + p; tile > 0:
part + p and acc + part, each a partial sum of a subset of the products) has a true value of
magnitude <= bound <= hi < -lo, so no clamp can act and the saturated result is s. Saturate
with bound > hi keeps the k-ascending scalar kernel (cpu.py). The product datapath keeps the
scalar kernel too (its product is a table entry per (|qa|, |qb|), not a GEMM of decoded values).
"""

import numpy as np
from numba import njit, prange

from ..cpu.jit import kernel
from ..primitives import OVERFLOW_IDS

F64_EXACT = 2**53

GEMMS = ("auto", "int64", "float64")


def applies(layer):
    """(E) holds and the accumulator of s is its contract value."""
    if layer.datapath != "operand":
        return False
    return layer.acc.overflow != "saturate" or int(layer.bound[0]) <= layer.acc.hi


@kernel(parallel=True)
def _gemm_i64(A, B, S):
    """S[g] = A[g] @ B[g], int64 (G, M, K) x (G, K, N): exact by (E); rows in parallel."""
    G, M, K = A.shape
    N = B.shape[2]
    for r in prange(G * M):
        g = r // M
        m = r % M
        for n in range(N):
            S[g, m, n] = 0
        for k in range(K):
            x = A[g, m, k]
            for n in range(N):
                S[g, m, n] += x * B[g, k, n]


def exact_sums(layer, a, b, gemm="auto"):
    """s (G, M, N) int64 of codes a (G, M, K), b (G, K, N) on the operand datapath, by (E)."""
    if gemm not in GEMMS:
        raise ValueError(f"gemm={gemm!r}; choose one of {list(GEMMS)}")
    use_f64 = gemm == "float64" or (gemm == "auto" and int(layer.bound[0]) < F64_EXACT)
    ia = np.asarray(a, np.int64) - layer.a_range.qmin
    ib = np.asarray(b, np.int64) - layer.b_range.qmin
    if use_f64:
        if int(layer.bound[0]) >= F64_EXACT:
            raise ValueError(
                f"{layer.name}: bound {int(layer.bound[0])} >= 2^53: the float64 GEMM is not exact"
            )
        fa, fb = (t.lut[0].astype(np.float64) for t in (layer.a_table, layer.b_table))  # the casts: (E)
        return np.matmul(fa[ia], fb[ib]).astype(np.int64)
    A, B = layer.a_table.lut[0][ia], layer.b_table.lut[0][ib]
    S = np.empty((A.shape[0], A.shape[1], B.shape[2]), np.int64)
    _gemm_i64(np.ascontiguousarray(A), np.ascontiguousarray(B), S)
    return S


def make_finish(accumulated, requant_one):
    """The §4/§6 output pass over exact sums, built from the bodies the scalar kernel uses."""

    @njit(parallel=True)
    def finish(
        s, mode, width, kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out
    ):  # fmt: skip
        for r in prange(s.size):
            v0 = s[r]
            exact[r] = v0
            v = accumulated(v0, v0, mode, width)  # saturate: sat == s by (E) (applies())
            acc[r] = v
            out[r] = requant_one(v, r, kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)

    return finish


def finish_args(layer):
    return OVERFLOW_IDS[layer.acc.overflow], layer.acc.width
