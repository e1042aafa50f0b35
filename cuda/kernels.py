"""numba.cuda kernels of the integer simulator (docs/ARITHMETIC.md).

Integer arithmetic only: no float is ever formed in a kernel (numba.cuda cannot turn off
FMA contraction, so exactness arguments about floats would not carry over). The scalar
rules come from nupes_sim.primitives, compiled here with ``cuda.jit(device=True)`` from the
very same bytecode the CPU backend compiles with numba.njit.

Layout used by every MAC kernel: activations transposed, ``AT[k, n]`` (K, N), weights
``BT[k, o]`` (K, O), both C-contiguous; row n is a batch row (linear) or an output pixel
(b, oh, ow) of one conv group. Output element (n, o) goes to flat index
``(n // HW) * O_total * HW + (o_off + o) * HW + n % HW`` of the (B, O) / (B, O, Ho, Wo)
tensor (HW = 1 for linear), so results land in the oracle's layout directly.

Kernels:
  mac_seq          one thread per output, k ascending: exact sum + saturating accumulator
                   (tiles included); any overflow mode, either datapath, int64 throughout.
  make_gemm(...)   register-tiled GEMM for order-free sums (wrap, exact, saturate that cannot
                   clamp): operand datapath (products W*X) or product datapath (signed LUT
                   gather); int32 accumulators when every partial sum is < 2^31, else int64.
  decode_t         LUT decode of activation codes into AT (transposed) layout.
  codes_t          signed codes into AT layout (product datapath).
  im2col_t         conv columns into AT layout for one group; padded taps give 0.
  finish           acc = wrap(exact) / exact (order-free paths).
  requant_thr / requant_rescale   elementwise requantization, row = channel.
  add_seq, avgpool_seq, maxpool   the other ops.
"""
import types

import numpy as np

from nupes_sim import primitives as P

from ._compat import import_cuda

cuda = import_cuda()
from numba import int32, int64  # noqa: E402  (after the numpy shim in _compat)

MODE_WRAP, MODE_SAT, MODE_EXACT = 0, 1, 2
MODES = {"wrap": MODE_WRAP, "saturate": MODE_SAT, "exact": MODE_EXACT}
DP_OPERAND, DP_PRODUCT = 0, 1

# ------------------------------------------------------------------------------------------
# The primitives, compiled for the device from their own bytecode. Each is re-bound to a
# namespace whose globals are the compiled siblings (hash32 -> fmix32 -> mul32, rescale ->
# round_shift) and the module's integer constants. Never re-implemented here.
# ------------------------------------------------------------------------------------------
PRIMITIVE_NAMES = ("mul32", "fmix32", "hash32", "round_shift", "sat_add", "wrap", "count_ge",
                   "rescale", "clamp")


def _compile_primitives():
    ns = {k: v for k, v in vars(P).items() if isinstance(v, int) and not isinstance(v, bool)}
    out = {}
    for name in PRIMITIVE_NAMES:
        f = getattr(P, name)
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__qualname__ = f"primitives.{name}"
        ns[name] = out[name] = cuda.jit(device=True)(g)
    return types.SimpleNamespace(**out)


prim = _compile_primitives()
hash32 = prim.hash32
sat_add = prim.sat_add
wrap = prim.wrap
count_ge = prim.count_ge
rescale = prim.rescale


@cuda.jit(device=True)
def sat_step(acc, part, p, k, K, tile, lo, hi):
    """One step of the saturating accumulator (ARITHMETIC.md §4), k ascending.

    tile == 0: acc = clamp(acc + p). tile == T: part restarts at 0 at each tile start,
    part = clamp(part + p), and at a tile end (or the last k) acc = clamp(acc + part).
    acc, part stay in [lo, hi]; |p| < 2^62, so sat_add never overflows int64."""
    if tile == 0:
        return sat_add(acc, p, lo, hi), part
    if k % tile == 0:
        part = int64(0)
    part = sat_add(part, p, lo, hi)
    if (k + 1) % tile == 0 or k + 1 == K:
        acc = sat_add(acc, part, lo, hi)
    return acc, part


