"""Numba CPU backend: bit-exact twin of nupes_sim.oracle, fast.

API: ``run_layer(layer, *inputs, fast=None)`` returns exactly what ``oracle.run_layer``
returns (same keys, int64 arrays, shapes, values, and the same input validation errors).
``FAST_PATHS`` (module flag, default True) or ``fast=False`` disables the BLAS fast paths,
so that every MAC goes through the integer kernels (the tests compare both).

Integer arithmetic inside kernels is the scalar primitives of nupes_sim.primitives,
compiled here with numba.njit (never re-implemented, never fastmath, no floats). The only
floating point is the BLAS fast path below, used only where a written proof says it is
exact; everything else is int64.
"""

import os

# Numba's OpenMP threads spin-wait after every parallel region by default; the fast paths
# alternate numba regions with OpenBLAS GEMMs, whose threads then compete with the spinning
# ones for the same cores (measured on the 2-core project machine: a 0.3 ms decode kernel
# took 15 ms and GEMMs several times longer). Passive waiting (sleep at once) removes that.
# Set before numba's libgomp is loaded; a value the user set is kept. It also applies to other
# libgomp copies loaded later in this process (e.g. torch's).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from . import primitives as P  # noqa: E402
from .layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d  # noqa: E402
from .tables import Rescale, Thresholds  # noqa: E402
from .transformer.cpu import OPS as _TRANSFORMER_OPS  # noqa: E402

FAST_PATHS = True  # False: integer kernels only (no BLAS), for cross-checking
USE_FLOAT32 = True  # allow float32 GEMMs when every partial sum is < 2^24
# Product datapath: use the one-hot GEMM decomposition only while it needs at most this many
# float GEMMs (T table rows x Mw weight magnitudes); otherwise the integer gather kernel.
PRODUCT_GEMM_MAX = 16
STATS = {}  # name of the path taken -> count (tests use it to check the fast path ran)


def _note(path):
    STATS[path] = STATS.get(path, 0) + 1


# --------------------------------------------------------------------------------------------
# The primitives, compiled from their own bytecode by primitives.compile_all (one source for
# every backend; never re-implemented here).
# --------------------------------------------------------------------------------------------
_PRIMITIVE_NAMES = P.NAMES
_p = P.compile_all(njit)
hash32 = _p.hash32
round_shift = _p.round_shift
sat_add = _p.sat_add
wrap = _p.wrap
count_ge = _p.count_ge
rescale = _p.rescale

INT64_MIN = -(2**63)


# --------------------------------------------------------------------------------------------
# Accumulator contract, streaming form (one product at a time, k ascending):
#   tile == 0: acc = sat(acc + p) for every p, starting from the bias;
#   tile == T: part = 0 at the start of each tile, part = sat(part + p), and at the end of a
#              tile (or of the sequence) acc = sat(acc + part).
# acc and part always lie in [lo, hi]; products satisfy |p| < 2^62 (MacLayer/Add checks), so
# every sat_add precondition holds (for b = part in [lo, hi], sat_add's comparisons
# hi - b and lo - b stay inside int64 for every width <= 64).
# --------------------------------------------------------------------------------------------
@njit(inline="always")
def _feed(acc, part, p, k, kk, tile, lo, hi):
    if tile == 0:
        return sat_add(acc, p, lo, hi), part
    if k % tile == 0:
        part = 0
    part = sat_add(part, p, lo, hi)
    if k % tile == tile - 1 or k == kk - 1:
        acc = sat_add(acc, part, lo, hi)
    return acc, part


@njit  # serial: trivial work, and no thread hand-off next to BLAS threads
def _wrap_array(x, width):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = wrap(x[i], width)
    return out


@njit(parallel=True)
def _accumulate_rows(prods, start, mode, width, tile, lo, hi):
    """Rows of products (R, K) -> (exact, acc): mode 0 exact, 1 wrap, 2 saturate."""
    R, K = prods.shape
    exact = np.empty(R, np.int64)
    acc = np.empty(R, np.int64)
    for r in prange(R):
        s = start[r]
        for k in range(K):
            s += prods[r, k]  # exact: |every prefix| <= layer bound < 2^63
        exact[r] = s
        if mode == 0:
            acc[r] = s
        elif mode == 1:
            acc[r] = wrap(s, width)
        else:
            a = start[r]
            part = 0
            for k in range(K):
                a, part = _feed(a, part, prods[r, k], k, K, tile, lo, hi)
            acc[r] = a
    return exact, acc


# ---- MAC integer kernels: X (N, K) per row, weights (O, K) per output; result (N, O) -----------
# operand datapath: product = WV[o, k] * XV[n, k] (decoded values; padded taps have XV = 0).
# product datapath: product = wsign[o,k] * sign(q) * lut[off[o,k] + mul[o,k] * |q|], q = XC[n, k]
#   (q = 0 for padded taps, so sign 0 makes the product 0, as in the oracle).
@njit(inline="always")
def _sign(q):
    return (q > 0) - (q < 0)


@njit(parallel=True)
def _mac_operand_sum(XV, WV, bias):
    N, K = XV.shape
    O = WV.shape[0]
    exact = np.empty((N, O), np.int64)
    for o in prange(O):
        w = WV[o]
        for n in range(N):
            x = XV[n]
            s = 0
            for k in range(K):
                s += w[k] * x[k]  # |w x| < 2^62 and every partial sum <= bound < 2^63
            exact[n, o] = s + bias[o]
    return exact


@njit(parallel=True)
def _mac_product_sum(XC, wsign, off, mul, lut, bias):
    N, K = XC.shape
    O = wsign.shape[0]
    exact = np.empty((N, O), np.int64)
    for o in prange(O):
        ws = wsign[o]
        of = off[o]
        mu = mul[o]
        for n in range(N):
            x = XC[n]
            s = 0
            for k in range(K):
                q = x[k]
                a = q if q >= 0 else -q
                s += ws[k] * _sign(q) * lut[of[k] + mu[k] * a]
            exact[n, o] = s + bias[o]
    return exact


