"""NumPy oracle of the transformer ops (ARITHMETIC.md §10-§16): obvious code, the truth.

Independent of transformer.prims: divisions and square roots use Python integers
(fractions.Fraction, math.isqrt); accumulation reuses the oracle's `accumulate`.
"""

import math
from fractions import Fraction

import numpy as np

from .. import primitives as P
from ..rounding import hash_words
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

HALF = Fraction(1, 2)


def accumulate(products, bias, acc):
    """nupes_sim.oracle.accumulate (§4), imported late: nupes_sim.oracle registers these ops."""
    from ..oracle import accumulate as f

    return f(products, bias, acc)


def requantize(values, requant, channel_axis, seed, tensor_id):
    """nupes_sim.oracle.requantize (§6), imported late for the same reason."""
    from ..oracle import requantize as f

    return f(values, requant, channel_axis, seed, tensor_id)


def round_div(n, d, mode, r=0):
    """n / d (d > 0) rounded to an integer by `mode`, exactly."""
    fr = Fraction(int(n), int(d))
    fl = math.floor(fr)
    rem = fr - fl
    if mode == P.FLOOR or rem == 0:
        return fl
    if mode == P.CEIL:
        return fl + 1
    if mode == P.TOWARD_ZERO:
        return math.trunc(fr)
    if mode == P.HALF_UP:
        return fl + (rem >= HALF)
    if mode == P.HALF_AWAY:
        return fl + (rem > HALF or (rem == HALF and fr > 0))
    if mode == P.HALF_EVEN:
        return round(fr)
    if mode == P.STOCHASTIC:
        return fl + (rem > Fraction(int(r), 2**32))
    raise ValueError(f"unknown rounding mode id {mode}")


def embedding(layer, idx):
    i = layer.check_input(idx)
    return dict(out=layer.codes[i])


def elementwise(layer, x):
    layer.in_range.check_codes(f"{layer.name} input", x)
    return dict(out=layer.table[x.astype(np.int64) - layer.in_range.qmin])


def matmul(layer, a, b):
    bk, K = layer.check_inputs(a, b)
    qa = a.astype(np.int64)[..., :, :, None]  # (..., M, K, 1)
    qb = bk.astype(np.int64)[..., None, :, :]  # (..., 1, K, N)
    if layer.datapath == "operand":
        prods = layer.a_table.lut[0, qa - layer.a_range.qmin] * layer.b_table.lut[0, qb - layer.b_range.qmin]
    else:
        pt = layer.p_table
        idx = pt.index(np.abs(qa), np.abs(qb))
        prods = np.sign(qa) * np.sign(qb) * pt.lut[0, idx]
    prods = np.moveaxis(prods, -2, -1)  # (..., M, N, K): k last, ascending
    exact, acc = accumulate(np.ascontiguousarray(prods), 0, layer.acc)
    out = requantize(acc, layer.requant, acc.ndim - 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def softmax(layer, x, mask=None):
    keep = layer.keep_mask(x, mask)
    q = x.astype(np.int64)
    qmax = np.where(keep, q, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
    d = np.where(keep, qmax - q, 0)
    e = np.where(keep, layer.exp_lut[d], 0)
    exact, total = accumulate(e, 0, layer.acc)  # masked positions add exactly 0
    words = hash_words(layer.seed, layer.tensor_id, np.arange(x.size)).reshape(x.shape)
    prob = np.zeros(x.shape, np.int64)
    for i in np.ndindex(x.shape):
        s = int(total[i[:-1]])
        if s > 0:
            prob[i] = round_div(int(e[i]) << layer.prob_bits, s, layer.prob_rounding, int(words[i]))
    out = requantize(prob, layer.requant, prob.ndim - 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=total, prob=prob, out=out)


def layernorm(layer, x):
    layer.check_input(x)
    C = layer.channels
    X = layer.x_table.lut[0, x.astype(np.int64) - layer.x_range.qmin]
    rows = X.reshape(-1, C)
    words = hash_words(layer.seed, layer.tensor_id, np.arange(rows.shape[0]))
    mean = np.empty(rows.shape[0], np.int64)
    inv = np.empty(rows.shape[0], np.int64)
    y = np.empty(rows.shape, np.int64)
    G, B = [int(g) for g in layer.gamma], [int(b) for b in layer.beta]
    for r in range(rows.shape[0]):
        xs = [int(v) for v in rows[r]]
        mu = round_div(sum(xs), C, layer.mean_rounding, int(words[r]))
        ds = [v - mu for v in xs]
        V = sum(v * v for v in ds)
        iv = math.isqrt((C << (2 * layer.inv_frac_bits)) // (V + C * layer.eps_int))
        mean[r], inv[r] = mu, iv
        y[r] = [ds[c] * iv * G[c] + B[c] for c in range(C)]
    y = y.reshape(x.shape)
    out = requantize(y, layer.requant, y.ndim - 1, layer.seed, layer.tensor_id)
    lead = x.shape[:-1]
    return dict(mean=mean.reshape(lead), inv=inv.reshape(lead), y=y, out=out)


def reshape(layer, x):
    return dict(out=x.reshape(layer.target_shape(x.shape)).copy())


def transpose(layer, x):
    return dict(out=np.ascontiguousarray(np.swapaxes(x, layer.dim0, layer.dim1)))


def slice_(layer, x):
    ax = layer.axis % x.ndim
    if layer.stop > x.shape[ax]:
        raise ValueError(f"{layer.name}: slice {layer.start}:{layer.stop} of an axis of length {x.shape[ax]}")
    sl = [slice(None)] * x.ndim
    sl[ax] = slice(layer.start, layer.stop)
    return dict(out=np.ascontiguousarray(x[tuple(sl)]))


def padmask(layer, ids):
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{layer.name}: token ids must be integers, got {ids.dtype}")
    return dict(out=(ids != layer.pad_id).astype(np.int64))


OPS = {
    Embedding: embedding,
    ElementwiseTable: elementwise,
    MatMul: matmul,
    Softmax: softmax,
    LayerNorm: layernorm,
    Reshape: reshape,
    Transpose: transpose,
    Slice: slice_,
    PadMask: padmask,
}
