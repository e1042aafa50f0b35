"""The fused exact-float MAC path of linear and conv2d (order-free accumulation only).

The activation codes are decoded into float features F[n, kJ+j] = G[x[n,k], j] (conv: once
into a zero-padded NHWC image, then im2col rows as contiguous runs), the weights into
Wt[kJ+j, o] = H[key(o,k), j] (gemm.fused_plan), and each k-chunk is one float GEMM, exact by
(E) with (1) and (3) of nupes_sim/cpu/gemm.py. One int64 pass (``_finish``) adds the chunk
results and the bias and writes acc_exact, acc (wrap or identity) and the threshold codes.
Row blocks run on the backend's worker threads (threads.pool), each with single-threaded BLAS.
"""

import numpy as np
from numba import prange

from .. import primitives as P
from . import intmm, plancache
from .gemm import decomposition, fused_plan, maxabs
from .jit import kernel
from .kernels import count_ge_ix, wrap
from .options import note
from .requant import monotone_thresholds, requantize, threshold_index
from .threads import pool


@kernel(nogil=True)
def _features_linear(x, qmin, Gf, r0, F):
    """Rows r0.. of F[n, k*J + j] = Gf[x[n, k] - qmin, j] (serial: one worker thread each)."""
    K = x.shape[1]
    J = Gf.shape[1]
    for rr in range(F.shape[0]):
        for k in range(K):
            q = x[r0 + rr, k] - qmin
            for j in range(J):
                F[rr, k * J + j] = Gf[q, j]


@kernel(nogil=True)
def _features_nhwc(x, qmin, Gf, ph, pw, b0, b1, xp):
    """Images b0..b1 of xp[b, ph + h, pw + w, c*J + j] = Gf[x[b, c, h, w] - qmin, j]; xp is
    zero elsewhere (the padding: padded taps contribute 0). Serial: one worker thread each."""
    _, C, H, W = x.shape
    J = Gf.shape[1]
    for b in range(b0, b1):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    q = x[b, c, h, w] - qmin
                    for j in range(J):
                        xp[b, ph + h, pw + w, c * J + j] = Gf[q, j]


@kernel(nogil=True)
def _features_im2col(xp, c0, cg, kh, kw, sh, sw, dh, dw, ho, wo, r0, F):
    """Rows r0.. of the conv columns from the padded NHWC features xp, in the fused path's
    order k' = (i, j, c) (c fastest) with J features each: for every tap (i, j), one run of
    cg*J consecutive values. Serial: one worker thread each."""
    J = F.shape[1] // (kh * kw * cg)
    run = cg * J
    for rr in range(F.shape[0]):
        r = r0 + rr
        b = r // (ho * wo)
        rem = r - b * ho * wo
        oh = rem // wo
        ow = rem - oh * wo
        for i in range(kh):
            for j in range(kw):
                base = (i * kw + j) * run
                src = xp[b, oh * sh + i * dh, ow * sw + j * dw]
                for t in range(run):
                    F[rr, base + t] = src[c0 * J + t]


@kernel(parallel=True)
def _finish(R, bias, o0, Otot, P_, mode, width, thr, tix, qmin, do_thr, exact, acc, out):
    """exact = bias + sum of the chunk results (int64), acc (wrap or identity), thresholds;
    written at flat index (b*Otot + o0 + o)*P_ + p for row n = b*P_ + p (linear: P_ = 1).
    Rows go in blocks of up to 64 within one image, o outer and p inner (contiguous writes)."""
    C, N, Og = R.shape
    nthr = thr.shape[1]
    BL = 64
    nblk_img = (P_ + BL - 1) // BL
    B = N // P_
    for blk in prange(B * nblk_img):
        b = blk // nblk_img
        p0 = (blk - b * nblk_img) * BL
        p1 = min(P_, p0 + BL)
        for o in range(Og):
            base = (b * Otot + o0 + o) * P_
            row = 0 if thr.shape[0] == 1 else o0 + o
            for p in range(p0, p1):
                n = b * P_ + p
                s = bias[o]
                for c in range(C):
                    s += np.int64(R[c, n, o])  # an exact integer < L (gemm.py, (E) and (1))
                i = base + p
                exact[i] = s
                a = wrap(s, width) if mode == P.WRAP else s
                acc[i] = a
                if do_thr:
                    out[i] = qmin + count_ge_ix(a, thr, row, nthr, tix)


def as_kernel_codes(x):
    x = np.ascontiguousarray(x)
    return x.astype(np.int64) if x.dtype.kind == "u" and x.itemsize == 8 else x


