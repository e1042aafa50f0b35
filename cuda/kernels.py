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


from nupes_sim import primitives as P

from ._compat import SIMULATOR as _SIMULATOR
from ._compat import import_cuda

cuda = import_cuda()
from numba import int32, int64, uint64  # noqa: E402  (after the numpy shim in _compat)

MODE_WRAP, MODE_SAT, MODE_EXACT = P.WRAP, P.SATURATE, P.EXACT  # the one numbering (primitives)
MODES = P.OVERFLOW_IDS
DP_OPERAND, DP_PRODUCT = 0, 1

# ------------------------------------------------------------------------------------------
# The primitives, compiled from their own bytecode by primitives.compile_all (one source for
# every backend; never re-implemented here).
# ------------------------------------------------------------------------------------------
PRIMITIVE_NAMES = P.NAMES
prim = P.compile_all(cuda.jit(device=True))
hash32 = prim.hash32
sat_add = prim.sat_add
sat_step = prim.sat_step  # the tiled saturating step (ARITHMETIC.md §4), shared with the CPU
wrap = prim.wrap
count_ge = prim.count_ge
rescale = prim.rescale


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


def _vec(t):
    """Width of the contiguous runs of a thread's register rows/columns (4, 2 or 1)."""
    return 4 if t % 4 == 0 else (2 if t % 2 == 0 else 1)


