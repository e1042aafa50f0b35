"""NumPy oracle: the arithmetic contract written as plainly as possible (slow by design).

Independent of nupes_sim.primitives: rounding uses exact rationals (fractions.Fraction),
accumulation uses Python integers (object arrays), requantization counts thresholds by
direct comparison. Tests use this module as the truth for every other backend.

Memory: MAC layers are computed in blocks of (input positions x output channels) whose
products fit `memory.chunk_budget()`; every output element depends only on its own
products and bias, so blocking changes no value (it only bounds the working set).
"""

import math
from fractions import Fraction

import numpy as np

from . import primitives as P
from .layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from .memory import chunk_budget
from .rounding import hash_words
from .tables import Rescale, Thresholds

HALF = Fraction(1, 2)


def round_div_pow2(x, s, mode, r=0):
    """x / 2^s rounded to an integer by `mode`, exactly (Python ints / Fractions)."""
    x, s = int(x), int(s)
    fr = Fraction(x, 2**s)
    fl = math.floor(fr)
    rem = fr - fl
    if mode == P.FLOOR:
        return fl
    if mode == P.CEIL:
        return math.ceil(fr)
    if mode == P.TOWARD_ZERO:
        return math.trunc(fr)
    if mode == P.HALF_UP:
        return fl + (rem >= HALF)
    if mode == P.HALF_AWAY:
        if rem == HALF:
            return fl + 1 if fr > 0 else fl
        return fl + (rem > HALF)
    if mode == P.HALF_EVEN:
        return round(fr)  # Fraction.__round__ rounds half to even
    if mode == P.DOUBLE_ROUND:
        return _tflite_double_round(x, s)
    if mode == P.STOCHASTIC:
        # Round up iff the fraction exceeds a uniform draw u = r / 2^32 quantized to the
        # resolution of the fraction: 2^-s when s <= 32, else 2^-32.
        if s <= 32:
            return fl + (rem > Fraction(math.floor(Fraction(int(r), 2**32) * 2**s), 2**s))
        return fl + (math.floor(rem * 2**32) > int(r))
    raise ValueError(f"unknown rounding mode id {mode}")


def _tflite_double_round(x, s):
    """x/2^s as TFLite MultiplyByQuantizedMultiplier rounds acc·m (gemmlowp): x·2^(31-s)
    through SaturatingRoundingDoublingHighMul's rounding (nudge 2^30 or 1 - 2^30, divide by
    2^31 truncating toward zero), then RoundingDivideByPOT by s - 31 (ties away from zero)."""
    if s <= 31:
        ab = x * 2 ** (31 - s)
        e = 0
    else:
        ab, e = x, s - 31
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    n = ab + nudge
    high = abs(n) // 2**31 * (1 if n >= 0 else -1)  # C++ int64 division truncates
    if e == 0:
        return high
    mask = 2**e - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> e) + (1 if remainder > threshold else 0)


def wrap(x, width):
    """Two's complement reduction of a Python int to `width` bits."""
    h = 2 ** (width - 1)
    return (int(x) + h) % (2 * h) - h


def accumulate(products, bias, acc):
    """Apply the accumulator contract along the last axis of `products`.

    products: int64 array (..., K), each |p| < 2^62; bias: int array broadcastable to (...).
    Returns (exact, result) as int64 arrays of shape (...).
    """
    prods = products.astype(object)
    start = np.broadcast_to(np.asarray(bias, dtype=object), prods.shape[:-1]).copy()
    exact = start + prods.sum(axis=-1) if prods.shape[-1] else start
    lo, hi = acc.lo, acc.hi
    if acc.overflow == "exact":
        result = exact
    elif acc.overflow == "wrap":
        result = np.vectorize(lambda v: wrap(v, acc.width), otypes=[object])(exact) if exact.size else exact
    else:

        def clamp(v):
            return np.where(v > hi, hi, np.where(v < lo, lo, v))

        K = prods.shape[-1]
        T = acc.tile if acc.tile else K
        result = start
        for t0 in range(0, K, max(T, 1)):
            if acc.tile:
                part = np.zeros(prods.shape[:-1], dtype=object)
                for k in range(t0, min(t0 + T, K)):
                    part = clamp(part + prods[..., k])
                result = clamp(result + part)
            else:
                for k in range(t0, min(t0 + T, K)):
                    result = clamp(result + prods[..., k])
    return np.asarray(exact, dtype=object).astype(np.int64), np.asarray(result, dtype=object).astype(np.int64)


