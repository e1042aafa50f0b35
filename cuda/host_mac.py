"""The MAC layers of the cuda backend (Linear, Conv2d): host-side weight preparation,
the path plan (register-tiled GEMM for order-free sums, else the sequential kernel) and
the launches. What construction guarantees is not checked again here: every product a
layer can form is < 2^62 and its bound < 2^63 (layers/mac.py), every product-table index
of an accepted input lies in the table (ProductTable.index, table length = the code ranges).
"""

import numpy as np

from nupes_sim.layers.base import maxabs

from .host_requant import _requantize
from .launch import _k, _launch, _note, _opts

_I31 = 2**31


_GEMMS = {}


def _gemm_kernel(acc_type, dp, cfg, lut_shared):
    K = _k()
    key = (acc_type, dp, tuple(sorted(cfg.items())), lut_shared)
    if key not in _GEMMS:
        t = K.int32 if acc_type == "int32" else K.int64
        _GEMMS[key] = K.make_gemm(t, dp, lut_shared=lut_shared, **cfg)
    return _GEMMS[key]


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
    base, step = pt.index_terms(np.abs(qw))  # index(|qw|, |qx|) = base + step·|qx|
    # the kernel forms v = m·qx and reads lut[Bbase + |v|]: m = sign(qw)·step, so |v| = step·|qx|
    # and sign(v) = sign(qw)·sign(qx) (by_product: m = qw; pair table: m = sign(qw))
    return dict(
        Bbase=np.ascontiguousarray((tidx * L + base).T), Bm=np.ascontiguousarray((np.sign(qw) * step).T)
    )


def _plan(layer, fast):
    """('gemm', acc_type) for an order-free sum with a proof of exactness, else ('seq', None)."""
    order_free = layer.acc.overflow != "saturate" or layer.no_overflow_possible()
    if not (fast and order_free):
        return "seq", None
    bound = int(layer.bound.max(initial=0))
    if layer.datapath == "operand":
        small = bound < _I31 and maxabs(layer.x_table.lut) < _I31 and maxabs(layer.w_table.lut) < _I31
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


def linear(layer, x, **kw):
    opt = _opts(**kw)
    layer.x_range.check_codes(f"{layer.name} input", x)
    layer.check_shape(x)
    x = np.ascontiguousarray(x, np.int64)
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
