"""numba.cuda backend: ``run_layer(layer, *inputs)`` returns exactly what
``nupes_sim.oracle.run_layer`` returns (same keys, int64 arrays, shapes, values, and the
same input validation errors).

``ensure_available()`` raises nupes_sim.extras.Unavailable (a RuntimeError) naming the cause
when numba-cuda is missing, fails to import, or ``numba.cuda.is_available()`` is false. There is never a silent fallback to
another backend. The CUDA simulator (NUMBA_ENABLE_CUDASIM=1) counts as available.

Launch configuration (results never depend on it; the tests run several):
  run_layer(layer, *inputs, threads=None, gemm=None, fast=None)
  threads: threads per block of the one-thread-per-element kernels (default THREADS)
  gemm:    dict(BM, BN, BK, TM, TN) tile shape of the register-tiled MAC kernel (default
           kernels.gemm_default: GEMM for the int32 operand path, BK=8 for the others)
  fast:    False forces the sequential per-output MAC kernel on every mode (default FAST)
``STATS`` counts which MAC path ran ("gemm_int32", "gemm_int64", "seq").
"""

import numpy as np

from nupes_sim import primitives as P
from nupes_sim.extras import Unavailable
from nupes_sim.layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.tables import Rescale, Thresholds

from ._compat import SIMULATOR, import_cuda

THREADS = 128
GEMM = dict(BM=128, BN=128, BK=16, TM=8, TN=8)  # int32 operand path (others: kernels.gemm_default)
FAST = True
STATS = {}
_I31 = 2**31


def ensure_available():
    """Raise Unavailable (a RuntimeError) naming the cause unless numba.cuda can run kernels here."""
    cuda = import_cuda()
    if not cuda.is_available():
        reason = "no CUDA driver or GPU is visible"
        try:
            cuda.current_context()
        except Exception as e:  # CudaSupportError & co. carry the driver's reason
            reason = f"{type(e).__name__}: {e}"
        raise Unavailable(
            f"the cuda backend cannot run: numba.cuda.is_available() is False ({reason}). "
            "Use backend='cpu' or 'numpy', or NUMBA_ENABLE_CUDASIM=1 for the (slow) "
            "CUDA simulator"
        )


def _k():
    from . import kernels

    return kernels


def _note(path):
    STATS[path] = STATS.get(path, 0) + 1