def requantize(values, requant, channel_axis, seed, tensor_id):
    """Requantize an int64 accumulator tensor; channel_axis picks the threshold/multiplier row."""
    if requant is None:
        return values.copy()
    n_ch = values.shape[channel_axis] if values.ndim else 1
    ch = np.broadcast_to(
        np.arange(n_ch).reshape([-1 if a == channel_axis else 1 for a in range(values.ndim)]), values.shape
    )
    if isinstance(requant, Thresholds):
        rows = requant.thr[np.where(requant.thr.shape[0] == 1, 0, ch)]  # (..., n)
        return requant.qmin + (values[..., None] >= rows).sum(axis=-1).astype(np.int64)
    assert isinstance(requant, Rescale)
    rsel = np.where(requant.multiplier.shape[0] == 1, 0, ch)
    m, sh = requant.multiplier[rsel], requant.shift[rsel]
    words = hash_words(seed, tensor_id, np.arange(values.size)).reshape(values.shape)
    out = np.empty(values.shape, np.int64)
    for i in np.ndindex(values.shape):
        y = round_div_pow2(int(values[i]) * int(m[i]), int(sh[i]), requant.rounding, int(words[i]))
        out[i] = min(max(y + requant.zero_point, requant.qmin), requant.qmax)
    return out


def _mac_products(layer, x_cols, valid):
    """Products (..., O, K) for input columns x_cols (..., K) against every output channel."""
    qw = layer.w_codes.reshape(layer.out_channels, -1).astype(np.int64)
    qx = x_cols.astype(np.int64)
    if layer.datapath == "operand":
        wv = layer.w_table.lut[layer.w_table_index, qw - layer.w_range.qmin]  # (O, K)
        xv = layer.x_table.lut[0, qx - layer.x_range.qmin]  # (..., K)
        prods = xv[..., None, :] * wv
    else:
        pt = layer.p_table
        index = pt.index(np.abs(qw), np.abs(qx)[..., None, :])  # (..., O, K)
        mags = pt.lut[np.broadcast_to(layer.w_table_index, index.shape), index]
        prods = np.sign(qw) * np.sign(qx)[..., None, :] * mags
    return np.where(valid[..., None, :], prods, 0)


# bytes of working memory per product in _mac_products + accumulate (int64 LUT values, the
# index arrays, the object copy and its Python ints, the running sums): a generous bound
BYTES_PER_PRODUCT = 96


