"""Integer tables built once on the host in float64 (docs/ARITHMETIC.md §3).

Every float computation of the project that feeds the integer datapath happens here; the
resulting int64 tables (LUTs, thresholds, multipliers, bias) are part of the layer and are
what hardware must use. Each builder names its rounding mode.
"""
import math
from dataclasses import dataclass

import numpy as np

from . import primitives as P
from .formats import PowerFormat, UniformFormat
from .rounding import DEFAULT, mode_id, round_float
from .validate import check_int, check_real

FRAC_BITS_MAX = 40


def _real_table(fmt):
    """(T, n_codes) float64 decoded values of every code under every scale entry."""
    codes = fmt.range.all_codes()
    if isinstance(fmt, UniformFormat):
        return fmt.decode_real(codes)[None, :]
    s = fmt.scale.reshape(-1)[:, None]
    return np.sign(codes)[None, :] * (s * np.abs(codes)[None, :]) ** (1.0 / fmt.exponent)


@dataclass(frozen=True, eq=False)
class DecodeTable:
    """Operand decode: value(t, q) = lut[t, q - qmin], in units of `unit` (a real, host only).

    For a power format, lut = round(x̂·2^F) and unit = 2^-F; entries of negative codes are
    the negated entries of positive codes when the rounding is sign-symmetric (half_even,
    half_away, toward_zero), otherwise each entry is rounded on its own value. For a
    uniform format, lut = (q − zero_point)·2^F and unit = scale·2^-F (exact).
    """

    lut: np.ndarray  # int64 (T, n_codes)
    qmin: int
    unit: float
    frac_bits: int


def decode_table(fmt, frac_bits, rounding=DEFAULT, seed=0, tensor_id=0):
    F = check_int("frac_bits", frac_bits, 0, FRAC_BITS_MAX)
    if isinstance(fmt, UniformFormat):
        codes = fmt.range.all_codes()
        lut = ((codes - fmt.zero_point) << F)[None, :].astype(np.int64)
        return DecodeTable(lut, fmt.range.qmin, fmt.scale * 2.0**-F, F)
    if not isinstance(fmt, PowerFormat):
        raise TypeError(f"format must be a PowerFormat or UniformFormat, got {type(fmt).__name__}")
    lut = round_float(_real_table(fmt) * 2.0**F, rounding, seed, tensor_id)
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


def product_table(wfmt, xfmt, frac_bits, rounding=DEFAULT, seed=0, tensor_id=0):
    F = check_int("frac_bits", frac_bits, 0, FRAC_BITS_MAX)
    for name, f in (("weight format", wfmt), ("activation format", xfmt)):
        if not isinstance(f, PowerFormat):
            raise TypeError(f"the product-domain datapath needs power formats; {name} is {type(f).__name__}")
    if xfmt.granularity != "tensor":
        raise ValueError("the product-domain datapath needs a per-tensor activation scale")
    mw, mx = wfmt.range.max_magnitude, xfmt.range.max_magnitude
    factored = wfmt.granularity in ("tensor", "channel")
    sw = np.ones((1, 1)) if factored else wfmt.scale.reshape(-1)[:, None]
    sx = float(xfmt.scale[0])
    by_product = wfmt.exponent == xfmt.exponent
    if by_product:
        p = np.arange(mw * mx + 1, dtype=np.float64)[None, :]
        real = (sw * sx * p) ** (1.0 / wfmt.exponent)
    else:
        m = np.arange(mw + 1, dtype=np.float64)
        n = np.arange(mx + 1, dtype=np.float64)
        real = ((sw * m[None, :]) ** (1.0 / wfmt.exponent))[:, :, None] * \
            ((sx * n) ** (1.0 / xfmt.exponent))[None, None, :]
        real = real.reshape(sw.shape[0], -1)
    lut = round_float(real * 2.0**F, rounding, seed, tensor_id)
    factor = wfmt.scale.reshape(-1) ** (1.0 / wfmt.exponent) if factored else None
    return ProductTable(lut, bool(by_product), mx, 2.0**-F, F, factor)


@dataclass(frozen=True, eq=False)
class Thresholds:
    """Requantization by comparison: code = qmin + #{j : acc >= thr[row, j]}.

    thr is non-decreasing per row; rows are 1 (per tensor) or one per output channel.
    """

    thr: np.ndarray  # int64 (R, n)
    qmin: int
    qmax: int


def _boundary(j, rounding):
    """(beta, inclusive): R(z) >= j  <=>  z >= beta (inclusive) or z > beta (exclusive)."""
    if rounding == "floor":
        return float(j), True
    if rounding == "ceil":
        return float(j - 1), False
    if rounding == "toward_zero":
        return (float(j), True) if j > 0 else (float(j - 1), False)
    beta = j - 0.5
    if rounding == "half_up":
        return beta, True
    if rounding == "half_away":
        return beta, beta > 0
    if rounding == "half_even":
        return beta, j % 2 == 0
    raise ValueError(f"rounding={rounding!r} is not available for threshold requantization "
                     "(a deterministic comparison); use half_even, half_away, half_up, floor, "
                     "ceil or toward_zero, or a rescale requantizer for stochastic rounding")