def gemm_grid(N, O, BM, BN):
    """Blocks of the 1-D GEMM grid (see make_gemm: grouped ordering over (n, o) tiles)."""
    return ((N + BM - 1) // BM) * ((O + BN - 1) // BN)


SMEM_STATIC_MAX = 48 * 1024  # bytes of static shared memory a kernel may declare


def gemm_default(acc_name, dp):
    """(tile dict, largest product LUT staged in shared memory) used by the backend for a
    GEMM path: BK=16 for the int32 operand kernel (two 16 KiB stages), BK=8 where entries
    are int64 or the product datapath stages two weight arrays and the LUT, so that the
    static shared memory stays under 48 KiB."""
    bk = 16 if (acc_name == "int32" and dp == DP_OPERAND) else 8
    return dict(BM=128, BN=128, BK=bk, TM=8, TN=8), (4096 if acc_name == "int32" else 2048)


def make_gemm(acc_type, dp, BM=128, BN=128, BK=16, TM=8, TN=8, lut_shared=0, GROUP=8):
    """Register-tiled order-free MAC kernel (the sum of the K products plus the bias).

    Block: (BM/TM)*(BN/TN) threads computing a BM x BN tile of C[n, o]; each thread holds a
    TM x TN accumulator block in registers. Its rows are runs of VM = 4 (or 2, 1) contiguous
    rows, run g at g*(BM/TM)*VM + ty*VM (columns likewise with tx), so that the fragment
    reads from shared memory are aligned vectors (ld.shared.v4) without bank conflicts and
    the writes of the epilogue come in whole 32-byte sectors.
    The K loop stages BK-deep slices of AT and the weights in two shared buffers: the global
    loads of slice t+1 go to registers while slice t is computed (one barrier per slice).
    Out-of-range entries load as 0, whose product is 0 on both datapaths.
    Grid: 1-D, gemm_grid(N, O, BM, BN) blocks; block b takes n tile first + (r % gsz) and o
    tile r // gsz in groups of GROUP n tiles, so blocks running at the same time share A and
    B panels in L2 (instead of sweeping all of the (K, O) weights once per n tile).
    acc_type (int32 or int64) is exact when the caller has checked that every partial sum
    fits it (int32: layer bound < 2^31). The result is the exact sum whatever the summation
    order, which is what wrap/exact (and saturate when no clamp can act) need; acc is
    derived from it (wrap or copy).

    lut_shared > 0 (product datapath): the flattened product LUT (<= lut_shared entries) is
    copied to shared memory once per block.
    """
    if BM % TM or BN % TN:
        raise ValueError("tile sizes must divide the block tile")
    NTX, NTY = BN // TN, BM // TM
    NT = NTX * NTY
    VM, VN = _vec(TM), _vec(TN)
    SM, SN = NTY * VM, NTX * VN  # distance between a thread's row (column) runs
    SA, SB = BK * BM, BK * BN  # one stage of As / Bs
    SA2, SB2 = 2 * SA, 2 * SB  # two stages
    LA, LB = (SA + NT - 1) // NT, (SB + NT - 1) // NT
    FA, FB = SA % NT == 0, SB % NT == 0  # every thread loads exactly LA (LB) entries
    LUTN = max(lut_shared, 1)
    ALIGN = None if _SIMULATOR else 16
    OPERAND = dp == DP_OPERAND
    sdt = acc_type if OPERAND else int32  # staged A and B entries
    # SIMPLE: NT is a multiple of BM and BN, so thread tid loads column tid % BM of rows
    # tid // BM + l*RA of each A slice (B likewise): interior slices need no guards
    SIMPLE = FA and FB and NT % BM == 0 and NT % BN == 0
    RA, RB = max(NT // BM, 1), max(NT // BN, 1)

    @cuda.jit(device=True)
    def _tile(N, O):
        """(n0, o0) of this block (grouped ordering)."""
        gn = (N + BM - 1) // BM
        go = (O + BN - 1) // BN
        pid = int64(cuda.blockIdx.x)
        per = GROUP * go
        g = pid // per
        first = g * GROUP
        gsz = min(gn - first, GROUP)
        r = pid - g * per
        return (first + r % gsz) * BM, (r // gsz) * BN

    @cuda.jit(device=True)
    def _row_base(n, HW, O_total, o_off):
        """out_index(n, o) = _row_base(n) + o * HW."""
        if HW == 1:
            return n * O_total + o_off
        b = n // HW
        return b * O_total * HW + (n - b * HW) + o_off * HW

    if OPERAND:
        @cuda.jit
        def gemm(AT, WV, Bbase, Bm, lut, bias, N, O, K, mode, width, HW, O_total, o_off,
                 exact_out, acc_out):
            As = cuda.shared.array(SA2, sdt, alignment=ALIGN)
            Bs = cuda.shared.array(SB2, sdt, alignment=ALIGN)
            c = cuda.local.array((TM, TN), acc_type)
            ar = cuda.local.array(TM, acc_type)
            br = cuda.local.array(TN, acc_type)
            ra = cuda.local.array(LA, sdt)
            rb = cuda.local.array(LB, sdt)
            tid = int64(cuda.threadIdx.x) & 1023  # (< 1024: lets LLVM drop negative-index fixups)
            tx = tid % NTX
            ty = tid // NTX
            n0, o0 = _tile(N, O)
            inner = n0 + BM <= N and o0 + BN <= O
            ka = tid // BM  # SIMPLE: entry l of this thread is (ka + l*RA, ma) of the A slice
            ma = tid - ka * BM
            kb = tid // BN
            mb = tid - kb * BN
            for i in range(TM):
                for j in range(TN):
                    c[i, j] = acc_type(0)
            nk = (K + BK - 1) // BK
            # slice 0 -> registers
            for l in range(LA):
                e = tid + l * NT
                kk = e // BM
                m = e - kk * BM
                v = sdt(0)
                if (FA or e < SA) and kk < K and n0 + m < N:
                    v = sdt(AT[kk, n0 + m])
                ra[l] = v
            for l in range(LB):
                e = tid + l * NT
                kk = e // BN
                m = e - kk * BN
                v = sdt(0)
                if (FB or e < SB) and kk < K and o0 + m < O:
                    v = sdt(WV[kk, o0 + m])
                rb[l] = v
            for t in range(nk):
                sa = (t & 1) * SA
                sb = (t & 1) * SB
                for l in range(LA):
                    e = tid + l * NT
                    if FA or e < SA:
                        As[uint64(sa + e)] = ra[l]
                for l in range(LB):
                    e = tid + l * NT
                    if FB or e < SB:
                        Bs[uint64(sb + e)] = rb[l]
                cuda.syncthreads()
                k1 = (t + 1) * BK
                if SIMPLE and inner and k1 + BK <= K:  # slice t+1 -> registers (no guards)
                    for l in range(LA):
                        ra[l] = sdt(AT[uint64(k1 + ka + l * RA), uint64(n0 + ma)])
                    for l in range(LB):
                        rb[l] = sdt(WV[uint64(k1 + kb + l * RB), uint64(o0 + mb)])
                elif t + 1 < nk:  # slice t+1 -> registers while slice t is computed
                    for l in range(LA):
                        e = tid + l * NT
                        kk = e // BM
                        m = e - kk * BM
                        v = sdt(0)
                        if (FA or e < SA) and k1 + kk < K and n0 + m < N:
                            v = sdt(AT[k1 + kk, n0 + m])
                        ra[l] = v
                    for l in range(LB):
                        e = tid + l * NT
                        kk = e // BN
                        m = e - kk * BN
                        v = sdt(0)
                        if (FB or e < SB) and k1 + kk < K and o0 + m < O:
                            v = sdt(WV[k1 + kk, o0 + m])
                        rb[l] = v
                pa = sa + ty * VM
                pb = sb + tx * VN
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[uint64(pa + kk * BM + (i // VM) * SM + i % VM)]
                    for j in range(TN):
                        br[j] = Bs[uint64(pb + kk * BN + (j // VN) * SN + j % VN)]
                    for i in range(TM):
                        for j in range(TN):
                            c[i, j] = acc_type(c[i, j] + acc_type(ar[i] * br[j]))
            for i in range(TM):
                n = n0 + ty * VM + (i // VM) * SM + i % VM
                if n < N:
                    rbase = _row_base(n, HW, O_total, o_off)
                    for j in range(TN):
                        o = o0 + tx * VN + (j // VN) * SN + j % VN
                        if o < O:
                            ex = int64(c[i, j]) + int64(bias[o])
                            q = rbase + o * HW
                            exact_out[q] = ex
                            if mode == MODE_WRAP:
                                acc_out[q] = wrap(ex, width)
                            else:
                                acc_out[q] = ex
    else:
        @cuda.jit
        def gemm(AT, WV, Bbase, Bm, lut, bias, N, O, K, mode, width, HW, O_total, o_off,
                 exact_out, acc_out):
            As = cuda.shared.array(SA2, int32, alignment=ALIGN)
            Bb = cuda.shared.array(SB2, int32, alignment=ALIGN)
            Bs = cuda.shared.array(SB2, int32, alignment=ALIGN)
            Ls = cuda.shared.array(LUTN, acc_type)
            c = cuda.local.array((TM, TN), acc_type)
            ar = cuda.local.array(TM, int32)
            bb = cuda.local.array(TN, int32)
            bm = cuda.local.array(TN, int32)
            ra = cuda.local.array(LA, int32)
            rb = cuda.local.array(LB, int32)
            rm = cuda.local.array(LB, int32)
            tid = int64(cuda.threadIdx.x) & 1023  # (< 1024: lets LLVM drop negative-index fixups)
            tx = tid % NTX
            ty = tid // NTX
            n0, o0 = _tile(N, O)
            inner = n0 + BM <= N and o0 + BN <= O
            ka = tid // BM  # SIMPLE: entry l of this thread is (ka + l*RA, ma) of the A slice
            ma = tid - ka * BM
            kb = tid // BN
            mb = tid - kb * BN
            if lut_shared:
                for e in range(tid, lut.shape[0], NT):
                    Ls[e] = acc_type(lut[e])
            for i in range(TM):
                for j in range(TN):
                    c[i, j] = acc_type(0)
            nk = (K + BK - 1) // BK
            for l in range(LA):
                e = tid + l * NT
                kk = e // BM
                m = e - kk * BM
                v = int32(0)
                if (FA or e < SA) and kk < K and n0 + m < N:
                    v = int32(AT[kk, n0 + m])
                ra[l] = v
            for l in range(LB):
                e = tid + l * NT
                kk = e // BN
                m = e - kk * BN
                v = int32(0)
                w = int32(0)
                if (FB or e < SB) and kk < K and o0 + m < O:
                    v = int32(Bbase[kk, o0 + m])
                    w = int32(Bm[kk, o0 + m])
                rb[l] = v
                rm[l] = w
            for t in range(nk):
                sa = (t & 1) * SA
                sb = (t & 1) * SB
                for l in range(LA):
                    e = tid + l * NT
                    if FA or e < SA:
                        As[uint64(sa + e)] = ra[l]
                for l in range(LB):
                    e = tid + l * NT
                    if FB or e < SB:
                        Bb[uint64(sb + e)] = rb[l]
                        Bs[uint64(sb + e)] = rm[l]
                cuda.syncthreads()
                k1 = (t + 1) * BK
                if SIMPLE and inner and k1 + BK <= K:  # slice t+1 -> registers (no guards)
                    for l in range(LA):
                        ra[l] = int32(AT[uint64(k1 + ka + l * RA), uint64(n0 + ma)])
                    for l in range(LB):
                        rb[l] = int32(Bbase[uint64(k1 + kb + l * RB), uint64(o0 + mb)])
                        rm[l] = int32(Bm[uint64(k1 + kb + l * RB), uint64(o0 + mb)])
                elif t + 1 < nk:  # slice t+1 -> registers while slice t is computed
                    for l in range(LA):
                        e = tid + l * NT
                        kk = e // BM
                        m = e - kk * BM
                        v = int32(0)
                        if (FA or e < SA) and k1 + kk < K and n0 + m < N:
                            v = int32(AT[k1 + kk, n0 + m])
                        ra[l] = v
                    for l in range(LB):
                        e = tid + l * NT
                        kk = e // BN
                        m = e - kk * BN
                        v = int32(0)
                        w = int32(0)
                        if (FB or e < SB) and k1 + kk < K and o0 + m < O:
                            v = int32(Bbase[k1 + kk, o0 + m])
                            w = int32(Bm[k1 + kk, o0 + m])
                        rb[l] = v
                        rm[l] = w
                pa = sa + ty * VM
                pb = sb + tx * VN
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[uint64(pa + kk * BM + (i // VM) * SM + i % VM)]
                    for j in range(TN):
                        bb[j] = Bb[uint64(pb + kk * BN + (j // VN) * SN + j % VN)]
                        bm[j] = Bs[uint64(pb + kk * BN + (j // VN) * SN + j % VN)]
                    for i in range(TM):
                        for j in range(TN):
                            # |v| <= Mw*Mx < 2^15; p = sign(v) * lut[base + |v|], without a branch
                            # (v == 0 reads lut[base], a valid entry, and adds 0)
                            v = int32(bm[j] * ar[i])
                            if lut_shared:
                                q = acc_type(Ls[bb[j] + abs(v)])
                            else:
                                q = acc_type(lut[bb[j] + abs(v)])
                            q = q if v > 0 else (acc_type(-q) if v < 0 else acc_type(0))
                            c[i, j] = acc_type(c[i, j] + q)
            for i in range(TM):
                n = n0 + ty * VM + (i // VM) * SM + i % VM
                if n < N:
                    rbase = _row_base(n, HW, O_total, o_off)
                    for j in range(TN):
                        o = o0 + tx * VN + (j // VN) * SN + j % VN
                        if o < O:
                            ex = int64(c[i, j]) + int64(bias[o])
                            q = rbase + o * HW
                            exact_out[q] = ex
                            if mode == MODE_WRAP:
                                acc_out[q] = wrap(ex, width)
                            else:
                                acc_out[q] = ex

    ebytes = 8 if acc_type == int64 else 4
    smem = (SA2 * (ebytes if OPERAND else 4) + SB2 * (ebytes if OPERAND else 8)
            + (LUTN * ebytes if lut_shared else ebytes))
    if smem > SMEM_STATIC_MAX:
        raise ValueError(f"GEMM tile needs {smem} bytes of shared memory (> {SMEM_STATIC_MAX})")
    gemm.config = dict(acc_type=str(acc_type), dp=dp, BM=BM, BN=BN, BK=BK, TM=TM, TN=TN,
                       lut_shared=lut_shared, threads=NT, GROUP=GROUP)
    return gemm


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
            cfg, lmax = gemm_default(acc_name, dp)
            for lut_shared in ((0, lmax) if dp == DP_PRODUCT else (0,)):
                g = make_gemm(acc_t, dp, lut_shared=lut_shared, **cfg)
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