def blocks(n_rows, n_cols, k, budget=None):
    """(rows per block, channels per block) so that rows*channels*k products fit the budget."""
    cap = max(1, (chunk_budget() if budget is None else budget) // (BYTES_PER_PRODUCT * max(k, 1)))
    cb = max(1, min(n_cols, cap))
    rb = max(1, min(n_rows, cap // cb))
    return rb, cb


def mac_rows(layer, cols, valid, acc_cfg):
    """(exact, acc) int64 (R, O) of MAC rows: cols/valid (R, K) against every output channel
    of `layer` (or a group view), computed block by block (see module doc)."""
    R, K = cols.shape
    O = layer.out_channels
    exact = np.empty((R, O), np.int64)
    acc = np.empty((R, O), np.int64)
    rb, cb = blocks(R, O, K)
    for o0 in range(0, O, cb):
        sub = _ChannelView(layer, slice(o0, min(o0 + cb, O)))
        for r0 in range(0, R, rb):
            prods = _mac_products(sub, cols[r0 : r0 + rb], valid[r0 : r0 + rb])  # (rb, cb, K)
            e, a = accumulate(prods, sub.bias[None, :], acc_cfg)
            exact[r0 : r0 + rb, o0 : o0 + cb] = e
            acc[r0 : r0 + rb, o0 : o0 + cb] = a
    return exact, acc


def linear(layer, x):
    layer.x_range.check_codes(f"{layer.name} input", x)
    layer.check_shape(x)
    exact, acc = mac_rows(layer, x.astype(np.int64), np.ones(x.shape, bool), layer.acc)  # (B, O)
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def im2col(x, kernel, stride, padding, dilation, pad_value=0, rows=None):
    """Columns (B, Ho, Wo, C, kh, kw) of x (B, C, H, W) and the validity mask of each tap;
    rows=(r0, r1) builds only output rows r0 <= oh < r1 (shape (B, r1 - r0, Wo, ...))."""
    B, C, H, W = x.shape
    kh, kw = kernel
    ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    r0, r1 = (0, ho) if rows is None else rows
    cols = np.full((B, r1 - r0, wo, C, kh, kw), pad_value, dtype=np.int64)
    valid = np.zeros((B, r1 - r0, wo, C, kh, kw), dtype=bool)
    for oh in range(r0, r1):
        for ow in range(wo):
            for i in range(kh):
                for j in range(kw):
                    h = oh * stride[0] - padding[0] + i * dilation[0]
                    w = ow * stride[1] - padding[1] + j * dilation[1]
                    if 0 <= h < H and 0 <= w < W:
                        cols[:, oh - r0, ow, :, i, j] = x[:, :, h, w]
                        valid[:, oh - r0, ow, :, i, j] = True
    return cols, valid


def conv_row_blocks(layer, B, ho, wo):
    """Output-row ranges [(r0, r1)] whose im2col columns (int64 + mask) fit the chunk budget."""
    k = int(np.prod(layer.w_codes.shape[1:])) * layer.groups
    per_row = max(1, B * wo * k * 9)
    n = max(1, min(ho, chunk_budget() // per_row))
    return [(r, min(r + n, ho)) for r in range(0, ho, n)]


def conv2d(layer, x):
    layer.x_range.check_codes(f"{layer.name} input", x)
    O, Cg, kh, kw = layer.w_codes.shape
    ho, wo = layer.check_shape(x)
    B = x.shape[0]
    pad_code = 0 if layer.x_range.qmin <= 0 <= layer.x_range.qmax else layer.x_range.qmin
    Og = O // layer.groups
    exact = np.empty((B, ho, wo, O), np.int64)
    acc = np.empty_like(exact)
    for r0, r1 in conv_row_blocks(layer, B, ho, wo):  # output rows are independent
        cols, valid = im2col(x, (kh, kw), layer.stride, layer.padding, layer.dilation, pad_code, (r0, r1))
        n = B * (r1 - r0) * wo
        for g in range(layer.groups):
            sub = _group_view(layer, g, Og)
            c = cols[:, :, :, g * Cg : (g + 1) * Cg].reshape(n, -1)
            v = valid[:, :, :, g * Cg : (g + 1) * Cg].reshape(n, -1)
            e, a = mac_rows(sub, c, v, layer.acc)  # (n, Og)
            exact[:, r0:r1, :, g * Og : (g + 1) * Og] = e.reshape(B, r1 - r0, wo, Og)
            acc[:, r0:r1, :, g * Og : (g + 1) * Og] = a.reshape(B, r1 - r0, wo, Og)
    exact = exact.transpose(0, 3, 1, 2).copy()
    acc = acc.transpose(0, 3, 1, 2).copy()
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


class _GroupView:
    """The slice of a conv layer's weights/tables belonging to one group."""

    def __init__(self, layer, g, og):
        sl = slice(g * og, (g + 1) * og)
        self.w_codes = layer.w_codes[sl]
        self.out_channels = og
        self.w_table_index = layer.w_table_index[sl]
        self.bias = layer.bias[sl]
        for name in ("datapath", "w_table", "x_table", "p_table", "w_range", "x_range"):
            setattr(self, name, getattr(layer, name))


def _group_view(layer, g, og):
    return _GroupView(layer, g, og)


class _ChannelView:
    """Output channels `sl` of a layer or group view (weights, table rows and bias)."""

    def __init__(self, layer, sl):
        self.w_codes = layer.w_codes[sl]
        self.out_channels = self.w_codes.shape[0]
        self.w_table_index = layer.w_table_index[sl]
        self.bias = layer.bias[sl]
        for name in ("datapath", "w_table", "x_table", "p_table", "w_range", "x_range"):
            setattr(self, name, getattr(layer, name))


def add(layer, a, b):
    layer.a_range.check_codes(f"{layer.name} input a", a)
    layer.b_range.check_codes(f"{layer.name} input b", b)
    if a.shape != b.shape:
        raise ValueError(f"{layer.name}: input shapes differ: {a.shape} and {b.shape}")
    va = layer.a_table.lut[0, a.astype(np.int64) - layer.a_range.qmin]
    vb = layer.b_table.lut[0, b.astype(np.int64) - layer.b_range.qmin]
    exact, acc = accumulate(np.stack([va, vb], axis=-1), 0, layer.acc)
    out = requantize(acc, layer.requant, 1 if acc.ndim > 1 else 0, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def maxpool2d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer.name}: input must be (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    kh, kw = layer.kernel
    ho = (H + 2 * layer.padding[0] - kh) // layer.stride[0] + 1
    wo = (W + 2 * layer.padding[1] - kw) // layer.stride[1] + 1
    out = np.empty((B, C, ho, wo), np.int64)
    for oh in range(ho):
        for ow in range(wo):
            h0, w0 = oh * layer.stride[0] - layer.padding[0], ow * layer.stride[1] - layer.padding[1]
            win = x[:, :, max(h0, 0) : min(h0 + kh, H), max(w0, 0) : min(w0 + kw, W)]
            out[:, :, oh, ow] = win.reshape(B, C, -1).max(axis=-1)
    return dict(out=out)


def avgpool2d(layer, x):
    kernel, stride = layer.check_input(x)
    B, C, H, W = x.shape
    v = layer.x_table.lut[0, x.astype(np.int64) - layer.x_range.qmin]
    cols, _ = im2col(v, kernel, stride, (0, 0), (1, 1))  # (B, Ho, Wo, C, kh, kw)
    cols = cols.transpose(0, 3, 1, 2, 4, 5).reshape(*cols.shape[:1], C, cols.shape[1], cols.shape[2], -1)
    exact, acc = accumulate(cols, 0, layer.acc)
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def flatten(layer, x):
    return dict(out=x.reshape(x.shape[0], -1).copy())


OPS = {Linear: linear, Conv2d: conv2d, Add: add, MaxPool2d: maxpool2d, AvgPool2d: avgpool2d, Flatten: flatten}


def run_layer(layer, *inputs):
    return OPS[type(layer)](layer, *inputs)


# The transformer ops (ARITHMETIC.md §10-§16) live in their own modules; they reuse
# accumulate/requantize above, hence the late import.
from .transformer.oracle import OPS as _TRANSFORMER_OPS  # noqa: E402

OPS.update(_TRANSFORMER_OPS)
