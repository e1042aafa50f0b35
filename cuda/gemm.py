"""The register-tiled GEMM kernel of order-free MAC sums (wrap, exact, saturate that cannot
clamp), for both datapaths: one kernel body, so the global loads, the shared-memory staging
and the epilogue are written once; the datapath only changes what is staged for the weights
(operand: decoded weights; product: table offsets and signed magnitudes) and the product
formed from a staged pair.
"""

from numba import int32, int64, uint64

from .device import DP_OPERAND, MODE_WRAP, SIMULATOR, cuda, wrap


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

    Arguments: (AT, B1, B2, lut, bias, N, O, K, mode, width, HW, O_total, o_off, exact_out,
    acc_out). Operand datapath: B1 = the decoded weights WV (K, O), B2 unused (a placeholder),
    p = AT[k, n] * WV[k, o]. Product datapath: B1 = Bbase (table row offsets), B2 = Bm (signed
    magnitude multipliers), both int32 (K, O); v = Bm[k, o] * AT[k, n] (|v| <= Mw*Mx <= 128·255 < 2^15
    with full-range 8-bit weights and unsigned 8-bit activations),
    p = sign(v) * lut[Bbase[k, o] + |v|] (v == 0 reads lut[Bbase], a valid entry, adds 0).
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
    ALIGN = None if SIMULATOR else 16
    PRODUCT = dp != DP_OPERAND
    sdt = int32 if PRODUCT else acc_type  # staged A and B1 entries
    SM2, LM, TM2 = (SB2, LB, TN) if PRODUCT else (1, 1, 1)  # staged B2 (product only)
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

    @cuda.jit
    def gemm(AT, B1, B2, lut, bias, N, O, K, mode, width, HW, O_total, o_off, exact_out, acc_out):
        As = cuda.shared.array(SA2, sdt, alignment=ALIGN)
        Bs = cuda.shared.array(SB2, sdt, alignment=ALIGN)
        Ms = cuda.shared.array(SM2, int32, alignment=ALIGN)
        Ls = cuda.shared.array(LUTN, acc_type)
        c = cuda.local.array((TM, TN), acc_type)
        ar = cuda.local.array(TM, sdt)
        br = cuda.local.array(TN, sdt)
        bm = cuda.local.array(TM2, int32)
        ra = cuda.local.array(LA, sdt)
        rb = cuda.local.array(LB, sdt)
        rm = cuda.local.array(LM, int32)
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
        # t = -1 only loads slice 0; then per slice t: registers -> shared stage t & 1, load
        # slice t+1 into registers (global latency hidden behind the compute), compute slice t
        for t in range(-1, nk):
            sa = (t & 1) * SA
            sb = (t & 1) * SB
            if t >= 0:
                for l in range(LA):
                    e = tid + l * NT
                    if FA or e < SA:
                        As[uint64(sa + e)] = ra[l]
                for l in range(LB):
                    e = tid + l * NT
                    if FB or e < SB:
                        Bs[uint64(sb + e)] = rb[l]
                        if PRODUCT:
                            Ms[uint64(sb + e)] = rm[l]
                cuda.syncthreads()
            k1 = (t + 1) * BK
            if SIMPLE and inner and k1 + BK <= K:  # slice t+1 -> registers (no guards)
                for l in range(LA):
                    ra[l] = sdt(AT[uint64(k1 + ka + l * RA), uint64(n0 + ma)])
                for l in range(LB):
                    rb[l] = sdt(B1[uint64(k1 + kb + l * RB), uint64(o0 + mb)])
                    if PRODUCT:
                        rm[l] = int32(B2[uint64(k1 + kb + l * RB), uint64(o0 + mb)])
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
                    w = int32(0)
                    if (FB or e < SB) and k1 + kk < K and o0 + m < O:
                        v = sdt(B1[k1 + kk, o0 + m])
                        if PRODUCT:
                            w = int32(B2[k1 + kk, o0 + m])
                    rb[l] = v
                    if PRODUCT:
                        rm[l] = w
            if t >= 0:  # compute slice t from its shared stage
                pa = sa + ty * VM
                pb = sb + tx * VN
                for kk in range(BK):
                    for i in range(TM):
                        ar[i] = As[uint64(pa + kk * BM + (i // VM) * SM + i % VM)]
                    for j in range(TN):
                        br[j] = Bs[uint64(pb + kk * BN + (j // VN) * SN + j % VN)]
                        if PRODUCT:
                            bm[j] = Ms[uint64(pb + kk * BN + (j // VN) * SN + j % VN)]
                    for i in range(TM):
                        for j in range(TN):
                            if PRODUCT:
                                v = int32(bm[j] * ar[i])
                                if lut_shared:
                                    q = acc_type(Ls[br[j] + abs(v)])
                                else:
                                    q = acc_type(lut[br[j] + abs(v)])
                                q = q if v > 0 else (acc_type(-q) if v < 0 else acc_type(0))
                                c[i, j] = acc_type(c[i, j] + q)
                            else:
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

    ebytes = 8 if acc_type == int64 else 4
    smem = (
        SA2 * (4 if PRODUCT else ebytes)
        + SB2 * (8 if PRODUCT else ebytes)
        + (LUTN * ebytes if lut_shared else ebytes)
    )
    if smem > SMEM_STATIC_MAX:
        raise ValueError(f"GEMM tile needs {smem} bytes of shared memory (> {SMEM_STATIC_MAX})")
    gemm.config = dict(
        acc_type=str(acc_type),
        dp=dp,
        BM=BM,
        BN=BN,
        BK=BK,
        TM=TM,
        TN=TN,
        lut_shared=lut_shared,
        threads=NT,
        GROUP=GROUP,
    )
    return gemm
