"""Integer tables built once on the host in float64 (docs/ARITHMETIC.md §3).

Every float computation of the project that feeds the integer datapath happens here; the
resulting int64 tables (LUTs, thresholds, multipliers, bias) are part of the layer and are
what hardware must use. Each builder names its rounding mode.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import primitives as P
from .exactreal import cr_float, decide_exact, round_fraction, rounded_table
from .formats import CodebookFormat, PowerFormat, UniformFormat, UniformWeightFormat
from .rounding import DEFAULT, HOST_MODES, mode_id, random_words, round_float
from .validate import check_int, check_real, frozen_float_array, frozen_int_array, set_fields

FRAC_BITS_MAX = 40
CODE_LIMIT = 2**31  # |qmin|, |qmax|, |zero_point| of a requantizer: code + rounded value fits int64
THRESHOLD_MODES = ("half_even", "half_away", "half_up", "floor", "ceil", "toward_zero")


def _fr(v):
    return Fraction(float(v))


def _pow_table(rows, mags, a, signs, scale2, mode, seed, tensor_id, name):
    """(T, n) correctly rounded R(sign·(x_t·m)^(1/a)·2^F): rows x_t (float64 scale entries,
    or an exact Fraction factor), mags m (ints), scale2 = 2^F (docs/ARITHMETIC.md §3)."""
    T, n = len(rows), len(mags)
    c = np.empty(T * n, object)
    factors = np.empty(T * n, object)
    base = np.empty(T * n)
    for t, x in enumerate(rows):
        xf = Fraction(x)
        for i, (m, sg) in enumerate(zip(mags, signs)):
            c[t * n + i] = Fraction(int(sg)) * scale2
            factors[t * n + i] = ((xf * int(m), a),)
            base[t * n + i] = float(x) * float(m)
    y = base ** (1.0 / a)
    v = np.repeat(np.asarray(signs, np.float64)[None, :], T, 0).reshape(-1) * y * float(scale2)
    words = random_words(seed, tensor_id, T * n)
    return rounded_table(c, factors, [(y, a)], v, mode, words, name).reshape(T, n)


def _codebook_table(fmt, F, rounding, seed, tensor_id):
    """(T, 2^b) R(values[t, q]·2^F): v·2^F is exact in float64 (a power-of-two scaling of a
    finite value that cannot overflow below the 2^52 limit round_float checks), so rounding the
    float64 product rounds the exact real (docs/ARITHMETIC.md §2-§3); stochastic words are
    hash32(seed, tensor_id, t·2^b + q), as a power table's."""
    v = fmt.tables
    scaled = v * 2.0**F
    if np.abs(scaled).max() >= 2.0**52:
        raise ValueError(
            f"codebook values up to {np.abs(v).max():.6g} times 2^{F} exceed the table limit 2^52; "
            "allowed: |value|·2^frac_bits < 2^52 (lower w_frac_bits)"
        )
    words = random_words(seed, tensor_id, v.size)
    return round_float(scaled.reshape(-1), rounding, words=words).reshape(v.shape).astype(np.int64)


@dataclass(frozen=True, eq=False)
class DecodeTable:
    """Operand decode: value(t, q) = lut[t, q - qmin], in units of `unit` (a real, host only).

    For a power format, lut = round(x̂·2^F) and unit = 2^-F; entries of negative codes are
    the negated entries of positive codes when the rounding is sign-symmetric (half_even,
    half_away, toward_zero), otherwise each entry is rounded on its own value. For a
    uniform format, lut = (q − zero_point)·2^F and unit = scale·2^-F (exact). For a
    UniformWeightFormat, row t is (q − z_t)·2^F and unit = 2^-F: the scales s_t are not in
    the table (the layer's accumulator unit carries them, docs/ARITHMETIC.md §2). For a
    CodebookFormat, row t is R(values[t, q]·2^F) and unit = 2^-F (§2).
    """

    lut: np.ndarray  # int64 (T, n_codes)
    qmin: int
    unit: float
    frac_bits: int

    def __post_init__(self):
        lut = frozen_int_array("decode table lut", self.lut, ndim=2)
        if lut.shape[0] < 1 or lut.shape[1] < 1:
            raise ValueError(f"decode table lut must have >= 1 row and column, got shape {lut.shape}")
        set_fields(
            self,
            lut=lut,
            qmin=check_int("decode table qmin", self.qmin, -(2**7), 2**8 - 1),
            unit=float(frozen_float_array("decode table unit", self.unit).reshape(())),
            frac_bits=check_int("decode table frac_bits", self.frac_bits, 0, FRAC_BITS_MAX),
        )


