"""The CPU backend's layer functions: input checks, path choice, and the other ops."""

import numpy as np

from .. import primitives as P
from ..layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from ..transformer.cpu import OPS as _TRANSFORMER_OPS
from . import kernels as K
from .fused import fused
from .gemm import mac_unfused
from .options import note, resolve
from .requant import requantize


def _weights(layer, sl=slice(None)):
    """Per (o, k) weight-side arrays of the datapath for output rows `sl`."""
    O = layer.out_channels
    qw = layer.w_codes.reshape(O, -1)[sl].astype(np.int64)
    tidx = layer.w_table_index[sl]
    if layer.datapath == "operand":
        return dict(WV=np.ascontiguousarray(layer.w_table.lut[tidx, qw - layer.w_range.qmin], np.int64))
    pt = layer.p_table
    lut = pt.lut  # int64, C-contiguous (ProductTable)
    L = lut.shape[1]
    mw = np.abs(qw)
    base, mul = pt.index_terms(mw)  # index(|qw|, |qx|) = base + mul·|qx|
    return dict(
        wsign=np.sign(qw),
        off=np.ascontiguousarray(tidx * L + base),
        mul=np.ascontiguousarray(mul),
        lut=lut.reshape(-1),
        mw=mw,
        tidx=tidx,
        L=L,
    )


def _decode_x(layer, x):
    """Activation side of the datapath: decoded values (operand) or signed codes (product)."""
    if layer.datapath == "operand":
        return np.ascontiguousarray(layer.x_table.lut[0], np.int64)[x - layer.x_range.qmin]
    return x


def _mac(layer, X, opts, sl=slice(None)):
    """(exact, acc) of shape (N, O_sl) for activation rows X (N, K) (decoded/codes, int64)."""
    wts = _weights(layer, sl)
    bias = np.ascontiguousarray(layer.bias[sl], np.int64)
    acc_cfg = layer.acc
    mode = P.OVERFLOW_IDS[acc_cfg.overflow]
    X = np.ascontiguousarray(X, np.int64)
    if mode != P.SATURATE or layer.no_overflow_possible():
        # wrap/exact depend on the exact sum only; saturate equals it when no_overflow_possible
        # (every prefix, tile partial and total is <= bound <= acc.hi, so no clamp acts).
        exact = mac_unfused(layer, X, wts, bias, opts) if opts.fast else None
        if exact is None:
            note("int_sum")
            if layer.datapath == "operand":
                exact = K.mac_operand_sum(X, wts["WV"], bias)
            else:
                exact = K.mac_product_sum(X, wts["wsign"], wts["off"], wts["mul"], wts["lut"], bias)
        acc = (
            exact.copy()
            if mode != P.WRAP
            else K.wrap_array(exact.reshape(-1), acc_cfg.width).reshape(exact.shape)
        )
        return exact, acc
    note("int_saturate")
    if layer.datapath == "operand":
        return K.mac_operand_sat(X, wts["WV"], bias, acc_cfg.lo, acc_cfg.hi, acc_cfg.tile)
    return K.mac_product_sat(
        X, wts["wsign"], wts["off"], wts["mul"], wts["lut"], bias, acc_cfg.lo, acc_cfg.hi, acc_cfg.tile
    )


