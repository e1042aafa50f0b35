"""numba.cuda kernels of the transformer ops (ARITHMETIC.md §10-§16): bit-exact twins of
nupes_sim.transformer.oracle, integers only (int64, no float is formed in a kernel).

What one thread computes is nupes_sim.transformer.bodies (with the primitives it calls),
compiled with cuda.jit(device=True) from the same bytecode the CPU backend compiles; this file
holds the launches and the host side. One thread per output
element (matmul) or per row (softmax, layernorm): the sequence of every sum is the contract's,
so results do not depend on the launch shape (`threads` is a test parameter). Lookups and
layout ops are host NumPy indexing, as on the CPU backend (no arithmetic).
"""

import numpy as np

from nupes_sim.primitives import OVERFLOW_IDS
from nupes_sim.transformer import bodies
from nupes_sim.transformer import oracle as _oracle
from nupes_sim.transformer.layers import (
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

from ._compat import import_cuda

cuda = import_cuda()

_b = bodies.compile_all(cuda.jit(device=True))
matmul_element, softmax_row, layernorm_row = _b.matmul_element, _b.softmax_row, _b.layernorm_row
THREADS = 128


@cuda.jit
def matmul_kernel(
    a, b, dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out,
):  # fmt: skip
    """a (G, M, K), b (G, K, N) codes; one thread per output (g, m, n): bodies.matmul_element."""
    r = cuda.grid(1)
    if r < out.shape[0]:
        matmul_element(
            r, a, b, dp, alut, aq0, blut, bq0, plut, pbase, pstep, mode, width, tile, lo, hi,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, out,
        )  # fmt: skip


@cuda.jit
def softmax_kernel(
    x, keep, lut, pbits, prmode, mode, width, lo, hi,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, prob, out,
):  # fmt: skip
    """One thread per row of x (R, T); keep (R, T) uint8: bodies.softmax_row."""
    r = cuda.grid(1)
    if r < x.shape[0]:
        softmax_row(
            r, x, keep, lut, pbits, prmode, mode, width, lo, hi,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, exact, acc, prob, out,
        )  # fmt: skip


@cuda.jit
def layernorm_kernel(
    x, lut, q0, eps, R, G, Bt, mrmode,
    kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, mean, inv, y, out,
):  # fmt: skip
    """One thread per row of x (rows, C): bodies.layernorm_row."""
    r = cuda.grid(1)
    if r < x.shape[0]:
        layernorm_row(
            r, x, lut, q0, eps, R, G, Bt, mrmode,
            kind, thr, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid, mean, inv, y, out,
        )  # fmt: skip


# ---- host side ---------------------------------------------------------------------------------------
def _rq_args(requant):
    return bodies.requant_args(requant, cuda.to_device)


def _launch(kernel, n, threads, *args):
    if n > 0:
        kernel[(n + threads - 1) // threads, threads](*args)


def _threads(kw):
    return int(kw.get("threads") or THREADS)


def matmul(layer, a, b, **kw):
    bk, K = layer.check_inputs(a, b)
    lead, M, N = a.shape[:-2], a.shape[-2], bk.shape[-1]
    G = int(np.prod(lead, dtype=np.int64))
    d = cuda.to_device
    A = d(np.ascontiguousarray(a, np.int64).reshape(G, M, K))
    B = d(np.ascontiguousarray(bk, np.int64).reshape(G, K, N))
    size = G * M * N
    exact, acc, out = (cuda.device_array(size, np.int64) for _ in range(3))
    _launch(
        matmul_kernel,
        size,
        _threads(kw),
        A,
        B,
        *bodies.matmul_args(layer, d),
        *_rq_args(layer.requant),
        layer.seed,
        layer.tensor_id,
        exact,
        acc,
        out,
    )
    shape = lead + (M, N)
    h = (lambda t: t.copy_to_host().reshape(shape)) if size else (lambda t: np.empty(shape, np.int64))
    return dict(acc_exact=h(exact), acc=h(acc), out=h(out))


def softmax(layer, x, mask=None, **kw):
    keep = layer.keep_mask(x, mask)
    T = x.shape[-1]
    R = x.size // T if T else 0
    rows = x.shape[:-1]
    if x.size == 0:
        z = np.zeros(rows, np.int64)
        return dict(
            acc_exact=z, acc=z.copy(), prob=np.zeros(x.shape, np.int64), out=np.zeros(x.shape, np.int64)
        )
    exact, acc = cuda.device_array(R, np.int64), cuda.device_array(R, np.int64)
    prob, out = cuda.device_array(x.size, np.int64), cuda.device_array(x.size, np.int64)
    ac = layer.acc
    _launch(
        softmax_kernel,
        R,
        _threads(kw),
        cuda.to_device(np.ascontiguousarray(x, np.int64).reshape(R, T)),
        cuda.to_device(np.ascontiguousarray(keep, np.uint8).reshape(R, T)),
        cuda.to_device(layer.exp_lut),
        layer.prob_bits,
        layer.prob_rounding,
        OVERFLOW_IDS[ac.overflow],
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
    return dict(
        acc_exact=exact.copy_to_host().reshape(rows),
        acc=acc.copy_to_host().reshape(rows),
        prob=prob.copy_to_host().reshape(x.shape),
        out=out.copy_to_host().reshape(x.shape),
    )


def layernorm(layer, x, **kw):
    layer.check_input(x)
    C = layer.channels
    rows = x.size // C
    lead = x.shape[:-1]
    if rows == 0:
        return dict(
            mean=np.empty(lead, np.int64),
            inv=np.empty(lead, np.int64),
            y=np.empty(x.shape, np.int64),
            out=np.empty(x.shape, np.int64),
        )
    mean, inv = cuda.device_array(rows, np.int64), cuda.device_array(rows, np.int64)
    y, out = cuda.device_array(x.size, np.int64), cuda.device_array(x.size, np.int64)
    d = cuda.to_device
    _launch(
        layernorm_kernel,
        rows,
        _threads(kw),
        d(np.ascontiguousarray(x, np.int64).reshape(rows, C)),
        d(np.ascontiguousarray(layer.x_table.lut[0], np.int64)),
        layer.x_range.qmin,
        layer.eps_int,
        layer.inv_frac_bits,
        d(layer.gamma),
        d(layer.beta),
        layer.mean_rounding,
        *_rq_args(layer.requant),
        layer.seed,
        layer.tensor_id,
        mean,
        inv,
        y,
        out,
    )
    return dict(
        mean=mean.copy_to_host().reshape(lead),
        inv=inv.copy_to_host().reshape(lead),
        y=y.copy_to_host().reshape(x.shape),
        out=out.copy_to_host().reshape(x.shape),
    )


def _host(f):
    def run(layer, *inputs, **kw):
        return f(layer, *inputs)

    return run


OPS = {
    MatMul: matmul,
    Softmax: softmax,
    LayerNorm: layernorm,
    Embedding: _host(_oracle.embedding),
    ElementwiseTable: _host(_oracle.elementwise),
    Reshape: _host(_oracle.reshape),
    Transpose: _host(_oracle.transpose),
    Slice: _host(_oracle.slice_),
    PadMask: _host(_oracle.padmask),
}


def ptx_cases():
    """[(name, python function, argument types)] of the kernels above, as backend.py launches them."""
    from numba import types as T

    def arr(dt, nd):
        return T.Array(dt, nd, "C")

    i64, u8 = T.int64, T.uint8
    rq = (i64, arr(i64, 2)) + (i64,) * 7 + (i64, i64)  # requant_args, seed, tensor_id
    return [
        (
            "tx_matmul",
            matmul_kernel.py_func,
            (arr(i64, 3),) * 2
            + (i64, arr(i64, 1), i64, arr(i64, 1), i64)
            + (arr(i64, 1),) * 3  # plut, pbase, pstep
            + (i64,) * 5
            + rq
            + (arr(i64, 1),) * 3,
        ),
        (
            "tx_softmax",
            softmax_kernel.py_func,
            (arr(i64, 2), arr(u8, 2), arr(i64, 1)) + (i64,) * 6 + rq + (arr(i64, 1),) * 4,
        ),
        (
            "tx_layernorm",
            layernorm_kernel.py_func,
            (arr(i64, 2), arr(i64, 1), i64, i64, i64, arr(i64, 1), arr(i64, 1), i64)
            + rq
            + (arr(i64, 1),) * 4,
        ),
    ]


def compile_all_ptx(cc=(9, 0)):
    """{name: ptx} of ptx_cases() for compute capability `cc`, without a GPU (NVVM only).

    As kernels.compile_all_ptx: device functions are compiled for the *current* device's
    compute capability, so where no GPU is present that query answers `cc` during the call."""
    import types as _types

    from numba.cuda import dispatcher as _disp

    real = _disp.get_current_device
    if not cuda.is_available():
        _disp.get_current_device = lambda: _types.SimpleNamespace(compute_capability=tuple(cc))
    try:
        return {name: cuda.compile_ptx(f, sig, cc=cc)[0] for name, f, sig in ptx_cases()}
    finally:
        _disp.get_current_device = real