def decode_table(fmt, frac_bits, rounding=DEFAULT, seed=0, tensor_id=0):
    F = check_int("frac_bits", frac_bits, 0, FRAC_BITS_MAX)
    if isinstance(fmt, UniformFormat):
        codes = fmt.range.all_codes()
        lut = ((codes - fmt.zero_point) << F)[None, :].astype(np.int64)
        return DecodeTable(lut, fmt.range.qmin, fmt.scale * 2.0**-F, F)
    if isinstance(fmt, UniformWeightFormat):
        codes = fmt.range.all_codes()
        lut = (codes[None, :] - fmt.zero_point[:, None]) << F  # exact: |q - z| < 2^8, F <= 40
        return DecodeTable(lut.astype(np.int64), fmt.range.qmin, 2.0**-F, F)
    if isinstance(fmt, CodebookFormat):
        return DecodeTable(_codebook_table(fmt, F, rounding, seed, tensor_id), 0, 2.0**-F, F)
    if not isinstance(fmt, PowerFormat):
        raise TypeError(
            "format must be a PowerFormat, UniformFormat, UniformWeightFormat or CodebookFormat, "
            f"got {type(fmt).__name__}"
        )
    mode = mode_id(rounding, HOST_MODES)
    codes = fmt.range.all_codes()
    lut = _pow_table(
        fmt.scale.reshape(-1),
        np.abs(codes),
        fmt.exponent,
        np.sign(codes),
        Fraction(2) ** F,
        mode,
        seed,
        tensor_id,
        "decode LUT",
    )
    return DecodeTable(lut, fmt.range.qmin, 2.0**-F, F)


@dataclass(frozen=True, eq=False)
class ProductTable:
    """Product domain: |value|(t, |qw|, |qx|) = lut[t, index], sign = sign(qw)·sign(qx).

    index = |qw|·|qx| when `by_product` (both power formats with equal exponents, so the
    real product (s_w s_x |qw||qx|)^(1/a) depends on the integer product alone), else
    |qw|·(Mx+1) + |qx| (pair table). lut = round(|ŵ x̂|·2^F / f), unit = 2^-F.

    Per-tensor and per-channel weight scales factor out of every product:
    (s_w m)^(1/a_w)·x̂ = s_w^(1/a_w)·(m^(1/a_w) x̂), so one table (s_w = 1) serves every
    channel and f = channel_factor[o] = s_w[o]^(1/a_w) moves into the accumulator unit of
    channel o (per-channel requant rows and bias). Per-group scales cannot leave the sum:
    then the table has one row per scale entry and channel_factor is None.
    """

    lut: np.ndarray  # int64 (T, L)
    by_product: bool
    mx: int  # largest activation code magnitude
    unit: float
    frac_bits: int
    channel_factor: np.ndarray = None  # (C,) float64 host reals, or None

    def __post_init__(self):
        lut = frozen_int_array("product table lut", self.lut, ndim=2)
        if lut.shape[0] < 1 or lut.shape[1] < 1:
            raise ValueError(f"product table lut must have >= 1 row and column, got shape {lut.shape}")
        if not isinstance(self.by_product, (bool, np.bool_)):
            raise TypeError(f"product table by_product must be a bool, got {self.by_product!r}")
        cf = self.channel_factor
        set_fields(
            self,
            lut=lut,
            by_product=bool(self.by_product),
            mx=check_int("product table mx", self.mx, 1, 2**8 - 1),
            unit=float(frozen_float_array("product table unit", self.unit).reshape(())),
            frac_bits=check_int("product table frac_bits", self.frac_bits, 0, FRAC_BITS_MAX),
            channel_factor=None if cf is None else frozen_float_array("product table channel_factor", cf),
        )
        if self.channel_factor is not None and self.channel_factor.ndim != 1:
            raise ValueError(
                f"product table channel_factor must be 1-D, got shape {self.channel_factor.shape}"
            )

    def length(self, mw, mx=None):
        """Entries per row needed for weight magnitudes <= mw and activation magnitudes <= mx
        (default: this table's mx)."""
        mx = self.mx if mx is None else mx
        return mw * mx + 1 if self.by_product else (mw + 1) * (mx + 1)

    def index(self, mw, mx):
        """THE product-table index of magnitudes |qw| = mw, |qx| = mx (ints or int arrays,
        broadcast): mw·mx (by_product) or mw·(Mx+1) + mx (pair table). Host code indexes
        only through this (or `index_terms`); device kernels are tested against it."""
        return mw * mx if self.by_product else mw * (self.mx + 1) + mx

    def index_terms(self, mw):
        """(base, step) with index(mw, n) = base + step·n for every activation magnitude n:
        the weight side of the index, precomputed per weight by the backends."""
        mw = np.asarray(mw)
        return (np.zeros_like(mw), mw) if self.by_product else (mw * (self.mx + 1), np.ones_like(mw))


