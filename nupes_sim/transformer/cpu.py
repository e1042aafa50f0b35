"""Numba CPU kernels of the transformer ops: bit-exact twins of transformer.oracle.

Integers only (int64; no floats, no fastmath). What one output element or row computes is
transformer.bodies (with the primitives it calls), compiled here with numba.njit from the
bytecode cuda/transformer.py compiles; this file holds the loops (jit.kernel: cached on disk under
a key that covers this file, the bodies and the primitives) and the host side. Pure data
movement (embedding lookup, element-wise table lookup, layout ops) is NumPy indexing: no
arithmetic.
"""

import numpy as np
from numba import njit, prange

from ..cpu.jit import kernel
from ..primitives import OVERFLOW_IDS
from ..tables import Thresholds
from . import bodies, cpu_matmul, thrsearch
from . import oracle as _oracle
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

# The bodies, and the saturating step they call per product, are inlined into the loops (numba
# IR inlining): called, the saturating MatMul ran ~25% slower; inlining every primitive too
# took the first-call compile from ~10 s to ~23 s for no measurable gain.
_inline = njit(inline="always")


def _jit(f):
    return (_inline if f.__name__ in ("sat_step", "sat_add") else njit)(f)


_b = bodies.compile_all(_jit, _inline)
matmul_element, softmax_row, layernorm_row = _b.matmul_element, _b.softmax_row, _b.layernorm_row
_finish = cpu_matmul.make_finish(_b.accumulated, _b.requant_one)

# Threshold requantization as a separate pass over the stage by thrsearch's directory (same
# codes, claim (D)) instead of count_ge inside the kernels; False: inside (tests flip it).
THRESHOLD_PASS = True


def _requant(layer):
    """(kernel requant args, Thresholds for the separate pass or None)."""
    if THRESHOLD_PASS and isinstance(layer.requant, Thresholds):
        return bodies.requant_args(None), layer.requant
    return bodies.requant_args(layer.requant), None


def _threshold_pass(thr, v, out):
    if thr is not None and v.size:
        thrsearch.requantize(thr, v, out)


# ---- MatMul -------------------------------------------------------------------------------------------
@kernel(parallel=True)
def _matmul(
    a, b, dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out,
):  # fmt: skip
    """a (G, M, K), b (G, K, N) codes -> (G, M, N) flat: bodies.matmul_element per output."""
    for r in prange(out.size):
        matmul_element(
            r, a, b, dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out,
        )  # fmt: skip


def matmul(layer, a, b, fast=None, gemm="auto"):
    """fast: None = the exact-GEMM path (cpu_matmul) wherever its claim (E) applies, False =
    always the k-ascending scalar kernel, True = the GEMM path or ValueError. gemm: that
    path's GEMM (auto, int64, float64). Results never depend on either."""
    bk, K = layer.check_inputs(a, b)
    lead, M, N = a.shape[:-2], a.shape[-2], bk.shape[-1]
    G = int(np.prod(lead, dtype=np.int64))
    size = G * M * N
    exact, acc, out = (np.empty(size, np.int64) for _ in range(3))
    use = cpu_matmul.applies(layer) if fast is None else bool(fast)
    if use and not cpu_matmul.applies(layer):
        raise ValueError(f"{layer.name}: fast=True but the exact-GEMM path does not apply")
    rq, thr = _requant(layer)
    if size and use:
        s = cpu_matmul.exact_sums(layer, a.reshape(G, M, K), bk.reshape(G, K, N), gemm)
        _finish(
            s.reshape(-1), *cpu_matmul.finish_args(layer), *rq, layer.seed, layer.tensor_id, exact, acc, out
        )
    elif size:
        A = np.ascontiguousarray(a, np.int64).reshape(G, M, K)
        B = np.ascontiguousarray(bk, np.int64).reshape(G, K, N)
        _matmul(A, B, *bodies.matmul_args(layer), *rq, layer.seed, layer.tensor_id, exact, acc, out)
    _threshold_pass(thr, acc, out)
    shape = lead + (M, N)
    return dict(
        acc_exact=exact.reshape(shape),
        acc=acc.reshape(shape),
        out=(out if layer.requant is not None else acc.copy()).reshape(shape),
    )


# ---- Softmax ------------------------------------------------------------------------------------------
@kernel(parallel=True)
def _softmax(
    x, keep, lut, pbits, prmode, mode, width, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, prob, out,
):  # fmt: skip
    for r in prange(x.shape[0]):
        softmax_row(
            r, x, keep, lut, pbits, prmode, mode, width, lo, hi,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, prob, out,
        )  # fmt: skip


def softmax(layer, x, mask=None):
    keep = layer.keep_mask(x, mask)
    T = x.shape[-1]
    R = x.size // T if T else 0
    size = x.size
    exact, acc = np.empty(R, np.int64), np.empty(R, np.int64)
    prob, out = np.empty(size, np.int64), np.empty(size, np.int64)
    ac = layer.acc
    rq, thr = _requant(layer)
    if size:
        _softmax(
            np.ascontiguousarray(x, np.int64).reshape(R, T),
            np.ascontiguousarray(keep).reshape(R, T),
            layer.exp_lut,
            layer.prob_bits,
            layer.prob_rounding,
            OVERFLOW_IDS[ac.overflow],
            ac.width,
            ac.lo,
            ac.hi,
            *rq,
            layer.seed,
            layer.tensor_id,
            exact,
            acc,
            prob,
            out,
        )
        _threshold_pass(thr, prob, out)
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
@kernel(parallel=True)
def _layernorm(
    x, lut, q0, eps, R, G, Bt, mrmode,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, mean, inv, y, out,
):  # fmt: skip
    for r in prange(x.shape[0]):
        layernorm_row(
            r, x, lut, q0, eps, R, G, Bt, mrmode,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, mean, inv, y, out,
        )  # fmt: skip


def layernorm(layer, x):
    layer.check_input(x)
    C = layer.channels
    rows = x.size // C
    mean, inv = np.empty(rows, np.int64), np.empty(rows, np.int64)
    y, out = np.empty(x.size, np.int64), np.empty(x.size, np.int64)
    rq, thr = _requant(layer)
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
            *rq,
            layer.seed,
            layer.tensor_id,
            mean,
            inv,
            y,
            out,
        )
        _threshold_pass(thr, y, out)
    lead = x.shape[:-1]
    return dict(
        mean=mean.reshape(lead),
        inv=inv.reshape(lead),
        y=y.reshape(x.shape),
        out=(out if layer.requant is not None else y.copy()).reshape(x.shape),
    )


# ---- element-wise tables: out = table[x - qmin], a gather (the oracle's rule, one pass) ---------------
@kernel(parallel=True)
def _gather(x, table, q0, out):
    for i in prange(x.size):
        out[i] = table[x[i] - q0]


def elementwise(layer, x):
    layer.in_range.check_codes(f"{layer.name} input", x)  # every index below is in the table
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, layer.table.dtype)
    if x.size:
        _gather(x.reshape(-1), layer.table, layer.in_range.qmin, out.reshape(-1))
    return dict(out=out)


# Lookups and layout ops: no arithmetic, the oracle's NumPy indexing is the implementation.
OPS = {
    MatMul: matmul,
    Softmax: softmax,
    LayerNorm: layernorm,
    Embedding: _oracle.embedding,
    ElementwiseTable: elementwise,
    Reshape: _oracle.reshape,
    Transpose: _oracle.transpose,
    Slice: _oracle.slice_,
    PadMask: _oracle.padmask,
}
