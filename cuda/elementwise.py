"""One-thread-per-element kernels: the sequential MAC (any overflow mode), the activation
side in AT (K, N) layout, requantization and the other ops.

Layout used by the MAC kernels: activations transposed, ``AT[k, n]`` (K, N), weights
``BT[k, o]`` (K, O); output element (n, o) goes to flat index
``(n // HW) * O_total * HW + (o_off + o) * HW + n % HW`` (device.out_index).
"""

from numba import int64

from nupes_sim import primitives as P

from .device import (
    DP_OPERAND,
    MODE_EXACT,
    MODE_SAT,
    MODE_WRAP,
    count_ge,
    cuda,
    hash32,
    out_index,
    product_of,
    rescale,
    sat_step,
    wrap,
)


@cuda.jit
def mac_seq(
    dp,
    AT,
    WV,
    Bbase,
    Bm,
    lut,
    bias,
    N,
    O,
    K,
    mode,
    width,
    tile,
    lo,
    hi,
    HW,
    O_total,
    o_off,
    exact_out,
    acc_out,
):
    """One thread per output (n, o); threads along n so AT[k, n] reads coalesce."""
    t = cuda.grid(1)
    if t >= N * O:
        return
    o = t // N
    n = t - o * N
    b = int64(bias[o])
    ex = b
    acc = b
    part = int64(0)
    for k in range(K):
        p = int64(product_of(dp, int64(AT[k, n]), k, n, o, WV, Bbase, Bm, lut))
        ex += p  # |every prefix| <= bound < 2^63: exact in int64
        if mode == MODE_SAT:
            acc, part = sat_step(acc, part, p, k, K, tile, lo, hi)
    if mode == MODE_WRAP:
        acc = wrap(ex, width)
    elif mode == MODE_EXACT:
        acc = ex
    i = out_index(n, o, HW, O_total, o_off)
    exact_out[i] = ex
    acc_out[i] = acc


# ------------------------------------------------------------------------------------------
# Activation side in AT (K, N) layout
# ------------------------------------------------------------------------------------------
@cuda.jit
def decode_t(x, lut, qmin, out):
    """out[k, n] = lut[x[n, k] - qmin] for codes x (N, K)."""
    t = cuda.grid(1)
    N, K = x.shape
    if t < N * K:
        k = t // N
        n = t - k * N
        out[k, n] = lut[int64(x[n, k]) - qmin]


@cuda.jit
def im2col_t(x, lut, qmin, dp, c0, Cg, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, out):
    """Columns of group channels [c0, c0+Cg) of codes x (B, C, H, W) into out[k, n],
    k = (c, i, j) with c slowest, n = (b, oh, ow). Operand datapath (dp 0): the decoded value
    lut[q - qmin]; product datapath: the signed code. Padded taps: 0 (a zero product)."""
    t = cuda.grid(1)
    B, C, H, W = x.shape
    K = Cg * kh * kw
    N = B * Ho * Wo
    if t >= N * K:
        return
    k = t // N
    n = t - k * N
    c = k // (kh * kw)
    r = k - c * (kh * kw)
    i = r // kw
    j = r - i * kw
    b = n // (Ho * Wo)
    r2 = n - b * (Ho * Wo)
    oh = r2 // Wo
    ow = r2 - oh * Wo
    h = oh * sh - ph + i * dh
    w = ow * sw - pw + j * dw
    v = int64(0)
    if h >= 0 and h < H and w >= 0 and w < W:
        q = int64(x[b, c0 + c, h, w])
        if dp == DP_OPERAND:
            v = int64(lut[q - qmin])
        else:
            v = q
    out[k, n] = v