@njit(parallel=True)
def _mac_operand_sat(XV, WV, bias, lo, hi, tile):
    N, K = XV.shape
    O = WV.shape[0]
    exact = np.empty((N, O), np.int64)
    acc = np.empty((N, O), np.int64)
    for i in prange(N * O):
        n = i // O
        o = i - n * O
        s = bias[o]
        a = bias[o]
        part = 0
        for k in range(K):
            p = WV[o, k] * XV[n, k]
            s += p
            a, part = _feed(a, part, p, k, K, tile, lo, hi)
        exact[n, o] = s
        acc[n, o] = a
    return exact, acc


@njit(parallel=True)
def _mac_product_sat(XC, wsign, off, mul, lut, bias, lo, hi, tile):
    N, K = XC.shape
    O = wsign.shape[0]
    exact = np.empty((N, O), np.int64)
    acc = np.empty((N, O), np.int64)
    for i in prange(N * O):
        n = i // O
        o = i - n * O
        s = bias[o]
        a = bias[o]
        part = 0
        for k in range(K):
            q = XC[n, k]
            m = q if q >= 0 else -q
            p = wsign[o, k] * _sign(q) * lut[off[o, k] + mul[o, k] * m]
            s += p
            a, part = _feed(a, part, p, k, K, tile, lo, hi)
        exact[n, o] = s
        acc[n, o] = a
    return exact, acc


@njit(parallel=True)
def _im2col(x, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo):
    """Columns (B*ho*wo, cg*kh*kw) of channels c0..c0+cg of x (B, C, H, W); k = (c, i, j),
    c slowest; padded taps are 0 (a decoded value 0 / a code 0 whose sign is 0)."""
    B, _, H, W = x.shape
    K = cg * kh * kw
    cols = np.zeros((B * ho * wo, K), x.dtype)
    for r in prange(B * ho * wo):
        b = r // (ho * wo)
        rem = r - b * ho * wo
        oh = rem // wo
        ow = rem - oh * wo
        for c in range(cg):
            for i in range(kh):
                h = oh * sh - ph + i * dh
                if h < 0 or h >= H:
                    continue
                for j in range(kw):
                    w = ow * sw - pw + j * dw
                    if 0 <= w < W:
                        cols[r, (c * kh + i) * kw + j] = x[b, c0 + c, h, w]
    return cols


# ---- requantization -------------------------------------------------------------------------
@njit(parallel=True)
def _requant_thresholds(v, thr, inner, nch, qmin, monotone):
    out = np.empty(v.size, np.int64)
    R, n = thr.shape
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        if monotone:
            c = count_ge(v[i], thr, row, n)
        else:  # not a valid (non-decreasing) table: count entries <= v one by one, as the oracle
            c = 0
            for j in range(n):
                if v[i] >= thr[row, j]:
                    c += 1
        out[i] = qmin + c
    return out


