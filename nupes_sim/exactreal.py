"""Correctly rounded host reals (docs/ARITHMETIC.md §3): each table entry is an exact
function of its float64 inputs, so an independent generator builds the same tables.

A table entry is D(v) for a real v = c·Π x_i^(1/a_i) (c, x_i exact rationals from float64
inputs and integers, a_i float64 exponents taken as exact rationals) and a non-decreasing
integer map D (a rounding mode, or a threshold's ceil / floor + 1). Three steps, each exact:

1. float64 estimate v64 with a derived error radius e (pow's argument and exponent each carry
   one rounding, amplified by 1/a and |ln y|; pow itself is granted 8 ulp): if
   D(v64 - e) == D(v64 + e), that is D(v) since D is monotone;
2. otherwise, if v is rational (each x_i^(1/a_i) rational, found by exact integer roots, or
   a product of irrational powers whose lcm-th power is rational), D of the exact rational;
3. otherwise mpmath interval arithmetic at 128, 256, ... 8192 bits until D agrees on both
   ends of the interval (an irrational v is never a decision point, so this ends).
"""

import math
from fractions import Fraction

import numpy as np
from mpmath import iv
from mpmath.libmp import to_rational

from . import primitives as P

TABLE_LIMIT = 2**52  # |entry| of a rounded table (rounding.HOST_LIMIT)
_U = 2.0**-53
_MAX_BITS = 1 << 16  # exact rational powers larger than this are left to the interval path