def _launch(kernel, n, threads, *args):
    if n > 0:
        kernel[(n + threads - 1) // threads, threads](*args)


_GEMMS = {}


def _gemm_kernel(acc_type, dp, cfg, lut_shared):
    K = _k()
    key = (acc_type, dp, tuple(sorted(cfg.items())), lut_shared)
    if key not in _GEMMS:
        t = K.int32 if acc_type == "int32" else K.int64
        _GEMMS[key] = K.make_gemm(t, dp, lut_shared=lut_shared, **cfg)
    return _GEMMS[key]


# ------------------------------------------------------------------------------------------
# MAC layers
# ------------------------------------------------------------------------------------------
def _maxabs(a):
    a = np.asarray(a)
    return int(np.abs(a.astype(object) if a.dtype == np.int64 else a).max(initial=0)) if a.size else 0


def _check_product_range(layer):
    """Refuse layers whose single products can reach 2^62 or whose bound is corrupt (Python ints)."""
    if layer.datapath == "operand":
        top = _maxabs(layer.w_table.lut) * _maxabs(layer.x_table.lut)
    else:
        top = _maxabs(layer.p_table.lut)
    if top >= 2**62 or int(layer.bound.min(initial=0)) < 0:
        raise ValueError(
            f"{layer.name}: a single product can reach {top} >= 2^62 (or the layer bound "
            "is corrupt); lower the fractional bits"
        )


def _check_product_index(layer, x):
    """The oracle indexes p_table.lut with numpy (IndexError when out of range); so do we."""
    pt = layer.p_table
    xm = layer.x_range.max_magnitude if x.size == 0 else int(np.abs(x).max())
    mw = int(np.abs(layer.w_codes.astype(np.int64)).max(initial=0))
    top = mw * xm if pt.by_product else mw * (pt.mx + 1) + xm
    if top >= pt.lut.shape[1]:
        raise IndexError(
            f"{layer.name}: product index {top} is out of bounds for a table of {pt.lut.shape[1]} entries"
        )


def _weights_t(layer, sl):
    """Weight side in (K, O_sl) layout: WV (operand) or Bbase, Bm (product)."""
    O = layer.out_channels
    qw = layer.w_codes.reshape(O, -1)[sl].astype(np.int64)
    tidx = layer.w_table_index[sl]
    if layer.datapath == "operand":
        wv = np.asarray(layer.w_table.lut, np.int64)[tidx, qw - layer.w_range.qmin]
        return dict(WV=np.ascontiguousarray(wv.T))
    pt = layer.p_table
    L = pt.lut.shape[1]
    mw = np.abs(qw)
    if pt.by_product:
        base, m = tidx * L, qw  # v = qw*qx: |v| = |qw||qx|, sign(v) = sign(qw)sign(qx)
    else:
        base, m = tidx * L + mw * (pt.mx + 1), np.sign(qw)  # v = sign(qw)*qx
    return dict(Bbase=np.ascontiguousarray(base.T), Bm=np.ascontiguousarray(m.T))


def _plan(layer, fast):
    """('gemm', acc_type) for an order-free sum with a proof of exactness, else ('seq', None)."""
    order_free = layer.acc.overflow != "saturate" or layer.no_overflow_possible()
    if not (fast and order_free):
        return "seq", None
    bound = int(layer.bound.max(initial=0))
    if layer.datapath == "operand":
        small = bound < _I31 and _maxabs(layer.x_table.lut) < _I31 and _maxabs(layer.w_table.lut) < _I31
    else:
        T, L = layer.p_table.lut.shape
        if T * L >= _I31:  # int32 LUT offsets in the kernel
            return "seq", None
        small = bound < _I31
    # int32: every partial sum is a sum of a subset of the products (|.| <= bound < 2^31) and
    # each operand/product fits, so no int32 operation can overflow; int64: bound < 2^63.
    return "gemm", ("int32" if small else "int64")


def _mac_weights(layer, sl, plan):
    """Device side of the weights of output channels `sl` for the MAC kernels: host work
    (decode/table offsets, (K, O) transpose) and host-to-device copies, once per call."""
    K = _k()
    cuda = K.cuda
    w = _weights_t(layer, sl)
    path, acc_type = plan
    bias = cuda.to_device(np.ascontiguousarray(layer.bias[sl], np.int64))
    dummy = cuda.to_device(np.zeros((1, 1), np.int64))
    if layer.datapath == "operand":
        wdt = np.int32 if acc_type == "int32" else np.int64
        return dict(
            WV=cuda.to_device(w["WV"].astype(wdt)),
            Bb=dummy,
            Bm=dummy,
            lut=cuda.to_device(np.zeros(1, np.int64)),
            bias=bias,
        )
    wdt = np.int32 if path == "gemm" else np.int64
    return dict(
        WV=dummy,
        Bb=cuda.to_device(w["Bbase"].astype(wdt)),
        Bm=cuda.to_device(w["Bm"].astype(wdt)),
        lut=cuda.to_device(np.ascontiguousarray(layer.p_table.lut, np.int64).reshape(-1)),
        bias=bias,
    )


def _mac_launch(layer, wd, AT, N, HW, O_total, o_off, exact_d, acc_d, plan, opt):
    """The MAC kernel launch alone (device arrays from _mac_weights): no host work."""
    K = _k()
    dp = K.DP_OPERAND if layer.datapath == "operand" else K.DP_PRODUCT
    Kd = layer.k
    O = wd["bias"].shape[0]
    acc = layer.acc
    mode = K.MODES[acc.overflow]
    path, acc_type = plan
    WV, Bb, Bm, lut, bias = wd["WV"], wd["Bb"], wd["Bm"], wd["lut"], wd["bias"]
    if N == 0 or O == 0:
        return
    if path == "gemm":
        cfg, lut_max = K.gemm_default(acc_type, dp)
        if opt.get("gemm") is not None:
            cfg = dict(opt["gemm"])
        lut_shared = lut_max if (dp == K.DP_PRODUCT and lut.shape[0] <= lut_max) else 0
        kern = _gemm_kernel(acc_type, dp, cfg, lut_shared)
        nt = (cfg["BM"] // cfg["TM"]) * (cfg["BN"] // cfg["TN"])
        grid = K.gemm_grid(N, O, cfg["BM"], cfg["BN"])
        emode = K.MODE_EXACT if mode == K.MODE_SAT else mode  # saturate that cannot clamp
        B1 = WV if dp == K.DP_OPERAND else Bb  # make_gemm: B1 = WV or Bbase, B2 = Bm (product)
        kern[grid, nt](AT, B1, Bm, lut, bias, N, O, Kd, emode, acc.width, HW, O_total, o_off, exact_d, acc_d)
        _note(f"gemm_{acc_type}")
    else:
        _launch(
            K.mac_seq,
            N * O,
            opt["threads"],
            dp,
            AT,
            WV,
            Bb,
            Bm,
            lut,
            bias,
            N,
            O,
            Kd,
            mode,
            acc.width,
            acc.tile,
            acc.lo,
            acc.hi,
            HW,
            O_total,
            o_off,
            exact_d,
            acc_d,
        )
        _note("seq")


def _mac(layer, AT, N, sl, HW, O_total, o_off, exact_d, acc_d, plan, opt):
    wd = _mac_weights(layer, sl, plan)
    _mac_launch(layer, wd, AT, N, HW, O_total, o_off, exact_d, acc_d, plan, opt)


def _at_dtype(layer, plan):
    if plan[0] == "gemm" and (plan[1] == "int32" or layer.datapath == "product"):
        return np.int32
    return np.int64


def _x_lut(layer):
    """Activation LUT of the datapath: decode table (operand) or identity on codes (product)."""
    if layer.datapath == "operand":
        return np.ascontiguousarray(layer.x_table.lut[0], np.int64)
    return np.arange(layer.x_range.qmin, layer.x_range.qmax + 1, dtype=np.int64)


def _opts(threads=None, gemm=None, fast=None):
    return dict(
        threads=THREADS if threads is None else int(threads),
        gemm=gemm,
        fast=FAST if fast is None else bool(fast),
    )


def linear(layer, x, **kw):
    opt = _opts(**kw)
    layer.x_range.check_codes(f"{layer.name} input", x)
    layer.check_shape(x)
    x = np.ascontiguousarray(x, np.int64)
    _check_product_range(layer)
    if layer.datapath == "product":
        _check_product_index(layer, x)
    K = _k()
    cuda = K.cuda
    B, O, Kd = x.shape[0], layer.out_channels, layer.k
    plan = _plan(layer, opt["fast"])
    AT = cuda.device_array((Kd, B), _at_dtype(layer, plan))
    if B and Kd:
        _launch(
            K.decode_t,
            B * Kd,
            opt["threads"],
            cuda.to_device(x),
            cuda.to_device(_x_lut(layer)),
            layer.x_range.qmin,
            AT,
        )
    exact_d = cuda.device_array(B * O, np.int64)
    acc_d = cuda.device_array(B * O, np.int64)
    _mac(layer, AT, B, slice(None), 1, O, 0, exact_d, acc_d, plan, opt)
    return _finish_mac(layer, exact_d, acc_d, (B, O), opt)


def conv2d(layer, x, **kw):
    opt = _opts(**kw)
    layer.x_range.check_codes(f"{layer.name} input", x)
    O, Cg, kh, kw_ = layer.w_codes.shape
    ho, wo = layer.check_shape(x)
    B = x.shape[0]
    x = np.ascontiguousarray(x, np.int64)
    _check_product_range(layer)
    if layer.datapath == "product":
        _check_product_index(layer, x)
    K = _k()
    cuda = K.cuda
    plan = _plan(layer, opt["fast"])
    N, Kd, Og = B * ho * wo, Cg * kh * kw_, O // layer.groups
    exact_d = cuda.device_array(B * O * ho * wo, np.int64)
    acc_d = cuda.device_array(B * O * ho * wo, np.int64)
    xd = cuda.to_device(x)
    lut = cuda.to_device(_x_lut(layer))
    dp = K.DP_OPERAND if layer.datapath == "operand" else K.DP_PRODUCT
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    AT = cuda.device_array((Kd, N), _at_dtype(layer, plan))
    for g in range(layer.groups):
        if N and Kd:
            _launch(
                K.im2col_t,
                N * Kd,
                opt["threads"],
                xd,
                lut,
                layer.x_range.qmin,
                dp,
                g * Cg,
                Cg,
                kh,
                kw_,
                sh,
                sw,
                ph,
                pw,
                dh,
                dw,
                ho,
                wo,
                AT,
            )
        _mac(layer, AT, N, slice(g * Og, (g + 1) * Og), ho * wo, O, g * Og, exact_d, acc_d, plan, opt)
    return _finish_mac(layer, exact_d, acc_d, (B, O, ho, wo), opt)


def _finish_mac(layer, exact_d, acc_d, shape, opt):
    out = _requantize(acc_d, shape, layer.requant, 1, layer.seed, layer.tensor_id, opt)
    return dict(
        acc_exact=exact_d.copy_to_host().reshape(shape), acc=acc_d.copy_to_host().reshape(shape), out=out
    )


# ------------------------------------------------------------------------------------------
# Requantization
# ------------------------------------------------------------------------------------------
def _requantize(acc_d, shape, requant, channel_axis, seed, tensor_id, opt):
    """Same contract as oracle.requantize on the flat device array acc_d of `shape`."""
    K = _k()
    cuda = K.cuda
    if requant is None:
        return acc_d.copy_to_host().reshape(shape)
    ndim = len(shape)
    nch = shape[channel_axis] if ndim else 1
    inner = int(np.prod(shape[channel_axis + 1 :], dtype=np.int64)) if ndim else 1
    size = int(np.prod(shape, dtype=np.int64))
    out_d = cuda.device_array(size, np.int64)
    if isinstance(requant, Thresholds):
        thr = np.ascontiguousarray(requant.thr, dtype=np.int64)
        if thr.ndim != 2 or (thr.shape[0] != 1 and thr.shape[0] < nch and size):
            raise IndexError(f"thresholds with {thr.shape[0]} rows cannot requantize {nch} channels")
        monotone = bool(thr.shape[1] < 2 or (np.diff(thr, axis=1) >= 0).all())
        if thr.shape[1] == 0:  # a single code: nothing to compare
            return np.full(shape, requant.qmin, np.int64)
        _launch(
            K.requant_thr,
            size,
            opt["threads"],
            acc_d,
            cuda.to_device(thr),
            monotone,
            max(inner, 1),
            max(nch, 1),
            requant.qmin,
            out_d,
        )
        return out_d.copy_to_host().reshape(shape)
    assert isinstance(requant, Rescale)
    mult = np.ascontiguousarray(requant.multiplier, dtype=np.int64).reshape(-1)
    shift = np.ascontiguousarray(requant.shift, dtype=np.int64).reshape(-1)
    if (mult.shape[0] != 1 and mult.shape[0] < nch and size) or shift.shape[0] < mult.shape[0]:
        raise IndexError(f"rescale with {mult.shape[0]} multipliers cannot requantize {nch} channels")
    # lim[row]: |x| <= lim implies |x*m| < 2^62 (rescale's precondition), with 0 <= shift <= 62
    # (round_shift's); -1 marks a row outside them. Layers built by the library never get
    # there (construction checks); hand-made tables are finished on the host below with the
    # same primitive run on Python integers, so the result stays the oracle's.
    lim = np.array(
        [
            -1 if not 0 <= int(s) <= 62 else ((2**62 - 1) // abs(int(m)) if m else 2**62 - 1)
            for m, s in zip(mult, shift)
        ],
        np.int64,
    )
    flag_d = cuda.device_array(size, np.uint8)
    _launch(
        K.requant_rescale,
        size,
        opt["threads"],
        acc_d,
        cuda.to_device(mult),
        cuda.to_device(shift),
        cuda.to_device(lim),
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
        seed,
        tensor_id,
        max(inner, 1),
        max(nch, 1),
        out_d,
        flag_d,
    )
    out = out_d.copy_to_host()
    if size:
        flag = flag_d.copy_to_host()
        if flag.any():
            v = acc_d.copy_to_host()
            R = mult.shape[0]
            for i in np.flatnonzero(flag):
                i = int(i)
                row = 0 if R == 1 else (i // max(inner, 1)) % max(nch, 1)
                r = P.hash32(seed, tensor_id, i) if requant.rounding == P.STOCHASTIC else 0
                out[i] = P.rescale(
                    int(v[i]),
                    int(mult[row]),
                    int(shift[row]),
                    requant.zero_point,
                    requant.qmin,
                    requant.qmax,
                    requant.rounding,
                    r,
                )
    return out.reshape(shape)


# ------------------------------------------------------------------------------------------
# Other ops
# ------------------------------------------------------------------------------------------
def add(layer, a, b, **kw):
    opt = _opts(**kw)
    layer.a_range.check_codes(f"{layer.name} input a", a)
    layer.b_range.check_codes(f"{layer.name} input b", b)
    if a.shape != b.shape:
        raise ValueError(f"{layer.name}: input shapes differ: {a.shape} and {b.shape}")
    K = _k()
    cuda = K.cuda
    shape = a.shape
    size = int(np.prod(shape, dtype=np.int64))
    acc = layer.acc
    exact_d = cuda.device_array(size, np.int64)
    acc_d = cuda.device_array(size, np.int64)
    _launch(
        K.add_seq,
        size,
        opt["threads"],
        cuda.to_device(np.ascontiguousarray(a, np.int64).reshape(-1)),
        cuda.to_device(np.ascontiguousarray(b, np.int64).reshape(-1)),
        cuda.to_device(np.ascontiguousarray(layer.a_table.lut[0], np.int64)),
        layer.a_range.qmin,
        cuda.to_device(np.ascontiguousarray(layer.b_table.lut[0], np.int64)),
        layer.b_range.qmin,
        K.MODES[acc.overflow],
        acc.width,
        acc.tile,
        acc.lo,
        acc.hi,
        exact_d,
        acc_d,
    )
    out = _requantize(
        acc_d, shape, layer.requant, 1 if len(shape) > 1 else 0, layer.seed, layer.tensor_id, opt
    )
    return dict(
        acc_exact=exact_d.copy_to_host().reshape(shape), acc=acc_d.copy_to_host().reshape(shape), out=out
    )


def _out_size(name, n, k, s, p=0):
    o = (n + 2 * p - k) // s + 1
    if o < 0:
        raise ValueError(f"{name}: input of size {n} is smaller than the window {k} (negative output size)")
    return o


def maxpool2d(layer, x, **kw):
    opt = _opts(**kw)
    if x.ndim != 4:
        raise ValueError(f"{layer.name}: input must be (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    kh, kw_ = layer.kernel
    ho = _out_size(layer.name, H, kh, layer.stride[0], layer.padding[0])
    wo = _out_size(layer.name, W, kw_, layer.stride[1], layer.padding[1])
    if x.dtype.kind not in "iub":  # the oracle stores the window max into int64 (truncation)
        x = np.trunc(x)
    x = np.ascontiguousarray(x).astype(np.int64)
    K = _k()
    cuda = K.cuda
    n = B * C * ho * wo
    out_d = cuda.device_array(n, np.int64)
    _launch(
        K.maxpool,
        n,
        opt["threads"],
        cuda.to_device(x),
        kh,
        kw_,
        layer.stride[0],
        layer.stride[1],
        layer.padding[0],
        layer.padding[1],
        ho,
        wo,
        out_d,
    )
    return dict(out=out_d.copy_to_host().reshape(B, C, ho, wo))


def avgpool2d(layer, x, **kw):
    opt = _opts(**kw)
    kernel, stride = layer.check_input(x)
    B, C, H, W = x.shape
    ho = _out_size(layer.name, H, kernel[0], stride[0])
    wo = _out_size(layer.name, W, kernel[1], stride[1])
    K = _k()
    cuda = K.cuda
    acc = layer.acc
    n = B * C * ho * wo
    shape = (B, C, ho, wo)
    exact_d = cuda.device_array(n, np.int64)
    acc_d = cuda.device_array(n, np.int64)
    _launch(
        K.avgpool_seq,
        n,
        opt["threads"],
        cuda.to_device(np.ascontiguousarray(x, np.int64)),
        cuda.to_device(np.ascontiguousarray(layer.x_table.lut[0], np.int64)),
        layer.x_range.qmin,
        kernel[0],
        kernel[1],
        stride[0],
        stride[1],
        ho,
        wo,
        K.MODES[acc.overflow],
        acc.width,
        acc.tile,
        acc.lo,
        acc.hi,
        exact_d,
        acc_d,
    )
    out = _requantize(acc_d, shape, layer.requant, 1, layer.seed, layer.tensor_id, opt)
    return dict(
        acc_exact=exact_d.copy_to_host().reshape(shape), acc=acc_d.copy_to_host().reshape(shape), out=out
    )


def flatten(layer, x, **kw):
    return dict(out=x.reshape(x.shape[0], -1).copy())  # as the oracle: a view change, dtype kept


OPS = {Linear: linear, Conv2d: conv2d, Add: add, MaxPool2d: maxpool2d, AvgPool2d: avgpool2d, Flatten: flatten}


def run_layer(layer, *inputs, threads=None, gemm=None, fast=None):
    """Run one layer on the GPU; identical results to nupes_sim.oracle.run_layer."""
    ensure_available()
    op = OPS.get(type(layer)) or _transformer_ops()[type(layer)]
    return op(layer, *(np.asarray(i) for i in inputs), threads=threads, gemm=gemm, fast=fast)


def _transformer_ops():
    """The transformer ops' kernels (ARITHMETIC.md §10-§16, cuda/transformer.py), imported late
    like the other kernels (importing them needs numba.cuda)."""
    from . import transformer

    return transformer.OPS


__all__ = ["ensure_available", "run_layer", "THREADS", "GEMM", "FAST", "STATS", "SIMULATOR"]
