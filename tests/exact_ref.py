"""An independent generator of the host tables' reals, written from docs/ARITHMETIC.md §3
alone: mpmath (non-interval) at 600 bits, with sympy's exact rational powers deciding the
rare values that land within 2^-500 (relative) of a rounding decision point. It shares no
code with nupes_sim.exactreal."""

import math
from fractions import Fraction

import mpmath
import sympy

PREC = 600


def power_real(factors, c=1):
    """c·Π x^(1/a) at PREC bits (mpmath), factors ((x, a), ...) with x, a exact (float/int/Fraction)."""
    with mpmath.workprec(PREC):
        v = mpmath.mpf(Fraction(c).numerator) / Fraction(c).denominator
        for x, a in factors:
            x = Fraction(x)
            v *= (mpmath.mpf(x.numerator) / x.denominator) ** (
                1 / mpmath.mpf(Fraction(a).numerator) * Fraction(a).denominator
            )
        return v


def sym_value(factors, c=1):
    v = sympy.Rational(Fraction(c).numerator, Fraction(c).denominator)
    for x, a in factors:
        x, a = Fraction(x), Fraction(a)
        v *= sympy.Rational(x.numerator, x.denominator) ** sympy.Rational(a.denominator, a.numerator)
    return v


def decide(factors, c, points, pick):
    """pick(v) for v = c·Π x^(1/a); `points(v_mp)` returns the decision points (Fractions)
    near v. If v is within 2^-500 of one, decide exactly with sympy."""
    v = power_real(factors, c)
    with mpmath.workprec(PREC):
        for p in points(v):
            pm = mpmath.mpf(p.numerator) / p.denominator
            if abs(v - pm) <= abs(pm) * mpmath.mpf(2) ** -500 + mpmath.mpf(2) ** -550:
                sv = sym_value(factors, c)
                sp = sympy.Rational(p.numerator, p.denominator)
                if sympy.simplify(sv - sp) == 0:
                    return pick(p, exact=True)
                side = sympy.N(sv - sp, 1000) > 0
                return pick(p + Fraction(1, 2**700) * (1 if side else -1), exact=False)
        return pick(v, exact=False)


def _floor(v):
    if isinstance(v, Fraction):
        return math.floor(v)
    return int(mpmath.floor(v))


def round_real(factors, c, mode, r=0):
    """R(v) by mode name (docs/ARITHMETIC.md §3); r the random word for stochastic."""

    def points(v):
        f = int(mpmath.floor(v))
        return [
            Fraction(f),
            Fraction(f + 1),
            Fraction(2 * f + 1, 2),
            Fraction(f) + Fraction(r, 2**32),
            Fraction(f - 1) + Fraction(r, 2**32),
        ]

    def pick(v, exact):
        f = _floor(v)
        d = v - f
        half = Fraction(1, 2) if isinstance(v, Fraction) else mpmath.mpf(0.5)
        up = {
            "floor": False,
            "ceil": d > 0,
            "toward_zero": d > 0 and v < 0,
            "half_up": d >= half,
            "half_away": d > half or (d == half and v > 0),
            "half_even": d > half or (d == half and f % 2 == 1),
            "stochastic": d * 2**32 > r,
        }[mode]
        return f + int(up)

    return decide(factors, c, points, pick)


def first_acc(factors, c, inclusive):
    """ceil(v) (inclusive) or floor(v) + 1 (exclusive), v = c·Π x^(1/a)."""

    def points(v):
        f = int(mpmath.floor(v))
        return [Fraction(f), Fraction(f + 1)]

    def pick(v, exact):
        if isinstance(v, Fraction):
            return math.ceil(v) if inclusive else math.floor(v) + 1
        return int(mpmath.ceil(v)) if inclusive else int(mpmath.floor(v)) + 1

    return decide(factors, c, points, pick)