def _iroot(n, k):
    """The integer k-th root of n >= 0 if n is a perfect k-th power, else None."""
    if n < 2 or k == 1:
        return n
    if k > n.bit_length():
        return None
    r = 1 << -(-n.bit_length() // k)  # >= the root
    while True:
        s = ((k - 1) * r + n // r ** (k - 1)) // k
        if s >= r:
            break
        r = s
    return r if r**k == n else None


def _root(x, m):
    """x^(1/m) for a Fraction x > 0 if rational, else None."""
    p, q = _iroot(x.numerator, m), _iroot(x.denominator, m)
    return None if p is None or q is None else Fraction(p, q)


def _pow_bits_ok(w, n):
    return abs(n) * max(w.numerator.bit_length(), w.denominator.bit_length()) <= _MAX_BITS


def rational_value(c, factors):
    """c·Π x^(1/a) as a Fraction when it is rational and of reasonable size, else None.

    factors: ((x: Fraction > 0, a: float), ...)."""
    if c == 0:
        return Fraction(0)
    out, irr = Fraction(c), []
    for x, a in factors:
        e = 1 / Fraction(a)  # exact 1/a = n/m
        w = _root(x, e.denominator)
        if w is None:
            irr.append((x, e))
            continue
        if not _pow_bits_ok(w, e.numerator):
            return None
        out *= w**e.numerator
    if not irr:
        return out
    if len(irr) == 1:
        return None  # a nonzero rational times an irrational
    L = math.lcm(*(e.denominator for _, e in irr))
    if L > 4096:
        return None
    prod = Fraction(1)
    for x, e in irr:
        n = e.numerator * (L // e.denominator)
        if not _pow_bits_ok(x, n):
            return None
        prod *= x**n
    w = _root(prod, L)
    return None if w is None else out * w


def _iv_frac(ctx, f):
    return ctx.mpf(f.numerator) / ctx.mpf(f.denominator)


def interval(c, factors, prec):
    """(lo, hi) Fractions enclosing c·Π x^(1/a), by mpmath interval arithmetic at prec bits."""
    saved = iv.prec
    try:
        iv.prec = prec
        v = _iv_frac(iv, Fraction(c))
        for x, a in factors:
            if x == 0:
                return Fraction(0), Fraction(0)
            v = v * _iv_frac(iv, x) ** (iv.mpf(1) / _iv_frac(iv, Fraction(a)))
        lo, hi = v._mpi_
    finally:
        iv.prec = saved
    return Fraction(*to_rational(lo)), Fraction(*to_rational(hi))


def decide_exact(c, factors, decide):
    """decide(c·Π x^(1/a)) exactly; decide maps a Fraction to an int, non-decreasing."""
    if c == 0 or any(x == 0 for x, _ in factors):
        return decide(Fraction(0))
    v = rational_value(c, factors)
    if v is not None:
        return decide(v)
    prec = 128
    while prec <= 8192:
        lo, hi = interval(c, factors, prec)
        dlo, dhi = decide(lo), decide(hi)
        if dlo == dhi:
            return dlo
        prec *= 2
    raise ValueError(f"cannot decide a table entry within 8192 bits (c={c}, factors={factors})")


def error_radius(v64, terms):
    """Error radius of a float64 evaluation of v = c·Π pow(fl(x), fl(1/a)).

    terms: ((y64, a), ...) per factor: y64 the float64 factor value and a its exponent.
    Per factor: rel. error <= (1/a)·2u (argument: up to two roundings) + |ln y|·u (1/a
    rounded) + 16u (pow, 8 ulp); products and the final scaling add u each; doubled for
    second-order terms, plus one ulp of v for forming v ± e."""
    rel = np.zeros(np.shape(v64))
    for y64, a in terms:
        with np.errstate(divide="ignore"):
            ly = np.abs(np.log(np.where(y64 > 0, y64, 1.0)))
        rel = rel + (2.0 / a + ly + 18.0) * _U
    return 2.0 * rel * np.abs(v64) + np.spacing(np.abs(v64))


def round_fraction(v, mode, r=0):
    """A Fraction rounded by a mode id (the definitions of docs/ARITHMETIC.md §3)."""
    f = math.floor(v)
    d = v - f
    half = Fraction(1, 2)
    if mode == P.FLOOR:
        up = False
    elif mode == P.CEIL:
        up = d > 0
    elif mode == P.TOWARD_ZERO:
        up = d > 0 and v < 0
    elif mode == P.HALF_UP:
        up = d >= half
    elif mode == P.HALF_AWAY:
        up = d > half or (d == half and v > 0)
    elif mode == P.HALF_EVEN:
        up = d > half or (d == half and f % 2 == 1)
    elif mode == P.STOCHASTIC:
        up = d * 2**32 > r
    else:
        raise ValueError(f"rounding id {mode} is not a host rounding mode")
    return f + int(up)


def _limited(name, v):
    if abs(v) >= TABLE_LIMIT:
        raise ValueError(
            f"{name} entry {float(v):.6g} is too large for an int64 table "
            f"(limit 2^52); lower the fractional bits or the scale"
        )
    return v


def rounded_table(c, factors, y64, v64, mode, words, name="table"):
    """int64 table D(v) with D = round by `mode` (word r per entry for stochastic).

    c: (n,) object array of Fractions; factors: per entry a tuple ((x, a), ...);
    y64: per factor, (n,) float64 factor values (for the error radius); v64: (n,) float64
    estimates of the entries; words: (n,) int64 random words (used by stochastic only)."""
    from .rounding import NAMES, round_float

    v64 = np.asarray(v64, np.float64)
    n = v64.size
    out = np.zeros(n, np.int64)
    e = error_radius(v64, [(y, a) for y, a in y64])
    ok = np.isfinite(v64) & np.isfinite(e) & (np.abs(v64) + e < TABLE_LIMIT)
    ok &= np.all([(y == 0) | (y > 2.0**-1000) for y, _ in y64], axis=0) if y64 else ok
    if ok.any():
        idx = np.flatnonzero(ok)
        lo = round_float(v64[idx] - e[idx], NAMES[mode], words=words[idx])
        hi = round_float(v64[idx] + e[idx], NAMES[mode], words=words[idx])
        same = lo == hi
        out[idx[same]] = lo[same]
        ok[idx[~same]] = False
    for i in np.flatnonzero(~ok):
        r = int(words[i])
        out[i] = decide_exact(c[i], factors[i], lambda v: round_fraction(_limited(name, v), mode, r))
    return out


def cr_float(c, factors):
    """c·Π x^(1/a) correctly rounded to float64 (round to nearest, ties to even)."""
    if c == 0 or any(x == 0 for x, _ in factors):
        return 0.0
    v = rational_value(c, factors)
    if v is not None:
        return float(v)  # Fraction -> float is correctly rounded
    prec = 128
    while prec <= 8192:
        lo, hi = interval(c, factors, prec)
        if float(lo) == float(hi):
            return float(lo)
        prec *= 2
    raise ValueError(f"cannot round c={c}, factors={factors} to float64 within 8192 bits")