@njit(parallel=True)
def _requant_rescale(v, mult, shift, lim, zp, lo, hi, mode, seed, tensor_id, inner, nch):
    """primitives.rescale per element; elements outside its |v*m| < 2^62 precondition are
    flagged (out = 0, flag = 1): the caller refuses them (layers prevent them)."""
    out = np.empty(v.size, np.int64)
    flag = np.zeros(v.size, np.uint8)
    R = mult.shape[0]
    for i in prange(v.size):
        row = 0 if R == 1 else (i // inner) % nch
        x = v[i]
        if x <= lim[row] and x >= -lim[row]:
            r = hash32(seed, tensor_id, i) if mode == P.STOCHASTIC else 0
            out[i] = rescale(x, mult[row], shift[row], zp, lo, hi, mode, r)
        else:
            out[i] = 0
            flag[i] = 1
    return out, flag


def _requantize(values, requant, channel_axis, seed, tensor_id):
    """Same contract as oracle.requantize: row = channel if the table has several rows."""
    if requant is None:
        return values.copy()
    shape = values.shape
    nch = shape[channel_axis] if values.ndim else 1
    inner = int(np.prod(shape[channel_axis + 1:])) if values.ndim else 1
    v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    if isinstance(requant, Thresholds):
        thr = np.ascontiguousarray(requant.thr, dtype=np.int64)
        if thr.ndim != 2 or (thr.shape[0] != 1 and thr.shape[0] < nch and v.size):
            raise IndexError(f"thresholds with {thr.shape[0]} rows cannot requantize {nch} channels")
        monotone = bool(thr.shape[1] < 2 or (np.diff(thr, axis=1) >= 0).all())
        out = _requant_thresholds(v, thr, max(inner, 1), max(nch, 1), requant.qmin, monotone)
        return out.reshape(shape)
    assert isinstance(requant, Rescale)
    mult = np.ascontiguousarray(requant.multiplier, dtype=np.int64).reshape(-1)
    shift = np.ascontiguousarray(requant.shift, dtype=np.int64).reshape(-1)
    if (mult.shape[0] != 1 and mult.shape[0] < nch and v.size) or shift.shape[0] < mult.shape[0]:
        raise IndexError(f"rescale with {mult.shape[0]} multipliers cannot requantize {nch} channels")
    # lim[row]: |x| <= lim  =>  |x*m| <= 2^62 - 1 (rescale's precondition), and 0 <= shift <= 62
    # (round_shift's). Rows violating the shift range get lim = -1: every element is redone
    # in Python integers below.
    lim = np.empty(mult.shape[0], np.int64)
    for r in range(mult.shape[0]):
        m, s = int(mult[r]), int(shift[r])
        lim[r] = -1 if not 0 <= s <= 62 else ((2**62 - 1) // abs(m) if m else 2**62 - 1)
    out, flag = _requant_rescale(v, mult, shift, lim, requant.zero_point, requant.qmin, requant.qmax,
                                 requant.rounding, seed, tensor_id, max(inner, 1), max(nch, 1))
    if flag.any():  # layers refuse such requantizers at construction (_check_requant_input)
        raise ValueError("rescale input beyond its |acc·m| < 2^62 precondition; the layer was not validated")
    return out.reshape(shape)


# --------------------------------------------------------------------------------------------
# Exact GEMM in floating point.
#
# Claim: for integer matrices A (N, K), B (O, K) with |A|, |B| < 2^53 and
# bnd >= max_{n,o} sum_k |A[n,k]| |B[o,k]|, with bnd < 2^53, float64 A @ B.T is exact.
# Proof: a classical GEMM (OpenBLAS/numpy; no Strassen-type algorithm) computes each C[n,o]
# by multiplying pairs and adding, in some order and blocking, possibly with fused
# multiply-adds, starting from 0 (alpha = 1, beta = 0). Every value it forms -- a product,
# or a partial sum, i.e. the sum of some subset of the K products -- is an integer of
# magnitude <= bnd < 2^53, hence representable in float64; a correctly rounded operation
# whose exact result is representable returns it unchanged. So no operation ever rounds, and
# the result is the exact integer sum (converted to int64 exactly). The same holds for
# float32 with 2^24 (24-bit significand). The converted operands are exact because
# |A|, |B| < 2^53 (resp. 2^24) are checked.
#
# Split: if bnd >= 2^53, write A = Ah * 2^S + Al with Ah = A >> S (floor), Al = A & (2^S-1).
# Then A @ B.T = 2^S (Ah @ B.T) + Al @ B.T, and with sB = max_o sum_k |B[o,k]| (exact):
#   sum |Al||B| <= (2^S - 1) sB,   sum |Ah||B| <= sum (|A|/2^S + 1)|B| <= (bnd >> S) + 1 + sB,
# so each part is again an exact GEMM when those bounds are < 2^53 (S is searched). The
# recombination 2^S*Rh + Rl is done in int64 with two's complement wrap-around: it is
# congruent to the true value mod 2^64, and the true value has |.| <= bnd < 2^63, so it is
# the true value.
# --------------------------------------------------------------------------------------------
_F53, _F24 = 2**53, 2**24


def _maxabs(a):
    return int(np.abs(a).max(initial=0)) if a.size else 0


def _max_row_abs_sum(a):
    """max_r sum_k |a[r, k]| exactly (Python ints when int64 could overflow)."""
    if a.size == 0:
        return 0
    m = _maxabs(a)
    if m * a.shape[1] < 2**63:
        return int(np.abs(a).sum(axis=1).max())
    return max(sum(int(v) for v in np.abs(row.astype(object))) for row in a)


def _exact_matmul(A, B, bnd, depth=0):
    """Exact int64 A @ B.T (see the proof above), or None if no exact split was found."""
    amax, bmax = _maxabs(A), _maxabs(B)
    if USE_FLOAT32 and bnd < _F24 and amax < _F24 and bmax < _F24:
        _note("gemm_f32")
        return (A.astype(np.float32) @ B.astype(np.float32).T).astype(np.int64)
    if bnd < _F53 and amax < _F53 and bmax < _F53:
        _note("gemm_f64")
        return (A.astype(np.float64) @ B.astype(np.float64).T).astype(np.int64)
    if depth >= 2:
        return None
    for swap in (False, True):
        X, Y = (B, A) if swap else (A, B)
        sY = _max_row_abs_sum(Y)
        for S in range(1, 63):
            bl = ((1 << S) - 1) * sY
            bh = (bnd >> S) + 1 + sY
            if bl < _F53 and bh < _F53:
                Xh, Xl = X >> S, X & ((1 << S) - 1)
                rh = _exact_matmul(*((Y, Xh) if swap else (Xh, Y)), bh, depth + 1)
                rl = _exact_matmul(*((Y, Xl) if swap else (Xl, Y)), bl, depth + 1)
                if rh is None or rl is None:
                    break
                _note("gemm_split")
                with np.errstate(over="ignore"):
                    return (rh << np.int64(S)) + rl  # wrap-around in int64, see the proof
    return None


# --------------------------------------------------------------------------------------------
# MAC layers
# --------------------------------------------------------------------------------------------
_MODE = {"exact": 0, "wrap": 1, "saturate": 2}


def _weights(layer, sl=slice(None)):
    """Per (o, k) weight-side arrays of the datapath for output rows `sl`."""
    O = layer.out_channels
    qw = layer.w_codes.reshape(O, -1)[sl].astype(np.int64)
    tidx = layer.w_table_index[sl]
    if layer.datapath == "operand":
        return dict(WV=np.ascontiguousarray(layer.w_table.lut[tidx, qw - layer.w_range.qmin], np.int64))
    pt = layer.p_table
    lut = np.ascontiguousarray(pt.lut, dtype=np.int64)
    L = lut.shape[1]
    mw = np.abs(qw)
    if pt.by_product:
        off, mul = tidx * L, mw
    else:
        off, mul = tidx * L + mw * (pt.mx + 1), np.ones_like(mw)
    return dict(wsign=np.sign(qw), off=np.ascontiguousarray(off), mul=np.ascontiguousarray(mul),
                lut=lut.reshape(-1), mw=mw, tidx=tidx, L=L)


def _check_product_index(layer, x_maxmag):
    """The oracle indexes p_table.lut with numpy (IndexError if out of range); so do we."""
    pt = layer.p_table
    mw = int(np.abs(layer.w_codes).max(initial=0))
    top = mw * x_maxmag if pt.by_product else mw * (pt.mx + 1) + x_maxmag
    if top >= pt.lut.shape[1]:
        raise IndexError(f"{layer.name}: product index {top} is out of bounds for a table of "
                         f"{pt.lut.shape[1]} entries")


def _decode_x(layer, x):
    """Activation side of the datapath: decoded values (operand) or signed codes (product)."""
    if layer.datapath == "operand":
        return np.ascontiguousarray(layer.x_table.lut[0], np.int64)[x - layer.x_range.qmin]
    return x


def _mac_fast(layer, X, wts, bias):
    """Order-free exact sums (N, O) by exact float GEMMs, or None when no proof applies."""
    bnd = int(layer.bound.max(initial=0))  # >= |bias| + sum_k max|product| for every channel
    if layer.datapath == "operand":
        r = _exact_matmul(X, wts["WV"], bnd)
        return None if r is None else r + bias[None, :]
    # Product datapath: sum_k sw sx lut[t, idx(m, |qx|)] = sum_{t,m} W_tm @ T_tm(X)^T with
    # W_tm[o,k] = sign(qw) [t_ok = t][|qw_ok| = m] and T_tm(X)[n,k] = sign(qx) lut[t, idx(m,|qx|)]
    # (each (o,k) term lands in exactly one (t, m) GEMM). Every partial sum of GEMM (t, m) is
    # a sum over a subset of k of products bounded by max_abs_product[o,k], so it is <= bound[o]:
    # each GEMM is exact under the same proof (bnd = max bound).
    mw, tidx = wts["mw"], wts["tidx"]
    pt = layer.p_table
    T, nm = pt.lut.shape[0], int(mw.max(initial=0)) + 1
    if T * (nm - 1) > PRODUCT_GEMM_MAX and T > PRODUCT_GEMM_MAX:
        return None  # e.g. per-channel weight scales: one product table per output channel
    present = np.bincount((tidx * nm + mw).reshape(-1), minlength=T * nm).reshape(T, nm)
    present[:, 0] = 0  # |qw| = 0 contributes nothing
    pairs = np.argwhere(present > 0)
    if len(pairs) > PRODUCT_GEMM_MAX:
        return None
    lut = np.asarray(pt.lut, np.int64)
    ax = np.abs(X)
    sx = np.sign(X)
    total = np.zeros((X.shape[0], wts["wsign"].shape[0]), np.int64)
    for t, m in pairs:
        idx = m * ax if pt.by_product else m * (pt.mx + 1) + ax
        Tm = sx * lut[t, idx]
        Wm = np.where((tidx == t) & (mw == m), wts["wsign"], 0)
        r = _exact_matmul(Tm, Wm, bnd)
        if r is None:
            return None
        total += r  # partial totals are sums over disjoint k sets: |.| <= bound < 2^63
    _note("product_gemm")
    return total + bias[None, :]


def _check_product_range(layer):
    """Refuse layers whose products can reach 2^62 (the contract's limit).

    MacLayer.max_abs_product forms |w|*max|x| in int64, which wraps for huge tables (e.g.
    8-bit codes with w_frac_bits=30, x_frac_bits=20): the layer is then accepted with a
    wrong (negative) bound and the oracle's own int64 products wrap too. Python ints here.
    """
    if layer.datapath == "operand":
        mw = _maxabs(np.asarray(layer.w_table.lut))
        mx = _maxabs(np.asarray(layer.x_table.lut))
        top = mw * mx
    else:
        top = _maxabs(np.asarray(layer.p_table.lut))
    if top >= 2**62 or int(layer.bound.min(initial=0)) < 0:
        raise ValueError(f"{layer.name}: a single product can reach {top} >= 2^62 (or the layer bound "
                         "is corrupt); lower the fractional bits")


def _mac(layer, X, sl=slice(None), fast=None):
    """(exact, acc) of shape (N, O_sl) for activation rows X (N, K) (decoded/codes, int64)."""
    fast = FAST_PATHS if fast is None else fast
    _check_product_range(layer)
    wts = _weights(layer, sl)
    bias = np.ascontiguousarray(layer.bias[sl], np.int64)
    acc_cfg = layer.acc
    mode = _MODE[acc_cfg.overflow]
    X = np.ascontiguousarray(X, np.int64)
    order_free = mode != 2 or layer.no_overflow_possible()
    exact = None
    if order_free:
        # wrap/exact depend on the exact sum only; saturate equals it when no_overflow_possible
        # (every prefix, tile partial and total is <= bound <= acc.hi, so no clamp acts).
        if fast:
            exact = _mac_fast(layer, X, wts, bias)
        if exact is None:
            _note("int_sum")
            if layer.datapath == "operand":
                exact = _mac_operand_sum(X, wts["WV"], bias)
            else:
                exact = _mac_product_sum(X, wts["wsign"], wts["off"], wts["mul"], wts["lut"], bias)
        acc = exact.copy() if mode != 1 else _wrap_array(exact.reshape(-1), acc_cfg.width).reshape(exact.shape)
        return exact, acc
    _note("int_saturate")
    if layer.datapath == "operand":
        return _mac_operand_sat(X, wts["WV"], bias, acc_cfg.lo, acc_cfg.hi, acc_cfg.tile)
    return _mac_product_sat(X, wts["wsign"], wts["off"], wts["mul"], wts["lut"], bias,
                            acc_cfg.lo, acc_cfg.hi, acc_cfg.tile)


# --------------------------------------------------------------------------------------------
# Fused exact-float MAC path (linear and conv2d, order-free accumulation only).
#
# Decomposition. A product depends on (key, q): key = t·nw + (qw - qmin_w) (t = the weight's
# table row, nw = number of weight codes), q = the activation code. It is written as an inner
# product of two short integer vectors,
#     product(key, q) = sum_{j<J} G[q, j] · H[key, j]                                    (*)
#   operand:  J = 1, G[q, 0] = x_lut[q], H[key, 0] = w_lut[t, qw]  ((*) is the definition);
#   product, one-hot on the weights: j runs over the (t, m) pairs present (m = |qw| > 0),
#     G[q, j] = sign(q)·lut[t_j, idx(m_j, |q|)],  H[key, j] = sign(qw)·[(t, |qw|) = (t_j, m_j)];
#   product, one-hot on the activations: j runs over the magnitudes a_j > 0 of [min x, max x],
#     G[q, j] = sign(q)·[|q| = a_j],             H[key, j] = sign(qw)·lut[t, idx(|qw|, a_j)].
# The cheaper side (smaller J) is taken. For the product datapath (*) is verified on the host
# in int64 for every used key and every q in [min x, max x] against the product as the oracle
# forms it, and each row of G (or of H) has at most one nonzero entry (one-hot).
# Then sum_k product(o, k) = sum_{k, j} F[n, kJ+j] · Wt[kJ+j, o] with F[n, kJ+j] = G[x[n,k], j]
# (0 for a padded conv tap, whose product is 0) and Wt[kJ+j, o] = H[key(o,k), j]: GEMMs.
#
# Exactness. cost(key) = max_{q in [min x, max x]} sum_j |G[q,j]|·|H[key,j]| bounds the sum
# of the absolute values of the J terms of one k (operand: |w_lut|·max|x_lut|; one-hot: the
# largest |product|, as a single term is nonzero). The k axis is cut greedily into chunks
# with max_o sum_{k in chunk} cost(key(o,k)) < L, L = 2^24 (float32) or 2^53 (float64), and
# |G|, |H| < L (exact conversion). Every value a GEMM forms over one chunk -- a product, or a
# partial sum of any subset of the chunk's terms, in any order or blocking, with or without
# FMA -- is then an integer of magnitude < L, so by the proof of _exact_matmul (above) each
# chunk result is the exact integer. Chunk results are converted to int64 (exact) and summed
# in int64 after the bias: every intermediate is the bias plus a sum over a subset of the
# products, |.| <= bound < 2^63. No overflow handling is needed there: this path runs only
# for wrap/exact, or saturate with no_overflow_possible() (order-free sums, see _mac).
# --------------------------------------------------------------------------------------------
FUSED = True  # False: the older per-call paths (_mac_fast / integer kernels) only
ONE_HOT = None  # product datapath side: None = cheaper, "weights" or "activations" (tests)
F32_MAX_CHUNKS = 24  # more float32 chunks than this: use float64 (fewer, larger GEMMs)
CHUNK_LIMIT = {np.float32: _F24, np.float64: _F53}  # tests lower these to force many chunks
FEATURE_BYTES = 4 << 20  # im2col / feature row blocks of about this size (per worker task)
PRODUCT_CHECK_MAX = 1 << 22  # product datapath: largest host identity check (q range x keys)


# GEMM threading. OpenBLAS wakes and joins its threads at every call; on a loaded machine
# (the project's 2 shared cores) a descheduled BLAS thread stalls the call for a time slice,
# and k-chunked GEMMs make many calls (measured: 6 GEMMs of 256x180x1024 took ~100 ms with 2
# OpenBLAS threads, 16 ms with 1). So the fused path splits its rows over its own worker
# threads, each building its features (nogil numba) and calling single-threaded BLAS
# (openblas_set_num_threads_local: this thread only; nothing global is changed).
_POOL = None  # (pid, executor, workers): a forked child builds its own (threads do not fork)


def _blas_local_threads():
    """openblas_set_num_threads_local of the OpenBLAS numpy uses, or None."""
    import ctypes
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for lib in libs:
        try:
            fn = ctypes.CDLL(lib).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        return fn
    return None


def _pool():
    """(executor, number of workers) of this process."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor
        np.ones((2, 2)) @ np.ones((2, 2))  # make sure BLAS is loaded
        setter = _blas_local_threads()
        n = max(1, numba.get_num_threads())
        _POOL = (os.getpid(), ThreadPoolExecutor(n, thread_name_prefix="nupes-gemm",
                                                 initializer=(lambda: setter(1)) if setter else None), n)
    return _POOL[1], _POOL[2]


@njit
def _minmax(x):
    mn = x[0]
    mx = x[0]
    for i in range(1, x.size):
        v = x[i]
        if v < mn:
            mn = v
        elif v > mx:
            mx = v
    return mn, mx


def _check_x(rng, name, x):
    """rng.check_codes(name, x) (same errors), returning (min, max) of x ((0, 0) if empty)."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "iu" and x.size:
        mn, mx = _minmax(np.ascontiguousarray(x).reshape(-1))
        mn, mx = int(mn), int(mx)
        if rng.qmin <= mn and mx <= rng.qmax:
            return mn, mx
    rng.check_codes(name, x)  # raises exactly as the oracle does
    return 0, 0


def _as_kernel_codes(x):
    x = np.ascontiguousarray(x)
    return x.astype(np.int64) if x.dtype.kind == "u" and x.itemsize == 8 else x


@njit(parallel=True)
def _wt_build(qw, tidx, perm, nw, wqmin, Hf, cost_key, Wt, costT):
    """Wt[k*J + j, o] = Hf[key, j], costT[k, o] = cost_key[key], key = t*nw + qw - qmin of the
    weight (o, perm[k]) (perm: the fused path's order of k; the sum is order-free)."""
    O = qw.shape[0]
    K = perm.shape[0]
    J = Hf.shape[1]
    for k in prange(K):
        kk = perm[k]
        for o in range(O):
            key = tidx[o, kk] * nw + (qw[o, kk] - wqmin)
            costT[k, o] = cost_key[key]
            for j in range(J):
                Wt[k * J + j, o] = Hf[key, j]


@njit
def _cut_chunks(costT, limit, max_chunks):
    """Greedy cut of k into chunks with max_o sum cost < limit; (bounds, n) or n = -1."""
    K, O = costT.shape
    bounds = np.empty(K + 1, np.int64)
    bounds[0] = 0
    n = 0
    run = np.zeros(O, np.int64)
    for k in range(K):
        over = False
        for o in range(O):
            c = costT[k, o]
            if c >= limit:
                return bounds, -1
            if run[o] + c >= limit:  # run, c < limit <= 2^53: no int64 overflow
                over = True
        if over:
            n += 1
            if n >= max_chunks:
                return bounds, -1
            bounds[n] = k
            run[:] = 0
        for o in range(O):
            run[o] += costT[k, o]
    n += 1
    bounds[n] = K
    return bounds, n


@njit(nogil=True)
def _features_linear(x, qmin, Gf, r0, F):
    """Rows r0.. of F[n, k*J + j] = Gf[x[n, k] - qmin, j] (serial: one worker thread each)."""
    K = x.shape[1]
    J = Gf.shape[1]
    for rr in range(F.shape[0]):
        for k in range(K):
            q = x[r0 + rr, k] - qmin
            for j in range(J):
                F[rr, k * J + j] = Gf[q, j]


@njit(nogil=True)
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


@njit(nogil=True)
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


@njit(parallel=True)
def _finish(R, bias, o0, Otot, P, mode, width, thr, qmin, do_thr, exact, acc, out):
    """exact = bias + sum of the chunk results (int64), acc (wrap or identity), thresholds;
    written at flat index (b*Otot + o0 + o)*P + p for row n = b*P + p (linear: P = 1).
    Rows go in blocks of up to 64 within one image, o outer and p inner (contiguous writes)."""
    C, N, Og = R.shape
    nthr = thr.shape[1]
    BL = 64
    nblk_img = (P + BL - 1) // BL
    B = N // P
    for blk in prange(B * nblk_img):
        b = blk // nblk_img
        p0 = (blk - b * nblk_img) * BL
        p1 = min(P, p0 + BL)
        for o in range(Og):
            base = (b * Otot + o0 + o) * P
            row = 0 if thr.shape[0] == 1 else o0 + o
            for p in range(p0, p1):
                n = b * P + p
                s = bias[o]
                for c in range(C):
                    s += np.int64(R[c, n, o])  # an exact integer < 2^53 (see above)
                i = base + p
                exact[i] = s
                a = wrap(s, width) if mode == 1 else s
                acc[i] = a
                if do_thr:
                    out[i] = qmin + count_ge(a, thr, row, nthr)


def _decomposition(layer, xmin, xmax):
    """(G, H, cost_key) int64 for (*), or None (too many one-hot columns / too large a check)."""
    nq = layer.x_range.n_codes
    xq0 = layer.x_range.qmin
    if layer.datapath == "operand":
        G = np.asarray(layer.x_table.lut[0], np.int64)[:, None]
        H = np.asarray(layer.w_table.lut, np.int64).reshape(-1, 1)
        xmaxabs = int(np.abs(G[xmin - xq0:xmax - xq0 + 1]).max())
        return G, H, np.abs(H[:, 0]) * xmaxabs  # |w_lut|·max|x_lut| < 2^62 (_check_product_range)
    pt = layer.p_table
    lut = np.asarray(pt.lut, np.int64)
    T = lut.shape[0]
    nw, wq0 = layer.w_range.n_codes, layer.w_range.qmin
    qw = layer.w_codes.reshape(layer.out_channels, -1)
    keys_used = np.flatnonzero(np.bincount((layer.w_table_index * nw + (qw - wq0)).reshape(-1),
                                           minlength=T * nw))
    kt, kw_ = keys_used // nw, keys_used % nw + wq0  # table row and weight code of each used key
    q = np.arange(xmin, xmax + 1)
    if len(q) * len(keys_used) > PRODUCT_CHECK_MAX:
        return None

    def idx(m, a):
        return m * a if pt.by_product else m * (pt.mx + 1) + a

    # the products as the oracle forms them, (q range, used keys)
    P_true = (np.sign(kw_)[None, :] * np.sign(q)[:, None] *
              lut[kt[None, :], idx(np.abs(kw_)[None, :], np.abs(q)[:, None])])
    pairs = sorted({(int(t), int(abs(w))) for t, w in zip(kt, kw_) if w != 0})
    mags = sorted({abs(int(v)) for v in q if v != 0})
    side = ONE_HOT or ("activations" if len(mags) < len(pairs) else "weights")
    G = np.zeros((nq, 0), np.int64)
    H = np.zeros((T * nw, 0), np.int64)
    if side == "weights" and pairs:
        G = np.zeros((nq, len(pairs)), np.int64)
        H = np.zeros((T * nw, len(pairs)), np.int64)
        for j, (t, m) in enumerate(pairs):
            G[q - xq0, j] = np.sign(q) * lut[t, idx(m, np.abs(q))]
            sel = (kt == t) & (np.abs(kw_) == m)
            H[keys_used[sel], j] = np.sign(kw_[sel])
    elif side == "activations" and mags:
        G = np.zeros((nq, len(mags)), np.int64)
        H = np.zeros((T * nw, len(mags)), np.int64)
        for j, a in enumerate(mags):
            G[q - xq0, j] = np.sign(q) * (np.abs(q) == a)
            H[keys_used, j] = np.sign(kw_) * lut[kt, idx(np.abs(kw_), a)]
    if G.shape[1] > PRODUCT_GEMM_MAX:
        return None
    if G.shape[1] == 0:  # every product is 0 (all weights or all activations are 0)
        G, H = np.zeros((nq, 1), np.int64), np.zeros((T * nw, 1), np.int64)
    Gr, Hu = G[q - xq0], H[keys_used]
    one_hot = ((Gr != 0).sum(axis=1) <= 1).all() or ((Hu != 0).sum(axis=1) <= 1).all()
    if not one_hot or not np.array_equal(Gr @ Hu.T, P_true):  # int64: one nonzero term each
        raise AssertionError(f"{layer.name}: product decomposition does not reproduce the table")
    cost = np.zeros(T * nw, np.int64)
    cost[keys_used] = np.abs(P_true).max(axis=0)  # one-hot: sum_j |G||H| = |product|
    return G, H, cost


def _fused_plan(layer, xmin, xmax, sl, perm):
    """Weights side of the fused path for output rows sl, k in the order perm:
    (Wt, bounds, n_chunks, dtype, Gf)."""
    dec = _decomposition(layer, xmin, xmax)
    if dec is None:
        return None
    G, H, cost = dec
    O = layer.out_channels
    qw = np.ascontiguousarray(layer.w_codes.reshape(O, -1)[sl])
    tidx = np.ascontiguousarray(layer.w_table_index[sl])
    K, J = qw.shape[1], G.shape[1]
    gmax = _maxabs(G[xmin - layer.x_range.qmin:xmax - layer.x_range.qmin + 1])
    hmax = _maxabs(H)
    costT = np.empty((K, qw.shape[0]), np.int64)
    for dt in ((np.float32, np.float64) if USE_FLOAT32 else (np.float64,)):
        lim = CHUNK_LIMIT[dt]
        if gmax >= lim or hmax >= lim:
            continue
        Wt = np.empty((K * J, qw.shape[0]), dt)
        _wt_build(qw, tidx, perm, layer.w_range.n_codes, layer.w_range.qmin, H.astype(dt), cost, Wt, costT)
        bounds, n = _cut_chunks(costT, lim, F32_MAX_CHUNKS + 1 if dt is np.float32 else K + 1)
        if n > 0:
            return Wt, bounds[:n + 1] * J, n, dt, G.astype(dt)
    return None


def _fused(layer, x, xmin, xmax, conv=None):
    """Whole-layer result dict by the fused path, or None when it does not apply."""
    mode = _MODE[layer.acc.overflow]
    if not (FUSED and (mode != 2 or layer.no_overflow_possible())) or x.size == 0 or layer.k == 0:
        return None
    O = layer.out_channels
    groups = conv[0] if conv else 1
    Og = O // groups
    if conv:  # k' = (i, j, c), c fastest: each tap is a run in the NHWC features
        _, Cg, kh, kw = conv[:4]
        perm = np.arange(Cg * kh * kw).reshape(Cg, kh, kw).transpose(1, 2, 0).reshape(-1)
    else:
        perm = np.arange(layer.k)
    plans = [_fused_plan(layer, xmin, xmax, slice(g * Og, (g + 1) * Og), perm) for g in range(groups)]
    if any(p is None for p in plans):
        return None
    xk = _as_kernel_codes(x)
    qmin = layer.x_range.qmin
    if conv:
        _, Cg, kh, kw, (sh, sw), (ph, pw), (dh, dw), ho, wo = conv
        B = x.shape[0]
        N, P, shape = B * ho * wo, ho * wo, (B, O, ho, wo)
    else:
        N, P, shape = x.shape[0], 1, (x.shape[0], O)
    rq = layer.requant
    do_thr = False
    thr = np.zeros((1, 1), np.int64)
    if isinstance(rq, Thresholds):
        t = np.asarray(rq.thr)
        if t.ndim == 2 and t.dtype.kind in "iu" and (t.shape[0] == 1 or t.shape[0] >= O) and t.shape[1] > 0:
            t = np.ascontiguousarray(t, np.int64)
            if t.shape[1] < 2 or (np.diff(t, axis=1) >= 0).all():
                thr, do_thr = t, True
    exact = np.empty(N * O, np.int64)
    acc = np.empty(N * O, np.int64)
    out = np.empty(N * O, np.int64) if do_thr else acc
    bias = np.ascontiguousarray(layer.bias, np.int64)
    pool, nwk = _pool()
    if conv:  # padded NHWC features of all groups, J values per channel
        J = plans[0][4].shape[1]
        dt = plans[0][3]
        if any(p[4].shape[1] != J or p[3] is not dt for p in plans):
            return None
        Bx, C, H, W = x.shape
        xp = np.zeros((Bx, H + 2 * ph, W + 2 * pw, C * J), dt)
        step = -(-Bx // nwk)
        for f in [pool.submit(_features_nhwc, xk, qmin, plans[0][4], ph, pw, b0, min(Bx, b0 + step), xp)
                  for b0 in range(0, Bx, step)]:
            f.result()
    for g, (Wt, bounds, n, dt, Gf) in enumerate(plans):
        _note(f"gemm_{np.dtype(dt).name}")
        if n > 1:
            _note("chunked")
        KJ = Wt.shape[0]
        R = np.empty((n, N, Og), dt)
        if conv:
            rb = max(64, FEATURE_BYTES // max(KJ * np.dtype(dt).itemsize, 1))
        else:
            rb = FEATURE_BYTES // max(KJ * np.dtype(dt).itemsize, 1)
        rb = max(1, min(rb, -(-N // nwk)))  # at least one block per worker

        def block(r0, g=g, Wt=Wt, bounds=bounds, n=n, dt=dt, Gf=Gf, R=R, rb=rb):
            r1 = min(N, r0 + rb)
            F = np.empty((r1 - r0, Wt.shape[0]), dt)
            if conv:
                _features_im2col(xp, g * Cg, Cg, kh, kw, sh, sw, dh, dw, ho, wo, r0, F)
            else:
                _features_linear(xk, qmin, Gf, r0, F)
            for c in range(n):
                np.matmul(F[:, bounds[c]:bounds[c + 1]], Wt[bounds[c]:bounds[c + 1]], out=R[c, r0:r1])

        for f in [pool.submit(block, r0) for r0 in range(0, N, rb)]:
            f.result()
        _finish(R, bias[g * Og:(g + 1) * Og], g * Og, O, P, mode, layer.acc.width, thr,
                rq.qmin if do_thr else 0, do_thr, exact, acc, out)
    if layer.datapath == "product":
        _note("product_gemm")
    exact, acc = exact.reshape(shape), acc.reshape(shape)
    if do_thr:
        out = out.reshape(shape)
    else:
        out = _requantize(acc, rq, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def linear(layer, x, fast=None):
    xmin, xmax = _check_x(layer.x_range, f"{layer.name} input", x)
    layer.check_shape(x)
    if layer.datapath == "product":
        _check_product_index(layer, layer.x_range.max_magnitude if x.size == 0 else max(-xmin, xmax))
    if FAST_PATHS if fast is None else fast:
        _check_product_range(layer)
        res = _fused(layer, x, xmin, xmax)
        if res is not None:
            return res
    x = x.astype(np.int64)
    exact, acc = _mac(layer, _decode_x(layer, x), fast=fast)
    out = _requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def conv2d(layer, x, fast=None):
    xmin, xmax = _check_x(layer.x_range, f"{layer.name} input", x)
    O, Cg, kh, kw = layer.w_codes.shape
    ho, wo = layer.check_shape(x)
    B = x.shape[0]
    if layer.datapath == "product":
        _check_product_index(layer, layer.x_range.max_magnitude if x.size == 0 else max(-xmin, xmax))
    if FAST_PATHS if fast is None else fast:
        _check_product_range(layer)
        res = _fused(layer, x, xmin, xmax, (layer.groups, Cg, kh, kw, layer.stride, layer.padding,
                                            layer.dilation, ho, wo))
        if res is not None:
            return res
    x = x.astype(np.int64)
    xd = np.ascontiguousarray(_decode_x(layer, x))
    Og = O // layer.groups
    exact = np.empty((B * ho * wo, O), np.int64)
    acc = np.empty_like(exact)
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    for g in range(layer.groups):
        cols = _im2col(xd, g * Cg, Cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
        e, a = _mac(layer, cols, slice(g * Og, (g + 1) * Og), fast)
        exact[:, g * Og:(g + 1) * Og] = e
        acc[:, g * Og:(g + 1) * Og] = a
    exact = exact.reshape(B, ho, wo, O).transpose(0, 3, 1, 2).copy()
    acc = acc.reshape(B, ho, wo, O).transpose(0, 3, 1, 2).copy()
    out = _requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


# --------------------------------------------------------------------------------------------
# Other layers
# --------------------------------------------------------------------------------------------
def _accumulate(prods, start, acc_cfg):
    R = prods.shape[0]
    st = np.broadcast_to(np.asarray(start, np.int64), (R,)).copy()
    return _accumulate_rows(np.ascontiguousarray(prods, np.int64), st, _MODE[acc_cfg.overflow],
                            acc_cfg.width, acc_cfg.tile, acc_cfg.lo, acc_cfg.hi)


def add(layer, a, b):
    layer.a_range.check_codes(f"{layer.name} input a", a)
    layer.b_range.check_codes(f"{layer.name} input b", b)
    if a.shape != b.shape:
        raise ValueError(f"{layer.name}: input shapes differ: {a.shape} and {b.shape}")
    va = np.asarray(layer.a_table.lut[0], np.int64)[a.astype(np.int64) - layer.a_range.qmin]
    vb = np.asarray(layer.b_table.lut[0], np.int64)[b.astype(np.int64) - layer.b_range.qmin]
    prods = np.stack([va.reshape(-1), vb.reshape(-1)], axis=1)  # order: a then b, start 0
    exact, acc = _accumulate(prods, 0, layer.acc)
    exact, acc = exact.reshape(a.shape), acc.reshape(a.shape)
    out = _requantize(acc, layer.requant, 1 if acc.ndim > 1 else 0, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


@njit(parallel=True)
def _pool_windows(v, kh, kw, sh, sw, ho, wo):
    """Windows (B*C*ho*wo, kh*kw) of v (B, C, H, W), rows then columns."""
    B, C, H, W = v.shape
    out = np.empty((B * C * ho * wo, kh * kw), np.int64)
    for r in prange(B * C * ho * wo):
        bc = r // (ho * wo)
        rem = r - bc * ho * wo
        oh = rem // wo
        ow = rem - oh * wo
        b = bc // C
        c = bc - b * C
        for i in range(kh):
            for j in range(kw):
                out[r, i * kw + j] = v[b, c, oh * sh + i, ow * sw + j]
    return out


@njit(parallel=True)
def _maxpool(x, kh, kw, sh, sw, ph, pw, ho, wo):
    B, C, H, W = x.shape
    out = np.empty((B, C, ho, wo), np.int64)
    for bc in prange(B * C):
        b = bc // C
        c = bc - b * C
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * sh - ph
                w0 = ow * sw - pw
                best = np.int64(0)
                first = True
                for h in range(max(h0, 0), min(h0 + kh, H)):
                    for w in range(max(w0, 0), min(w0 + kw, W)):
                        v = np.int64(x[b, c, h, w])
                        if first or v > best:
                            best = v
                            first = False
                out[b, c, oh, ow] = best
    return out


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
            out = _maxpool(np.trunc(xi).astype(np.int64), kh, kw, *layer.stride, *layer.padding, ho, wo)
        else:
            out = _maxpool(xi, kh, kw, *layer.stride, *layer.padding, ho, wo)
        return dict(out=out)
    return dict(out=np.empty((B, C, max(ho, 0), max(wo, 0)), np.int64))


def avgpool2d(layer, x):
    kernel, stride = layer.check_input(x)
    B, C, H, W = x.shape
    ho = _out_size(layer.name, H, kernel[0], stride[0])
    wo = _out_size(layer.name, W, kernel[1], stride[1])
    v = np.asarray(layer.x_table.lut[0], np.int64)[x.astype(np.int64) - layer.x_range.qmin]
    win = _pool_windows(np.ascontiguousarray(v), kernel[0], kernel[1], stride[0], stride[1], ho, wo)
    exact, acc = _accumulate(win, 0, layer.acc)
    exact, acc = exact.reshape(B, C, ho, wo), acc.reshape(B, C, ho, wo)
    out = _requantize(acc, layer.requant, 1, layer.seed, layer.tensor_id)
    return dict(acc_exact=exact, acc=acc, out=out)


def flatten(layer, x):
    return dict(out=x.reshape(x.shape[0], -1).copy())  # as the oracle: dtype kept


OPS = {Linear: linear, Conv2d: conv2d, Add: add, MaxPool2d: maxpool2d, AvgPool2d: avgpool2d, Flatten: flatten}
OPS.update(_TRANSFORMER_OPS)  # ARITHMETIC.md §10-§16, nupes_sim/transformer/cpu.py


def run_layer(layer, *inputs, fast=None):
    """Run one layer; identical results to nupes_sim.oracle.run_layer. fast=False forbids
    the BLAS fast paths for this call (default: the module flag FAST_PATHS)."""
    op = OPS[type(layer)]
    if op in (linear, conv2d):
        return op(layer, *inputs, fast=fast)
    return op(layer, *inputs)


__all__ = ["run_layer", "FAST_PATHS", "USE_FLOAT32", "PRODUCT_GEMM_MAX", "STATS"]