def product_table(wfmt, xfmt, frac_bits, rounding=DEFAULT, seed=0, tensor_id=0):
    F = check_int("frac_bits", frac_bits, 0, FRAC_BITS_MAX)
    for name, f in (("weight format", wfmt), ("activation format", xfmt)):
        if not isinstance(f, PowerFormat):
            raise TypeError(f"the product-domain datapath needs power formats; {name} is {type(f).__name__}")
    if xfmt.granularity != "tensor":
        raise ValueError("the product-domain datapath needs a per-tensor activation scale")
    mode = mode_id(rounding, HOST_MODES)
    mw, mx = wfmt.range.max_magnitude, xfmt.range.max_magnitude
    factored = wfmt.granularity in ("tensor", "channel")
    sw = np.ones(1) if factored else wfmt.scale.reshape(-1)
    sx = float(xfmt.scale[0])
    aw, ax = wfmt.exponent, xfmt.exponent
    by_product = aw == ax
    if by_product:  # (sw·sx·p)^(1/a): the rows' x_t = sw·sx exactly (a Fraction)
        p = np.arange(mw * mx + 1)
        rows = [Fraction(float(w)) * Fraction(sx) for w in sw]
        lut = _pow_table(rows, p, aw, np.ones(p.size), Fraction(2) ** F, mode, seed, tensor_id, "product LUT")
    else:  # (sw·m)^(1/aw)·(sx·n)^(1/ax), index m·(Mx+1) + n
        m = np.repeat(np.arange(mw + 1), mx + 1)
        n = np.tile(np.arange(mx + 1), mw + 1)
        T, L = len(sw), m.size
        c = np.full(T * L, Fraction(2) ** F, object)
        factors = np.empty(T * L, object)
        yw = np.empty(T * L)
        yx = np.tile((sx * n.astype(np.float64)) ** (1.0 / ax), T)
        fsx = Fraction(sx)
        for t, w in enumerate(sw):
            fw = Fraction(float(w))
            yw[t * L : (t + 1) * L] = (float(w) * m.astype(np.float64)) ** (1.0 / aw)
            for i in range(L):
                factors[t * L + i] = ((fw * int(m[i]), aw), (fsx * int(n[i]), ax))
        v = yw * yx * 2.0**F
        words = random_words(seed, tensor_id, T * L)
        lut = rounded_table(c, factors, [(yw, aw), (yx, ax)], v, mode, words, "product LUT").reshape(T, L)
    # f_o = s_w[o]^(1/a_w), correctly rounded to float64 (it defines the channel's unit)
    factor = (
        np.array([cr_float(1, ((Fraction(float(w)), aw),)) for w in wfmt.scale.reshape(-1)])
        if factored
        else None
    )
    return ProductTable(lut, bool(by_product), mx, 2.0**-F, F, factor)


