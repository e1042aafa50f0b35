"""Device-side building blocks shared by every numba.cuda kernel: the primitives compiled
with cuda.jit(device=True) from the very bytecode the CPU backend compiles with numba.njit,
the overflow-mode and datapath ids, and the product and output-index helpers.

Integer arithmetic only: no float is ever formed in a kernel (numba.cuda cannot turn off FMA
contraction, so exactness arguments about floats would not carry over).
"""

from nupes_sim import primitives as P

from ._compat import (
    SIMULATOR,  # noqa: F401  (re-exported: the GEMM's shared-memory alignment)
    import_cuda,
)

cuda = import_cuda()
from numba import int64  # noqa: E402  (after the numpy shim in _compat)

MODE_WRAP, MODE_SAT, MODE_EXACT = P.WRAP, P.SATURATE, P.EXACT  # the one numbering (primitives)
MODES = P.OVERFLOW_IDS
DP_OPERAND, DP_PRODUCT = 0, 1

PRIMITIVE_NAMES = P.NAMES
prim = P.compile_all(cuda.jit(device=True))
hash32 = prim.hash32
sat_add = prim.sat_add
sat_step = prim.sat_step  # the tiled saturating step (ARITHMETIC.md §4), shared with the CPU
wrap = prim.wrap
count_ge = prim.count_ge
rescale = prim.rescale


@cuda.jit(device=True)
def out_index(n, o, HW, O_total, o_off):
    return (n // HW) * O_total * HW + (o_off + o) * HW + n % HW


@cuda.jit(device=True)
def product_of(dp, a, k, n, o, WV, Bbase, Bm, lut):
    """One product p(o, k, n). Operand: a = decoded activation, p = a * WV[k, o].
    Product: a = signed code, v = Bm[k, o] * a (Bm = sign(qw)*|qw| by product, sign(qw) for a
    pair table), p = sign(v) * lut[Bbase[k, o] + |v|] (Bbase holds the table row offset)."""
    if dp == DP_OPERAND:
        return a * WV[k, o]
    v = Bm[k, o] * a
    if v > 0:
        return lut[Bbase[k, o] + v]
    if v < 0:
        return -lut[Bbase[k, o] - v]
    return int64(0)