def _check_x(rng, name, x):
    """rng.check_codes(name, x) (same errors), returning (min, max) of x ((0, 0) if empty)."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu" and x.size:
        mn, mx = K.minmax(np.ascontiguousarray(x).reshape(-1))
        mn, mx = int(mn), int(mx)
        if rng.qmin <= mn and mx <= rng.qmax:
            return mn, mx
    rng.check_codes(name, x)  # raises exactly as the oracle does
    return 0, 0


def linear(layer, x, fast=None, options=None):
    opts = resolve(options, fast)
    xmin, xmax = _check_x(layer.x_range, f"{layer.name} input", x)
    layer.check_shape(x)
    if opts.fast:
        res = fused(layer, x, xmin, xmax, opts)
        if res is not None:
            return res
    x = x.astype(np.int64)
    exact, acc = _mac(layer, _decode_x(layer, x), opts)
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def conv2d(layer, x, fast=None, options=None):
    opts = resolve(options, fast)
    xmin, xmax = _check_x(layer.x_range, f"{layer.name} input", x)
    O, Cg, kh, kw = layer.w_codes.shape
    ho, wo = layer.check_shape(x)
    B = x.shape[0]
    if opts.fast:
        res = fused(
            layer,
            x,
            xmin,
            xmax,
            opts,
            (layer.groups, Cg, kh, kw, layer.stride, layer.padding, layer.dilation, ho, wo),
        )
        if res is not None:
            return res
    x = x.astype(np.int64)
    xd = np.ascontiguousarray(_decode_x(layer, x))
    Og = O // layer.groups
    exact = np.empty((B * ho * wo, O), np.int64)
    acc = np.empty_like(exact)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    for g in range(layer.groups):
        cols = K.im2col(xd, g * Cg, Cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
        e, a = _mac(layer, cols, opts, slice(g * Og, (g + 1) * Og))
        exact[:, g * Og : (g + 1) * Og] = e
        acc[:, g * Og : (g + 1) * Og] = a
    exact = exact.reshape(B, ho, wo, O).transpose(0, 3, 1, 2).copy()
    acc = acc.reshape(B, ho, wo, O).transpose(0, 3, 1, 2).copy()
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


# ---- other layers ---------------------------------------------------------------------------
def _accumulate(prods, start, acc_cfg):
    R = prods.shape[0]
    st = np.broadcast_to(np.asarray(start, np.int64), (R,)).copy()
    return K.accumulate_rows(
        np.ascontiguousarray(prods, np.int64),
        st,
        P.OVERFLOW_IDS[acc_cfg.overflow],
        acc_cfg.width,
        acc_cfg.tile,
        acc_cfg.lo,
        acc_cfg.hi,
    )


def add(layer, a, b):
    layer.a_range.check_codes(f"{layer.name} input a", a)
    layer.b_range.check_codes(f"{layer.name} input b", b)
    if a.shape != b.shape:
        raise ValueError(f"{layer.name}: input shapes differ: {a.shape} and {b.shape}")
    cfg = layer.acc
    exact, acc = K.add_values(  # accumulate_rows of (va, vb), start 0, element by element
        np.ascontiguousarray(a, np.int64).reshape(-1),
        np.ascontiguousarray(b, np.int64).reshape(-1),
        np.ascontiguousarray(layer.a_table.lut[0], np.int64),
        layer.a_range.qmin,
        np.ascontiguousarray(layer.b_table.lut[0], np.int64),
        layer.b_range.qmin,
        P.OVERFLOW_IDS[cfg.overflow],
        cfg.width,
        cfg.tile,
        cfg.lo,
        cfg.hi,
    )
    exact, acc = exact.reshape(a.shape), acc.reshape(a.shape)
    out = requantize(acc, layer.requant, 1 if acc.ndim > 1 else 0, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def _out_size(name, n, k, s, p=0):
    o = (n + 2 * p - k) // s + 1
    if o < 0:
        raise ValueError(f"{name}: input of size {n} is smaller than the window {k} (negative output size)")
    return o


def maxpool2d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer.name}: input must be (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    kh, kw = layer.kernel
    ho = _out_size(layer.name, H, kh, layer.stride[0], layer.padding[0])
    wo = _out_size(layer.name, W, kw, layer.stride[1], layer.padding[1])
    if x.size and ho and wo:
        # the oracle takes numpy max of each window: every window holds at least one tap
        # because padding <= kernel/2 (MaxPool2d check)
        xi = np.ascontiguousarray(x).astype(np.int64) if x.dtype.kind in "iub" else np.ascontiguousarray(x)
        if xi.dtype.kind != "i":  # float inputs: max then cast, as the oracle (trunc is monotone)
            out = K.maxpool(np.trunc(xi).astype(np.int64), kh, kw, *layer.stride, *layer.padding, ho, wo)
        else:
            out = K.maxpool(xi, kh, kw, *layer.stride, *layer.padding, ho, wo)
        return dict(out=out)
    return dict(out=np.empty((B, C, max(ho, 0), max(wo, 0)), np.int64))


def avgpool2d(layer, x):
    kernel, stride = layer.check_input(x)
    B, C, H, W = x.shape
    ho = _out_size(layer.name, H, kernel[0], stride[0])
    wo = _out_size(layer.name, W, kernel[1], stride[1])
    v = np.asarray(layer.x_table.lut[0], np.int64)[x.astype(np.int64) - layer.x_range.qmin]
    win = K.pool_windows(np.ascontiguousarray(v), kernel[0], kernel[1], stride[0], stride[1], ho, wo)
    exact, acc = _accumulate(win, 0, layer.acc)
    exact, acc = exact.reshape(B, C, ho, wo), acc.reshape(B, C, ho, wo)
    out = requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def flatten(layer, x):
    return dict(out=x.reshape(x.shape[0], -1).copy())  # as the oracle: dtype kept


OPS = {Linear: linear, Conv2d: conv2d, Add: add, MaxPool2d: maxpool2d, AvgPool2d: avgpool2d, Flatten: flatten}
OPS.update(_TRANSFORMER_OPS)  # ARITHMETIC.md §10-§16, nupes_sim/transformer/cpu.py


def run_layer(layer, *inputs, fast=None, options=None):
    """Run one layer; identical results to nupes_sim.oracle.run_layer. `options` (a CpuOptions,
    default options.DEFAULT) chooses among exact paths; fast=False forbids the BLAS paths."""
    op = OPS[type(layer)]
    if op in (linear, conv2d):
        return op(layer, *inputs, fast=fast, options=options)
    resolve(options, fast)  # the same argument checks for every op
    return op(layer, *inputs)
