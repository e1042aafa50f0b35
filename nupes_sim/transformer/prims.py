"""Scalar integer rules of the transformer ops, compiled for every backend (as primitives.py).

Plain Python over integers only; `compile_all(decorator)` re-binds each function to a
namespace of its compiled siblings (numba.njit for the CPU, cuda.jit(device=True) for the
GPU). The oracle does not use these: it computes with Python integers and Fractions.
"""

import types

from ..primitives import CEIL, FLOOR, HALF_AWAY, HALF_EVEN, HALF_UP, TOWARD_ZERO


def round_div(n, d, mode, r):
    """n / d rounded to an integer by `mode` (docs/ARITHMETIC.md §12); d > 0, |n| < 2^62.

    q = floor(n / d), rem = n - q·d in [0, d). r is the random word of STOCHASTIC, which
    rounds up iff rem·2^32 > r·d (needs d < 2^31, checked by the layers)."""
    q = n // d
    rem = n - q * d
    if rem < 0:  # defensive: floor semantics whatever the target's integer division does
        q -= 1
        rem += d
    if rem >= d:
        q += 1
        rem -= d
    if mode == FLOOR or rem == 0:
        return q
    if mode == CEIL:
        return q + 1
    if mode == TOWARD_ZERO:
        return q + 1 if n < 0 else q
    if mode == HALF_UP:
        return q + 1 if 2 * rem >= d else q
    if mode == HALF_AWAY:
        if 2 * rem > d or (2 * rem == d and n >= 0):
            return q + 1
        return q
    if mode == HALF_EVEN:
        if 2 * rem > d or (2 * rem == d and (q & 1) == 1):
            return q + 1
        return q
    return q + 1 if rem * 4294967296 > r * d else q  # STOCHASTIC


def isqrt(n):
    """floor(sqrt(n)) for 0 <= n < 2^63, digit by digit (no floats, intermediates < 2^63)."""
    x = 0
    bit = 1 << 62
    while bit > n:
        bit >>= 2
    while bit != 0:
        if n >= x + bit:
            n -= x + bit
            x = (x >> 1) + bit
        else:
            x >>= 1
        bit >>= 2
    return x


NAMES = ("round_div", "isqrt")


def compile_all(decorator):
    """Each function of NAMES compiled by `decorator`, with the rounding-mode constants bound."""
    ns = {k: v for k, v in globals().items() if isinstance(v, int) and not isinstance(v, bool)}
    out = {}
    for name in NAMES:
        f = globals()[name]
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__qualname__ = f"transformer.prims.{name}"
        ns[name] = out[name] = decorator(g)
    return types.SimpleNamespace(**out)