def threshold_table(unit, out_fmt, acc_width, rounding=DEFAULT, relu=False, clip_max=None):
    """Thresholds of the monotone map acc -> clip(R(sign(y)|y|^a/s)), y = acc·unit.

    unit: real value of one accumulator LSB, scalar or one per output channel (> 0).
    relu folds max(y, 0) (codes below 0 removed); clip_max folds min(y, clip_max)
    (ReLU6: clip_max=6). Thresholds are t_j = smallest integer acc whose code is >= j,
    computed in float64 from y_beta/unit (ceil, or floor+1 for an exclusive boundary), and
    clamped to [acc_min, acc_max + 1] (acc_max + 1 = never reached).
    """
    check_int("acc_width", acc_width, 8, 64)
    if not isinstance(out_fmt, PowerFormat) or out_fmt.granularity != "tensor":
        raise TypeError("threshold requantization needs a per-tensor PowerFormat output")
    mode_id(rounding)
    unit = np.atleast_1d(np.asarray(unit, dtype=np.float64))
    if not (np.isfinite(unit).all() and (unit > 0).all()):
        raise ValueError("unit (real value of one accumulator LSB) must be finite and > 0")
    a, s = out_fmt.exponent, float(out_fmt.scale[0])
    qmin, qmax = out_fmt.range.qmin, out_fmt.range.qmax
    if relu:
        qmin = max(qmin, 0)
    if clip_max is not None:
        cm = check_real("clip_max", clip_max, 0.0, lo_open=True)
        qmax = min(qmax, int(out_fmt.encode(np.array([cm]), rounding)[0]))
    # hi = acc_max + 1 (never reached); for 64 bits int64 cannot hold 2^63, so INT64_MAX
    # stands for "never reached": layers guarantee every sum is below 2^63 - 1.
    lo, hi = -(2 ** (acc_width - 1)), min(2 ** (acc_width - 1), 2**63 - 1)
    rows = []
    for u in unit:
        row = []
        for j in range(qmin + 1, qmax + 1):
            beta, inclusive = _boundary(j, rounding)
            y = math.copysign((s * abs(beta)) ** (1.0 / a), beta) if beta != 0 else 0.0
            v = y / u
            t = math.ceil(v) if inclusive else math.floor(v) + 1
            row.append(min(max(t, lo), hi))
        rows.append(row)
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
        m = np.asarray(self.multiplier)
        sh = np.asarray(self.shift)
        if m.shape != sh.shape or m.ndim != 1 or m.size == 0:
            raise ValueError(f"rescale: multiplier {m.shape} and shift {sh.shape} must be equal 1-D shapes")
        if m.size and (m.min() < 0 or m.max() >= 2**31):
            raise ValueError(f"rescale: multipliers must lie in [0, 2^31); got {int(m.min())}..{int(m.max())}")
        if sh.size and (sh.min() < 0 or sh.max() > 62):
            raise ValueError(f"rescale: shifts must lie in [0, 62]; got {int(sh.min())}..{int(sh.max())}")
        if self.qmin > self.qmax:
            raise ValueError(f"rescale: qmin={self.qmin} > qmax={self.qmax}")
        if self.rounding not in range(7):
            raise ValueError(f"rescale: rounding id {self.rounding} is not a rounding mode (0..6)")


def rescale_table(unit, out_fmt, acc_width, mult_bits=31, rounding=DEFAULT, relu=False):
    """m, shift with m·2^-shift ≈ unit/scale_out, m in [2^(mb-1), 2^mb) (or smaller if shift hits 62).

    Exactness needs |acc·m| < 2^62: acc_width + mult_bits <= 63 is required.
    """
    check_int("acc_width", acc_width, 8, 64)
    check_int("mult_bits", mult_bits, 1, 31)
    if acc_width + mult_bits > 63:
        raise ValueError(f"acc_width + mult_bits = {acc_width + mult_bits} exceeds 63; the product "
                         "acc·multiplier must stay below 2^62 — lower mult_bits")
    if not isinstance(out_fmt, UniformFormat):
        raise TypeError("rescale requantization needs a UniformFormat output")
    rid = mode_id(rounding)
    unit = np.atleast_1d(np.asarray(unit, dtype=np.float64))
    f = unit / out_fmt.scale
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise ValueError("rescale factor unit/scale must be finite and > 0")
    ms, shs = [], []
    for fr in f:
        e = math.floor(math.log2(fr))
        sh = mult_bits - 1 - e
        if sh < 0:
            raise ValueError(f"rescale factor {fr:.6g} is too large for a {mult_bits}-bit multiplier with shift >= 0")
        sh = min(sh, 62)
        m = int(round_float(np.array([fr * 2.0**sh]), "half_even")[0])
        if m >= 2**mult_bits:  # rounding carried into the next power of two
            if sh == 0:
                raise ValueError(f"rescale factor {fr:.6g} rounds to 2^{mult_bits}, too large for a "
                                 f"{mult_bits}-bit multiplier with shift >= 0")
            m //= 2
            sh -= 1
        ms.append(m)
        shs.append(sh)
    qmin, qmax = out_fmt.range.qmin, out_fmt.range.qmax
    if relu:
        qmin = max(qmin, out_fmt.zero_point)
    return Rescale(np.array(ms, np.int64), np.array(shs, np.int64), out_fmt.zero_point,
                   qmin, qmax, rid, mult_bits)


def bias_table(bias, unit, acc_width, rounding=DEFAULT, seed=0, tensor_id=0):
    """round(bias/unit) as int64, which must fit the accumulator (no silent clipping)."""
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    table = round_float(b / unit, rounding, seed, tensor_id)
    lo, hi = -(2 ** (acc_width - 1)), 2 ** (acc_width - 1) - 1
    if table.size and (table.min() < lo or table.max() > hi):
        raise ValueError(f"bias table entry out of the {acc_width}-bit accumulator range [{lo}, {hi}]")
    return table


__all__ = ["DecodeTable", "ProductTable", "Thresholds", "Rescale", "decode_table", "product_table",
           "threshold_table", "rescale_table", "bias_table", "P"]