@dataclass(frozen=True, eq=False)
class Thresholds:
    """Requantization by comparison: code = qmin + #{j : acc >= thr[row, j]}.

    thr is non-decreasing per row; rows are 1 (per tensor) or one per output channel.
    """

    thr: np.ndarray  # int64 (R, n)
    qmin: int
    qmax: int

    def __post_init__(self):
        qmin = check_int("thresholds qmin", self.qmin, -CODE_LIMIT, CODE_LIMIT - 1)
        qmax = check_int("thresholds qmax", self.qmax, qmin, CODE_LIMIT - 1)
        thr = frozen_int_array("thresholds thr", self.thr, ndim=2)
        if thr.shape[0] < 1 or thr.shape[1] != qmax - qmin:
            raise ValueError(
                f"thresholds thr has shape {thr.shape}; allowed: (rows >= 1, qmax - qmin = {qmax - qmin}) "
                "(one threshold per code above qmin)"
            )
        if thr.shape[1] > 1:
            drop = np.diff(thr, axis=1) < 0
            if drop.any():
                r, j = (int(v) for v in np.argwhere(drop)[0])
                raise ValueError(
                    f"thresholds thr row {r} is not non-decreasing: thr[{r}, {j}] = {int(thr[r, j])} > "
                    f"thr[{r}, {j + 1}] = {int(thr[r, j + 1])}; allowed: each row non-decreasing"
                )
        set_fields(self, thr=thr, qmin=qmin, qmax=qmax)


def _boundary(j, rounding):
    """(beta, inclusive): R(z) >= j  <=>  z >= beta (inclusive) or z > beta (exclusive);
    beta an exact Fraction."""
    if rounding == "floor":
        return Fraction(j), True
    if rounding == "ceil":
        return Fraction(j - 1), False
    if rounding == "toward_zero":
        return (Fraction(j), True) if j > 0 else (Fraction(j - 1), False)
    beta = Fraction(2 * j - 1, 2)
    if rounding == "half_up":
        return beta, True
    if rounding == "half_away":
        return beta, beta > 0
    if rounding == "half_even":
        return beta, j % 2 == 0
    raise AssertionError(rounding)


def _check_threshold_rounding(rounding):
    if rounding not in THRESHOLD_MODES:
        mode_id(rounding)  # an unknown name gets the generic message
        raise ValueError(
            f"rounding={rounding!r} is not available for threshold requantization "
            "(a deterministic comparison); use half_even, half_away, half_up, floor, "
            "ceil or toward_zero, or a rescale requantizer for stochastic rounding"
        )


def _first_acc(beta, inclusive, a, s, u):
    """Smallest integer acc with acc·u >= y (inclusive) or > y (exclusive), y = sign(β)(s|β|)^(1/a),
    exactly (exactreal): ceil(y/u) or floor(y/u) + 1. u is an exact Fraction > 0."""
    if inclusive:

        def decide(v):
            return math.ceil(v)
    else:

        def decide(v):
            return math.floor(v) + 1

    sgn = (beta > 0) - (beta < 0)
    if sgn == 0:
        return decide(Fraction(0))
    x = Fraction(s) * abs(beta)
    fu = float(u)
    y64 = float(x) ** (1.0 / a) if float(x) > 0 else 0.0
    if 2.0**-1000 < y64 < 2.0**1000 and fu > 2.0**-1000:
        v64 = sgn * y64 / fu
        e = float(2.0 * (2.0 / a + abs(math.log(y64)) + 20.0) * 2.0**-53 * abs(v64)) + math.ulp(v64)
        lo, hi = decide(Fraction(v64 - e)), decide(Fraction(v64 + e))
        if lo == hi:
            return lo
    return decide_exact(Fraction(sgn) / u, ((x, a),), decide)