def fused(layer, x, xmin, xmax, opts, conv=None):
    """Whole-layer result dict by the fused path, or None when it does not apply."""
    mode = P.OVERFLOW_IDS[layer.acc.overflow]
    if (
        not (opts.fused and (mode != P.SATURATE or layer.no_overflow_possible()))
        or x.size == 0
        or layer.k == 0
    ):
        return None
    O = layer.out_channels
    groups = conv[0] if conv else 1
    Og = O // groups
    iplans, plans = plancache.cached(
        layer,
        ("fused", xmin, xmax, opts, intmm.available() is not None),
        lambda: _plans(layer, xmin, xmax, conv, opts),
        opts,
    )
    if iplans is None and plans is None:
        return None
    xk = as_kernel_codes(x)
    if conv:
        ho, wo = conv[-2:]
        B = x.shape[0]
        N, Pn, shape = B * ho * wo, ho * wo, (B, O, ho, wo)
    else:
        N, Pn, shape = x.shape[0], 1, (x.shape[0], O)
    rq = layer.requant
    thr, do_thr = monotone_thresholds(rq)
    if not do_thr:
        thr = np.zeros((1, 1), np.int64)
        thr.setflags(write=False)  # as layer tables are: one compiled signature of _finish
    tix = threshold_index(thr) if do_thr else np.full((1, 1), -1, np.int64)
    exact = np.empty(N * O, np.int64)
    acc = np.empty(N * O, np.int64)
    out = np.empty(N * O, np.int64) if do_thr else acc
    bias = np.ascontiguousarray(layer.bias, np.int64)
    if iplans is not None:
        _run_int8(
            layer, xk, conv, iplans, (N, Pn, O, Og), (mode, thr, tix, do_thr), bias, (exact, acc, out), opts
        )
    else:
        _run_float(
            layer, xk, conv, plans, (N, Pn, O, Og), (mode, thr, tix, do_thr), bias, (exact, acc, out), opts
        )
    if layer.datapath == "product":
        note("product_gemm")
    exact, acc = exact.reshape(shape), acc.reshape(shape)
    if do_thr:
        out = out.reshape(shape)
    else:
        out = requantize(acc, rq, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def _plans(layer, xmin, xmax, conv, opts):
    """(int8 plans, None), (None, float plans) or (None, None) when the fused path does not
    apply: the weight side of the call, a function of (layer, xmin, xmax, opts) only."""
    O = layer.out_channels
    groups = conv[0] if conv else 1
    Og = O // groups
    if conv:  # k' = (i, j, c), c fastest: each tap is a run in the NHWC features
        _, Cg, kh, kw = conv[:4]
        perm = np.arange(Cg * kh * kw).reshape(Cg, kh, kw).transpose(1, 2, 0).reshape(-1)
    else:
        perm = np.arange(layer.k)
    iplans = _int8_plans(layer, xmin, xmax, perm, groups, Og, opts, conv is not None)  # rule: intmm.py
    if iplans is not None:
        return iplans, None
    plans = [fused_plan(layer, xmin, xmax, slice(g * Og, (g + 1) * Og), perm, opts) for g in range(groups)]
    if any(p is None for p in plans):
        return None, None
    if conv and any(p[4].shape[1] != plans[0][4].shape[1] or p[3] is not plans[0][3] for p in plans):
        return None, None  # the groups share one padded NHWC feature image
    return None, plans


def int8_sides(layer, xmin, xmax, opts):
    """(G, H) of the decomposition (*) restricted to the used activation codes and weight
    keys (other rows 0: they are never read, and must not widen the limbs), or None."""
    dec = decomposition(layer, xmin, xmax, opts)
    if dec is None:
        return None
    G, H, _ = dec
    q0, nw = layer.x_range.qmin, layer.w_range.n_codes
    Gu = np.zeros_like(G)
    Gu[xmin - q0 : xmax - q0 + 1] = G[xmin - q0 : xmax - q0 + 1]  # only used codes count
    O = layer.out_channels
    qw = np.ascontiguousarray(layer.w_codes.reshape(O, -1))
    tidx = np.ascontiguousarray(layer.w_table_index)
    Hu = np.zeros_like(H)
    used = intmm.used_keys(qw, tidx, nw, layer.w_range.qmin, H.shape[0])
    Hu[used] = H[used]
    return Gu, Hu


def _int8_plans(layer, xmin, xmax, perm, groups, Og, opts, is_conv=False):
    """(intmm.plan, [Bcat of each group]) or None."""
    if opts.int8 is False or intmm.available() is None:
        return None
    sides = int8_sides(layer, xmin, xmax, opts)
    if sides is None:
        return None
    J = sides[0].shape[1]
    p = intmm.plan(*sides, len(perm) * J, maxabs(np.asarray(layer.bias, np.int64)), opts, is_conv)
    if p is None:
        return None
    O, nw = layer.out_channels, layer.w_range.n_codes
    qw = np.ascontiguousarray(layer.w_codes.reshape(O, -1))
    tidx = np.ascontiguousarray(layer.w_table_index)
    Hl = p[1]
    B = []
    for g in range(groups):
        sl = slice(g * Og, (g + 1) * Og)
        Bcat = np.empty((len(perm) * J, Hl.shape[0] * Og), np.int8)
        intmm.weight_limbs(
            np.ascontiguousarray(qw[sl]),
            np.ascontiguousarray(tidx[sl]),
            perm,
            nw,
            layer.w_range.qmin,
            Hl,
            Bcat,
        )
        B.append(Bcat)
    return p, B


def _run_int8(layer, xk, conv, plans, dims, req, bias, outs, opts):
    """The int8-limb GEMMs (exact by claim (I) of intmm.py) and the int64 output pass."""
    torch = intmm.available()
    N, Pn, O, Og = dims
    mode, thr, tix, do_thr = req
    qmin = layer.x_range.qmin
    ex, nwk = pool()
    (Ga, _, wlm, bounds), Bs = plans
    na, J, nb = Ga.shape[0], Ga.shape[2], wlm.shape[1]
    note("gemm_int8")
    if conv:
        _, Cg, kh, kw, (sh, sw), (ph, pw), (dh, dw), ho, wo = conv
        Bx, C, H, W = xk.shape
        xp = np.zeros((na, Bx, H + 2 * ph, W + 2 * pw, C * J), np.int8)  # padded taps: 0
        step = -(-Bx // nwk)
        for f in [
            ex.submit(_features_nhwc, xk, qmin, Ga[li], ph, pw, b0, min(Bx, b0 + step), xp[li])
            for li in range(na)
            for b0 in range(0, Bx, step)
        ]:
            f.result()
    for g, Bcat in enumerate(Bs):
        KJ = Bcat.shape[0]
        if len(bounds) > 2:
            note("chunked")
        R = np.empty((len(bounds) - 1, N, na, nb, Og), np.int32)
        rb = max(1, min(N, opts.feature_bytes // max(KJ * na, 1)))

        def feats(li, s0, s1, r0, A, g=g):
            if conv:
                _features_im2col(
                    xp[li], g * Cg, Cg, kh, kw, sh, sw, dh, dw, ho, wo, s0, A[s0 - r0 : s1 - r0, li]
                )
            else:
                _features_linear(xk, qmin, Ga[li], s0, A[s0 - r0 : s1 - r0, li])

        for r0 in range(0, N, rb):
            r1 = min(N, r0 + rb)
            A = np.empty((r1 - r0, na, KJ), np.int8)
            sub = -(-(r1 - r0) // nwk)
            for f in [
                ex.submit(feats, li, s0, min(r1, s0 + sub), r0, A)
                for li in range(na)
                for s0 in range(r0, r1, sub)
            ]:
                f.result()
            intmm.run_gemms(torch, A, Bcat, bounds, R, r0)
        intmm.finish_limbs(
            R,
            wlm,
            bias[g * Og : (g + 1) * Og],
            g * Og,
            O,
            Pn,
            mode,
            layer.acc.width,
            thr,
            tix,
            layer.requant.qmin if do_thr else 0,
            do_thr,
            *outs,
        )


def _run_float(layer, xk, conv, plans, dims, req, bias, outs, opts):
    """The exact float GEMMs of gemm.py ((E), (1), (3)) and the int64 output pass."""
    N, Pn, O, Og = dims
    mode, thr, tix, do_thr = req
    exact, acc, out = outs
    rq = layer.requant
    qmin = layer.x_range.qmin
    ex, nwk = pool()
    if conv:  # padded NHWC features of all groups, J values per channel
        _, Cg, kh, kw, (sh, sw), (ph, pw), (dh, dw), ho, wo = conv
        J = plans[0][4].shape[1]
        dt = plans[0][3]
        Bx, C, H, W = xk.shape
        xp = np.zeros((Bx, H + 2 * ph, W + 2 * pw, C * J), dt)
        step = -(-Bx // nwk)
        for f in [
            ex.submit(_features_nhwc, xk, qmin, plans[0][4], ph, pw, b0, min(Bx, b0 + step), xp)
            for b0 in range(0, Bx, step)
        ]:
            f.result()
    for g, (Wt, bounds, n, dt, Gf) in enumerate(plans):
        note(f"gemm_{np.dtype(dt).name}")
        if n > 1:
            note("chunked")
        KJ = Wt.shape[0]
        R = np.empty((n, N, Og), dt)
        if conv:
            rb = max(64, opts.feature_bytes // max(KJ * np.dtype(dt).itemsize, 1))
        else:
            rb = opts.feature_bytes // max(KJ * np.dtype(dt).itemsize, 1)
        rb = max(1, min(rb, -(-N // nwk)))  # at least one block per worker

        def block(r0, g=g, Wt=Wt, bounds=bounds, n=n, dt=dt, Gf=Gf, R=R, rb=rb):
            r1 = min(N, r0 + rb)
            F = np.empty((r1 - r0, Wt.shape[0]), dt)
            if conv:
                _features_im2col(xp, g * Cg, Cg, kh, kw, sh, sw, dh, dw, ho, wo, r0, F)
            else:
                _features_linear(xk, qmin, Gf, r0, F)
            for c in range(n):
                np.matmul(F[:, bounds[c] : bounds[c + 1]], Wt[bounds[c] : bounds[c + 1]], out=R[c, r0:r1])

        for f in [ex.submit(block, r0) for r0 in range(0, N, rb)]:
            f.result()
        _finish(
            R,
            bias[g * Og : (g + 1) * Og],
            g * Og,
            O,
            Pn,
            mode,
            layer.acc.width,
            thr,
            tix,
            rq.qmin if do_thr else 0,
            do_thr,
            exact,
            acc,
            out,
        )