# ------------------------------------------------------------------------------------------
# Requantization (ARITHMETIC.md §6), elementwise over the flat C-order output;
# row = (i // inner) % nch when the table has one row per channel, else 0.
# ------------------------------------------------------------------------------------------
@cuda.jit
def requant_thr(v, thr, inner, nch, qmin, out):
    """qmin + #{j : v >= thr[row, j]} (rows non-decreasing: checked at construction)."""
    i = cuda.grid(1)
    if i >= v.shape[0]:
        return
    R = thr.shape[0]
    n = thr.shape[1]
    row = int64(0)
    if R != 1:
        row = (i // inner) % nch
    out[i] = qmin + count_ge(int64(v[i]), thr, row, n)


@cuda.jit
def requant_rescale(v, mult, shift, zp, lo, hi, mode, seed, tensor_id, inner, nch, out):
    """primitives.rescale with r = hash32(seed, tensor_id, i) for stochastic rounding; its
    |v·m| < 2^62 precondition holds for every accumulator value (checked at construction)."""
    i = cuda.grid(1)
    if i >= v.shape[0]:
        return
    R = mult.shape[0]
    row = int64(0)
    if R != 1:
        row = (i // inner) % nch
    r = int64(0)
    if mode == P.STOCHASTIC:
        r = hash32(seed, tensor_id, int64(i))
    out[i] = rescale(int64(v[i]), mult[row], shift[row], zp, lo, hi, mode, r)


# ------------------------------------------------------------------------------------------
# Other ops
# ------------------------------------------------------------------------------------------
@cuda.jit
def add_seq(a, b, alut, aqmin, blut, bqmin, mode, width, tile, lo, hi, exact_out, acc_out):
    """Residual add: the sequence 0, a, b through the accumulator (flat arrays)."""
    i = cuda.grid(1)
    if i >= a.shape[0]:
        return
    va = int64(alut[int64(a[i]) - aqmin])
    vb = int64(blut[int64(b[i]) - bqmin])
    ex = va + vb
    acc = int64(0)
    if mode == MODE_SAT:
        part = int64(0)
        acc, part = sat_step(acc, part, va, 0, 2, tile, lo, hi)
        acc, part = sat_step(acc, part, vb, 1, 2, tile, lo, hi)
    elif mode == MODE_WRAP:
        acc = wrap(ex, width)
    else:
        acc = ex
    exact_out[i] = ex
    acc_out[i] = acc


@cuda.jit
def avgpool_seq(x, lut, qmin, kh, kw, sh, sw, Ho, Wo, mode, width, tile, lo, hi, exact_out, acc_out):
    """Window sum of decoded codes from 0, rows then columns (k = i*kw + j); out (B, C, Ho, Wo) flat."""
    t = cuda.grid(1)
    B, C, H, W = x.shape
    if t >= B * C * Ho * Wo:
        return
    bc = t // (Ho * Wo)
    r = t - bc * (Ho * Wo)
    oh = r // Wo
    ow = r - oh * Wo
    b = bc // C
    c = bc - b * C
    K = kh * kw
    ex = int64(0)
    acc = int64(0)
    part = int64(0)
    for i in range(kh):
        for j in range(kw):
            p = int64(lut[int64(x[b, c, oh * sh + i, ow * sw + j]) - qmin])
            ex += p
            if mode == MODE_SAT:
                acc, part = sat_step(acc, part, p, i * kw + j, K, tile, lo, hi)
    if mode == MODE_WRAP:
        acc = wrap(ex, width)
    elif mode == MODE_EXACT:
        acc = ex
    exact_out[t] = ex
    acc_out[t] = acc


@cuda.jit
def maxpool(x, kh, kw, sh, sw, ph, pw, Ho, Wo, out):
    """Max of codes over the window; padded taps ignored (every window has a real tap)."""
    t = cuda.grid(1)
    B, C, H, W = x.shape
    if t >= B * C * Ho * Wo:
        return
    bc = t // (Ho * Wo)
    r = t - bc * (Ho * Wo)
    oh = r // Wo
    ow = r - oh * Wo
    b = bc // C
    c = bc - b * C
    h0 = oh * sh - ph
    w0 = ow * sw - pw
    best = int64(0)
    first = True
    for h in range(max(h0, 0), min(h0 + kh, H)):
        for w in range(max(w0, 0), min(w0 + kw, W)):
            v = int64(x[b, c, h, w])
            if first or v > best:
                best = v
                first = False
    out[t] = best