def threshold_table(unit, out_fmt, acc_width, rounding=DEFAULT, relu=False, clip_max=None):
    """Thresholds of the monotone map acc -> clip(R(sign(y)|y|^a/s)), y = acc·unit.

    unit: real value of one accumulator LSB, scalar or one per output channel (> 0; each
    float64 taken as its exact value). relu folds max(y, 0) (codes below 0 removed);
    clip_max folds min(y, clip_max) (ReLU6: clip_max=6) as qmax = min(qmax, c(clip_max)).
    thr[j] is exactly the smallest integer acc whose code is >= qmin + 1 + j: ceil(y_β/unit),
    or floor(y_β/unit) + 1 for an exclusive boundary, decided in exact arithmetic
    (exactreal), clamped to [acc_min, acc_max + 1] (acc_max + 1 = never reached). So thr is
    non-decreasing and the count formula gives the quantizer's code for every acc.
    """
    check_int("acc_width", acc_width, 8, 64)
    if not isinstance(out_fmt, PowerFormat) or out_fmt.granularity != "tensor":
        raise TypeError("threshold requantization needs a per-tensor PowerFormat output")
    _check_threshold_rounding(rounding)
    unit = np.atleast_1d(np.asarray(unit, dtype=np.float64))
    if not (np.isfinite(unit).all() and (unit > 0).all()):
        raise ValueError("unit (real value of one accumulator LSB) must be finite and > 0")
    a, s = out_fmt.exponent, float(out_fmt.scale[0])
    qmin, qmax = out_fmt.range.qmin, out_fmt.range.qmax
    if clip_max is not None:
        cm = Fraction(check_real("clip_max", clip_max, 0.0, lo_open=True))
        # c(clip_max) = qmin + #{c : clip_max >= y_β(c)} (> for an exclusive boundary):
        # clip_max·1 reaches y_β iff the first "acc" at unit clip_max is <= 1
        qmax = min(
            qmax,
            qmin + sum(_first_acc(*_boundary(j, rounding), a, s, cm) <= 1 for j in range(qmin + 1, qmax + 1)),
        )
    if relu:
        qmin = max(qmin, 0)
    # hi = acc_max + 1 (never reached); for 64 bits int64 cannot hold 2^63, so INT64_MAX
    # stands for "never reached": layers guarantee every sum is below 2^63 - 1.
    lo, hi = -(2 ** (acc_width - 1)), min(2 ** (acc_width - 1), 2**63 - 1)
    rows = []
    for u in unit:
        fu = Fraction(float(u))
        rows.append(
            [
                min(max(_first_acc(*_boundary(j, rounding), a, s, fu), lo), hi)
                for j in range(qmin + 1, qmax + 1)
            ]
        )
    thr = np.array(rows, dtype=np.int64).reshape(len(unit), qmax - qmin)
    return Thresholds(thr, qmin, qmax)


@dataclass(frozen=True, eq=False)
class Rescale:
    """Uniform requantization: code = clamp(round_shift(acc·m, shift, rounding) + zp, lo, hi)."""

    multiplier: np.ndarray  # int64 (R,)
    shift: np.ndarray  # int64 (R,)
    zero_point: int
    qmin: int
    qmax: int
    rounding: int  # mode id
    mult_bits: int

    def __post_init__(self):
        m = frozen_int_array("rescale multiplier", self.multiplier, ndim=1)
        sh = frozen_int_array("rescale shift", self.shift, ndim=1)
        if m.shape != sh.shape or m.size == 0:
            raise ValueError(f"rescale: multiplier {m.shape} and shift {sh.shape} must be equal 1-D shapes")
        mb = check_int("rescale mult_bits", self.mult_bits, 1, 31)
        if m.min() < 0 or m.max() >= 2**mb:
            raise ValueError(
                f"rescale: multipliers must lie in [0, 2^mult_bits) = [0, 2^{mb}); got {int(m.min())}..{int(m.max())}"
            )
        if sh.min() < 0 or sh.max() > 62:
            raise ValueError(f"rescale: shifts must lie in [0, 62]; got {int(sh.min())}..{int(sh.max())}")
        qmin = check_int("rescale qmin", self.qmin, -CODE_LIMIT, CODE_LIMIT - 1)
        qmax = check_int("rescale qmax", self.qmax, -CODE_LIMIT, CODE_LIMIT - 1)
        if qmin > qmax:
            raise ValueError(f"rescale: qmin={qmin} > qmax={qmax}")
        zp = check_int("rescale zero_point", self.zero_point, -CODE_LIMIT, CODE_LIMIT - 1)
        rid = check_int("rescale rounding", self.rounding, 0, 7)
        set_fields(
            self, multiplier=m, shift=sh, qmin=qmin, qmax=qmax, zero_point=zp, rounding=rid, mult_bits=mb
        )