@cuda.jit(device=True)
def out_index(n, o, HW, O_total, o_off):
    return (n // HW) * O_total * HW + (o_off + o) * HW + n % HW


@cuda.jit(device=True)
def product_of(dp, a, k, n, o, WV, Bbase, Bm, lut):
    """One product p(o, k, n). Operand: a = decoded activation, p = a * WV[k, o].
    Product: a = signed code, v = Bm[k, o] * a (Bm = sign(qw)*|qw| by product, sign(qw) for a
    pair table), p = sign(v) * lut[Bbase[k, o] + |v|] (Bbase holds the table row offset)."""
    if dp == DP_OPERAND:
        return a * WV[k, o]
    v = Bm[k, o] * a
    if v > 0:
        return lut[Bbase[k, o] + v]
    if v < 0:
        return -lut[Bbase[k, o] - v]
    return int64(0)


@cuda.jit
def mac_seq(dp, AT, WV, Bbase, Bm, lut, bias, N, O, K, mode, width, tile, lo, hi,
            HW, O_total, o_off, exact_out, acc_out):
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


def make_gemm(acc_type, dp, BM=128, BN=128, BK=8, TM=8, TN=8, lut_shared=0):
    """Register-tiled order-free MAC kernel (the sum of the K products plus the bias).

    Block: (BM/TM)*(BN/TN) threads computing a BM x BN tile of C[n, o]; each thread holds a
    TM x TN accumulator block in registers, rows ty + i*(BM/TM), columns tx + j*(BN/TN)
    (strided, so shared-memory reads and global stores coalesce). The K loop stages BK-deep
    slices of AT and the weights in shared memory. Out-of-range entries load as 0, whose
    product is 0 on both datapaths. acc_type (int32 or int64) is exact when the caller has
    checked that every partial sum fits it (int32: layer bound < 2^31). The result is the
    exact sum whatever the summation order, which is what wrap/exact (and saturate when no
    clamp can act) need; acc is derived from it (wrap or copy).

    lut_shared > 0 (product datapath): the flattened product LUT (<= lut_shared entries) is
    copied to shared memory once per block.
    """
    NTX, NTY = BN // TN, BM // TM
    NT = NTX * NTY
    LA, LB = (BK * BM + NT - 1) // NT, (BK * BN + NT - 1) // NT
    LUTN = max(lut_shared, 1)
    if BM % TM or BN % TN:
        raise ValueError("tile sizes must divide the block tile")

    @cuda.jit(device=True)
    def _epilogue(c, n0, o0, ty, tx, N, O, bias, mode, width, HW, O_total, o_off, exact_out, acc_out):
        for i in range(TM):
            for j in range(TN):
                _store(n0 + ty + i * NTY, o0 + tx + j * NTX, N, O, c[i, j], bias, mode, width,
                       HW, O_total, o_off, exact_out, acc_out)

    if dp == DP_OPERAND:
        @cuda.jit
        def gemm(AT, WV, Bbase, Bm, lut, bias, N, O, K, mode, width, HW, O_total, o_off,
                 exact_out, acc_out):
            As = cuda.shared.array((BK, BM), acc_type)
            Bs = cuda.shared.array((BK, BN), acc_type)
            c = cuda.local.array((TM, TN), acc_type)
            ar = cuda.local.array(TM, acc_type)
            br = cuda.local.array(TN, acc_type)
            tid = cuda.threadIdx.x
            tx = tid % NTX
            ty = tid // NTX
            n0 = cuda.blockIdx.y * BM
            o0 = cuda.blockIdx.x * BN
            for i in range(TM):
                for j in range(TN):
                    c[i, j] = acc_type(0)
            for k0 in range(0, K, BK):
                for l in range(LA):
                    e = tid + l * NT
                    if e < BK * BM:
                        kk = e // BM
                        m = e - kk * BM
                        if k0 + kk < K and n0 + m < N:
                            As[kk, m] = acc_type(AT[k0 + kk, n0 + m])
                        else:
                            As[kk, m] = acc_type(0)
                for l in range(LB):
                    e = tid + l * NT
                    if e < BK * BN:
                        kk = e // BN
                        m = e - kk * BN
                        if k0 + kk < K and o0 + m < O:
                            Bs[kk, m] = acc_type(WV[k0 + kk, o0 + m])
                        else:
                            Bs[kk, m] = acc_type(0)
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[kk, ty + i * NTY]
                    for j in range(TN):
                        br[j] = Bs[kk, tx + j * NTX]
                    for i in range(TM):
                        for j in range(TN):
                            c[i, j] = acc_type(c[i, j] + acc_type(ar[i] * br[j]))
                cuda.syncthreads()
            _epilogue(c, n0, o0, ty, tx, N, O, bias, mode, width, HW, O_total, o_off, exact_out, acc_out)
    else:
        @cuda.jit
        def gemm(AT, WV, Bbase, Bm, lut, bias, N, O, K, mode, width, HW, O_total, o_off,
                 exact_out, acc_out):
            As = cuda.shared.array((BK, BM), int32)
            Bb = cuda.shared.array((BK, BN), int32)
            Bs = cuda.shared.array((BK, BN), int32)
            Ls = cuda.shared.array(LUTN, acc_type)
            c = cuda.local.array((TM, TN), acc_type)
            ar = cuda.local.array(TM, int32)
            bb = cuda.local.array(TN, int32)
            bm = cuda.local.array(TN, int32)
            tid = cuda.threadIdx.x
            tx = tid % NTX
            ty = tid // NTX
            n0 = cuda.blockIdx.y * BM
            o0 = cuda.blockIdx.x * BN
            if lut_shared:
                for e in range(tid, lut.shape[0], NT):
                    Ls[e] = acc_type(lut[e])
            for i in range(TM):
                for j in range(TN):
                    c[i, j] = acc_type(0)
            for k0 in range(0, K, BK):
                for l in range(LA):
                    e = tid + l * NT
                    if e < BK * BM:
                        kk = e // BM
                        m = e - kk * BM
                        if k0 + kk < K and n0 + m < N:
                            As[kk, m] = int32(AT[k0 + kk, n0 + m])
                        else:
                            As[kk, m] = int32(0)
                for l in range(LB):
                    e = tid + l * NT
                    if e < BK * BN:
                        kk = e // BN
                        m = e - kk * BN
                        if k0 + kk < K and o0 + m < O:
                            Bb[kk, m] = int32(Bbase[k0 + kk, o0 + m])
                            Bs[kk, m] = int32(Bm[k0 + kk, o0 + m])
                        else:
                            Bb[kk, m] = int32(0)
                            Bs[kk, m] = int32(0)
                cuda.syncthreads()
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[kk, ty + i * NTY]
                    for j in range(TN):
                        bb[j] = Bb[kk, tx + j * NTX]
                        bm[j] = Bs[kk, tx + j * NTX]
                    for i in range(TM):
                        for j in range(TN):
                            v = int32(bm[j] * ar[i])  # |v| <= Mw*Mx < 2^15
                            if v != 0:
                                if lut_shared:
                                    q = acc_type(Ls[bb[j] + abs(v)])
                                else:
                                    q = acc_type(lut[bb[j] + abs(v)])
                                if v < 0:
                                    q = acc_type(-q)
                                c[i, j] = acc_type(c[i, j] + q)
                cuda.syncthreads()
            _epilogue(c, n0, o0, ty, tx, N, O, bias, mode, width, HW, O_total, o_off, exact_out, acc_out)

    gemm.config = dict(acc_type=str(acc_type), dp=dp, BM=BM, BN=BN, BK=BK, TM=TM, TN=TN,
                       lut_shared=lut_shared, threads=NT)
    return gemm


@cuda.jit(device=True)
def _store(n, o, N, O, v, bias, mode, width, HW, O_total, o_off, exact_out, acc_out):
    if n < N and o < O:
        ex = int64(v) + int64(bias[o])
        i = out_index(n, o, HW, O_total, o_off)
        exact_out[i] = ex
        if mode == MODE_WRAP:
            acc_out[i] = wrap(ex, width)
        else:
            acc_out[i] = ex


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
def requant_thr(v, thr, monotone, inner, nch, qmin, out):
    i = cuda.grid(1)
    if i >= v.shape[0]:
        return
    R = thr.shape[0]
    n = thr.shape[1]
    row = int64(0)
    if R != 1:
        row = (i // inner) % nch
    x = int64(v[i])
    if monotone:
        cnt = count_ge(x, thr, row, n)
    else:  # a hand-made table that is not non-decreasing: count like the oracle
        cnt = int64(0)
        for j in range(n):
            if x >= thr[row, j]:
                cnt += 1
    out[i] = qmin + cnt


@cuda.jit
def requant_rescale(v, mult, shift, lim, zp, lo, hi, mode, seed, tensor_id, inner, nch, out, flag):
    """primitives.rescale with r = hash32(seed, tensor_id, i) for stochastic rounding. An
    element outside rescale's precondition (|v| > lim[row]) is flagged for the host."""
    i = cuda.grid(1)
    if i >= v.shape[0]:
        return
    R = mult.shape[0]
    row = int64(0)
    if R != 1:
        row = (i // inner) % nch
    x = int64(v[i])
    if x <= lim[row] and x >= -lim[row]:
        r = int64(0)
        if mode == P.STOCHASTIC:
            r = hash32(seed, tensor_id, int64(i))
        out[i] = rescale(x, mult[row], shift[row], zp, lo, hi, mode, r)
        flag[i] = 0
    else:
        out[i] = 0
        flag[i] = 1


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


# ------------------------------------------------------------------------------------------
# Signatures every kernel is launched with (tests/cuda/test_ptx.py compiles each to PTX)
# ------------------------------------------------------------------------------------------
def ptx_cases():
    """[(name, python function, argument types)] for the kernels and dtypes backend.py uses."""
    from numba import types as T

    def arr(dt, nd):
        return T.Array(dt, nd, "C")

    i64, i32, u8, b1 = T.int64, T.int32, T.uint8, T.boolean
    cases = []
    for at in (i64, i32):
        cases.append((f"decode_t[{at}]", decode_t.py_func, (arr(i64, 2), arr(i64, 1), i64, arr(at, 2))))
        cases.append((f"im2col_t[{at}]", im2col_t.py_func,
                      (arr(i64, 4), arr(i64, 1), i64, i64) + (i64,) * 12 + (arr(at, 2),)))
    for at, wt in ((i64, i64), (i32, i64), (i32, i32)):
        cases.append((f"mac_seq[{at},{wt}]", mac_seq.py_func,
                      (i64, arr(at, 2), arr(wt, 2), arr(wt, 2), arr(wt, 2), arr(i64, 1), arr(i64, 1))
                      + (i64,) * 11 + (arr(i64, 1), arr(i64, 1))))
    for acc_name, acc_t in (("int32", int32), ("int64", int64)):
        for dp in (DP_OPERAND, DP_PRODUCT):
            for lut_shared in ((0, 4096) if dp == DP_PRODUCT else (0,)):
                g = make_gemm(acc_t, dp, lut_shared=lut_shared)
                if dp == DP_OPERAND:
                    a = w = {"int32": i32, "int64": i64}[acc_name]
                    bb = i64
                else:
                    a, w, bb = i32, i64, i32
                sig = (arr(a, 2), arr(w if dp == DP_OPERAND else i64, 2), arr(bb, 2), arr(bb, 2),
                       arr(i64, 1), arr(i64, 1)) + (i64,) * 8 + (arr(i64, 1), arr(i64, 1))
                cases.append((f"gemm[{acc_name},dp={dp},lut_shared={lut_shared}]", g.py_func, sig))
    cases.append(("requant_thr", requant_thr.py_func,
                  (arr(i64, 1), arr(i64, 2), b1, i64, i64, i64, arr(i64, 1))))
    cases.append(("requant_rescale", requant_rescale.py_func,
                  (arr(i64, 1), arr(i64, 1), arr(i64, 1), arr(i64, 1)) + (i64,) * 8
                  + (arr(i64, 1), arr(u8, 1))))
    cases.append(("add_seq", add_seq.py_func,
                  (arr(i64, 1), arr(i64, 1), arr(i64, 1), i64, arr(i64, 1), i64) + (i64,) * 5
                  + (arr(i64, 1), arr(i64, 1))))
    cases.append(("avgpool_seq", avgpool_seq.py_func,
                  (arr(i64, 4), arr(i64, 1), i64) + (i64,) * 11 + (arr(i64, 1), arr(i64, 1))))
    cases.append(("maxpool", maxpool.py_func, (arr(i64, 4),) + (i64,) * 8 + (arr(i64, 1),)))
    return cases


def compile_all_ptx(cc=(9, 0)):
    """{name: ptx} for every case of ptx_cases(), for compute capability `cc`, without a GPU.

    Device functions called from a kernel are compiled by numba-cuda for the *current*
    device's compute capability (dispatcher.compile_device asks the driver). Where no GPU
    is present, that query is answered with `cc` for the duration of the call only."""
    import contextlib
    import types as _types

    from numba.cuda import dispatcher as _disp

    @contextlib.contextmanager
    def _cc_without_gpu():
        real = _disp.get_current_device
        if cuda.is_available():
            yield
            return
        _disp.get_current_device = lambda: _types.SimpleNamespace(compute_capability=tuple(cc))
        try:
            yield
        finally:
            _disp.get_current_device = real

    out = {}
    with _cc_without_gpu():
        for name, f, sig in ptx_cases():
            out[name] = cuda.compile_ptx(f, sig, cc=cc)[0]
    return out
