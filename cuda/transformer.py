"""numba.cuda kernels of the transformer ops (ARITHMETIC.md §10-§16): bit-exact twins of
nupes_sim.transformer.oracle, integers only (int64, no float is formed in a kernel).

The scalar rules are nupes_sim.primitives and nupes_sim.transformer.prims compiled with
cuda.jit(device=True) from the same bytecode the CPU backend compiles. One thread per output
element (matmul) or per row (softmax, layernorm): the sequence of every sum is the contract's,
so results do not depend on the launch shape (`threads` is a test parameter). Lookups and
layout ops are host NumPy indexing, as on the CPU backend (no arithmetic).
"""

import numpy as np

from nupes_sim import primitives as P
from nupes_sim.tables import Rescale, Thresholds
from nupes_sim.transformer import oracle as _oracle
from nupes_sim.transformer import prims
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

_p = P.compile_all(cuda.jit(device=True))
_q = prims.compile_all(cuda.jit(device=True))
sat_add, wrap, hash32, count_ge, rescale = _p.sat_add, _p.wrap, _p.hash32, _p.count_ge, _p.rescale
round_div, isqrt = _q.round_div, _q.isqrt

MODE_EXACT, MODE_WRAP, MODE_SAT = 0, 1, 2
_MODES = {"exact": MODE_EXACT, "wrap": MODE_WRAP, "saturate": MODE_SAT}
RQ_NONE, RQ_THR, RQ_RESCALE = 0, 1, 2
THREADS = 128


@cuda.jit(device=True)
def requant_one(v, i, kind, thr, mono, qmin, m, sh, zp, lo, hi, mode, seed, tid):
    if kind == RQ_NONE:
        return v
    if kind == RQ_THR:
        n = thr.shape[1]
        if mono:
            return qmin + count_ge(v, thr, 0, n)
        c = 0
        for j in range(n):
            if v >= thr[0, j]:
                c += 1
        return qmin + c
    r = hash32(seed, tid, i) if mode == P.STOCHASTIC else 0
    return rescale(v, m, sh, zp, lo, hi, mode, r)


@cuda.jit
def matmul_kernel(
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
    """a (G, M, K), b (G, K, N) codes; one thread per output (g, m, n), k ascending (§4)."""
    r = cuda.grid(1)
    G, M, K = a.shape
    N = b.shape[2]
    if r >= G * M * N:
        return
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
            sg = 1 if (qa > 0) == (qb > 0) else -1
            p = 0 if (qa == 0 or qb == 0) else sg * plut[idx]
        s += p
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
    v = s
    if mode == MODE_WRAP:
        v = wrap(s, width)
    elif mode == MODE_SAT:
        v = sat
    acc[r] = v
    out[r] = requant_one(v, r, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


@cuda.jit
def softmax_kernel(
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
    """One thread per row of x (R, T); keep (R, T) uint8; §12-§13."""
    r = cuda.grid(1)
    R, T = x.shape
    if r >= R:
        return
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
    v = s
    if mode == MODE_WRAP:
        v = wrap(s, width)
    elif mode == MODE_SAT:
        v = sat
    acc[r] = v
    for j in range(T):
        i = r * T + j
        p = 0
        if keep[r, j] != 0 and v > 0:
            w = hash32(seed, tid, i) if prmode == P.STOCHASTIC else 0
            p = round_div(lut[qm - x[r, j]] << pbits, v, prmode, w)
        prob[i] = p
        out[i] = requant_one(p, i, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


@cuda.jit
def layernorm_kernel(
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
    """One thread per row of x (rows, C); §14."""
    r = cuda.grid(1)
    rows, C = x.shape
    if r >= rows:
        return
    s = 0
    for c in range(C):
        s += lut[x[r, c] - q0]
    w = hash32(seed, tid, r) if mrmode == P.STOCHASTIC else 0
    mu = round_div(s, C, mrmode, w)
    V = 0
    for c in range(C):
        d = lut[x[r, c] - q0] - mu
        V += d * d
    iv = isqrt((C << (2 * R)) // (V + C * eps))
    mean[r] = mu
    inv[r] = iv
    for c in range(C):
        i = r * C + c
        v = (lut[x[r, c] - q0] - mu) * iv * G[c] + Bt[c]
        y[i] = v
        out[i] = requant_one(v, i, kind, thr, mono, qmin, m, sh, zp, rlo, rhi, rmode, seed, tid)


# ---- host side ---------------------------------------------------------------------------------------
def _rq_args(requant):
    d = cuda.to_device
    empty = d(np.zeros((1, 0), np.int64))
    if requant is None:
        return (RQ_NONE, empty, True, 0, 0, 0, 0, 0, 0, 0)
    if isinstance(requant, Thresholds):
        thr = np.ascontiguousarray(requant.thr[:1], np.int64)
        mono = bool(thr.shape[1] < 2 or (np.diff(thr, axis=1) >= 0).all())
        return (RQ_THR, d(thr), mono, requant.qmin, 0, 0, 0, 0, 0, 0)
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
    z1 = d(np.zeros(1, np.int64))
    if layer.datapath == "operand":
        args = (
            0,
            d(np.ascontiguousarray(layer.a_table.lut[0], np.int64)),
            layer.a_range.qmin,
            d(np.ascontiguousarray(layer.b_table.lut[0], np.int64)),
            layer.b_range.qmin,
            z1,
            z1,
            z1,
        )
    else:
        pt = layer.p_table
        base, step = pt.index_terms(np.arange(layer.a_range.max_magnitude + 1, dtype=np.int64))
        lut = d(np.ascontiguousarray(pt.lut[0], np.int64))
        args = (
            1,
            z1,
            0,
            z1,
            0,
            lut,
            d(np.ascontiguousarray(base, np.int64)),
            d(np.ascontiguousarray(step, np.int64)),
        )
    size = G * M * N
    exact, acc, out = (cuda.device_array(size, np.int64) for _ in range(3))
    ac = layer.acc
    _launch(
        matmul_kernel,
        size,
        _threads(kw),
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

    i64, b1, u8 = T.int64, T.boolean, T.uint8
    rq = (i64, arr(i64, 2), b1) + (i64,) * 7 + (i64, i64)
    return [
        (
            "tx_matmul",
            matmul_kernel.py_func,
            (
                arr(i64, 3),
                arr(i64, 3),
                i64,
                arr(i64, 1),
                i64,
                arr(i64, 1),
                i64,
                arr(i64, 1),
                arr(i64, 1),
                arr(i64, 1),
            )
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