def rescale_table(unit, out_fmt, acc_width, mult_bits=31, rounding=DEFAULT, relu=False, exact=False):
    """m, shift with m·2^-shift ≈ f = unit/scale_out, m in [2^(mb-1), 2^mb) (docs/ARITHMETIC.md §6(ii)).

    f is the exact quotient of the two float64 values; sh = mb - 1 - floor(log2 f) and
    m = half_even(f·2^sh), both exact; when m rounds up to 2^mb (a carry), m = 2^(mb-1) and
    sh - 1. A shift outside [0, 62] is refused (never a multiplier below its range).
    |acc·m| < 2^62 must hold: for wrap/saturate acc_width + mult_bits <= 63 guarantees it;
    `exact=True` (an exact-mode accumulator, whose unclamped sum is rescaled) skips that
    check, and the layer checks bound·m < 2^62 instead.
    """
    check_int("acc_width", acc_width, 8, 64)
    check_int("mult_bits", mult_bits, 1, 31)
    if not exact and acc_width + mult_bits > 63:
        raise ValueError(
            f"acc_width + mult_bits = {acc_width + mult_bits} exceeds 63; the product "
            "acc·multiplier must stay below 2^62 — lower mult_bits"
        )
    if not isinstance(out_fmt, UniformFormat):
        raise TypeError("rescale requantization needs a UniformFormat output")
    rid = mode_id(rounding)
    unit = np.atleast_1d(np.asarray(unit, dtype=np.float64))
    f = unit / out_fmt.scale
    if not (np.isfinite(unit).all() and (unit > 0).all() and np.isfinite(f).all() and (f > 0).all()):
        raise ValueError("rescale factor unit/scale must be finite and > 0")
    ms, shs = [], []
    for u in unit:
        fr = Fraction(float(u)) / Fraction(out_fmt.scale)
        # e = floor(log2 fr), exactly
        e = fr.numerator.bit_length() - fr.denominator.bit_length()
        if Fraction(2) ** e > fr:
            e -= 1
        sh = mult_bits - 1 - e
        if sh < 0:
            raise ValueError(
                f"rescale factor unit/scale = {float(fr):.6g} is too large for a {mult_bits}-bit "
                "multiplier with shift >= 0 (mult_bits); raise the output scale"
            )
        if sh > 62:
            raise ValueError(
                f"rescale factor unit/scale = {float(fr):.6g} needs shift {sh} > 62 for a "
                f"{mult_bits}-bit multiplier in [2^{mult_bits - 1}, 2^{mult_bits}); lower "
                f"mult_bits to <= {mult_bits - (sh - 62)} or the fractional bits"
            )
        m = round_fraction(fr * 2**sh, P.HALF_EVEN)
        if m >= 2**mult_bits:  # rounding carried into the next power of two
            if sh == 0:
                raise ValueError(
                    f"rescale factor unit/scale = {float(fr):.6g} rounds to 2^{mult_bits}, too "
                    f"large for a {mult_bits}-bit multiplier with shift >= 0 (mult_bits)"
                )
            m //= 2
            sh -= 1
        ms.append(m)
        shs.append(sh)
    qmin, qmax = out_fmt.range.qmin, out_fmt.range.qmax
    if relu:
        qmin = max(qmin, out_fmt.zero_point)
    return Rescale(
        np.array(ms, np.int64), np.array(shs, np.int64), out_fmt.zero_point, qmin, qmax, rid, mult_bits
    )


def bias_table(bias, unit, acc_width, rounding=DEFAULT, seed=0, tensor_id=0):
    """R(bias/unit) as int64, exactly (the quotient of the float64 values), which must fit
    the accumulator (no silent clipping)."""
    mode = mode_id(rounding, HOST_MODES)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if not np.isfinite(b).all():
        raise ValueError("bias must be finite")
    u = np.broadcast_to(np.asarray(unit, dtype=np.float64), b.shape)
    words = random_words(seed, tensor_id, b.size)
    lo, hi = -(2 ** (acc_width - 1)), 2 ** (acc_width - 1) - 1
    out = []
    for v, uu, r in zip(b, u, words):
        t = round_fraction(Fraction(float(v)) / Fraction(float(uu)), mode, int(r))
        if t < lo or t > hi:
            raise ValueError(
                f"bias table entry {t} out of the {acc_width}-bit accumulator range [{lo}, {hi}]"
            )
        out.append(t)
    return np.array(out, np.int64)


__all__ = [
    "DecodeTable",
    "ProductTable",
    "Thresholds",
    "Rescale",
    "decode_table",
    "product_table",
    "threshold_table",
    "rescale_table",
    "bias_table",
    "P",
]
