"""Rounding modes: names, ids, and the host-side (float64) rounding used to build tables.

Integer rounding inside kernels is primitives.round_shift; this module rounds float64
values on the host (LUTs, bias tables, encoding) with the same named rules.
"""

import numpy as np

from . import primitives as P

MODES = {
    "half_even": P.HALF_EVEN,
    "half_away": P.HALF_AWAY,
    "half_up": P.HALF_UP,
    "floor": P.FLOOR,
    "ceil": P.CEIL,
    "toward_zero": P.TOWARD_ZERO,
    "stochastic": P.STOCHASTIC,
    "double_round": P.DOUBLE_ROUND,
}
NAMES = {v: k for k, v in MODES.items()}
DEFAULT = "half_even"
# double_round is TOSA RESCALE's DOUBLE_ROUND (= TFLite MultiplyByQuantizedMultiplier): a rule
# of the integer rescale only (docs/ARITHMETIC.md §7); host tables use the other seven.
HOST_MODES = tuple(n for n in MODES if n != "double_round")
RESCALE_MODES = tuple(MODES)

# Host float rounding is exact only while the fractional part is exact: |x| < 2^52.
HOST_LIMIT = float(2**52)


def mode_id(name, allowed=None):
    """Id of a named mode; `allowed` (names) restricts where a mode applies."""
    allowed = MODES if allowed is None else allowed
    if isinstance(name, str) and name in allowed:
        return MODES[name]
    if isinstance(name, str) and name in MODES:
        raise ValueError(
            f"rounding={name!r} applies only to rescale requantization; choose one of {sorted(allowed)}"
        )
    raise ValueError(f"rounding={name!r} is not a rounding mode; choose one of {sorted(allowed)}")


def random_words(seed, tensor_id, n):
    """hash32(seed, tensor_id, i) for i in range(n), vectorised (int64 array)."""
    return hash_words(seed, tensor_id, np.arange(n, dtype=np.int64))


def hash_words(seed, tensor_id, index):
    """hash32(seed, tensor_id, i) for every i of an int64 array (NumPy twin of primitives.hash32)."""
    i = np.asarray(index, dtype=np.int64)
    n = i.shape
    m32 = np.int64(P.MASK32)

    def mul32(a, b):
        lo = (a * (b & 0xFFFF)) & m32
        hi = ((a * (b >> 16)) & 0xFFFF) << 16
        return (lo + hi) & m32

    def fmix(x):
        x = x ^ (x >> 16)
        x = mul32(x, 0x7FEB352D)
        x = x ^ (x >> 15)
        x = mul32(x, 0x846CA68B)
        return x ^ (x >> 16)

    h = fmix(np.full(n, (seed & P.MASK32) ^ 0x9E3779B9, dtype=np.int64))
    h = fmix(h ^ (tensor_id & P.MASK32) ^ 0x85EBCA6B)
    h = fmix(h ^ (i & m32) ^ 0xC2B2AE35)
    return fmix(h ^ ((i >> 32) & m32) ^ 0x27D4EB2F)


def round_float(x, rounding=DEFAULT, seed=0, tensor_id=0, words=None):
    """Round float64 values to int64 by a named mode (host only), exactly.

    floor/ceil/toward_zero are the usual functions; half_* round to nearest with ties
    resolved as named; stochastic rounds up (from floor(x)) iff frac(x)·2^32 > r, with
    r = hash32(seed, tensor_id, flat index) (or words[i] when given). Raises if any |x| >= 2^52 or non-finite.

    The fraction is taken from |x|: a = |x|, f = floor(a), d = a - f is exact for every
    a < 2^52, whereas x - floor(x) is not for x in (-1/2, 0) (1 - 0.49999999999999994
    rounds to 1/2). Each rule is then applied by sign to the magnitude.
    """
    mode = mode_id(rounding, HOST_MODES)
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("cannot round a non-finite value to an integer table entry")
    if x.size and np.abs(x).max() >= HOST_LIMIT:
        raise ValueError(
            f"value {np.abs(x).max():.6g} is too large for an int64 table built in float64 "
            f"(limit 2^52); lower the fractional bits or the scale"
        )
    a = np.abs(x)
    f = np.floor(a)
    d = a - f  # exact: 0 <= d < 1
    neg = x < 0
    odd = np.mod(f, 2) == 1
    # inc: 1 where the magnitude rounds up to f + 1 (else it stays f)
    if mode == P.FLOOR:
        inc = neg & (d > 0)
    elif mode == P.CEIL:
        inc = ~neg & (d > 0)
    elif mode == P.TOWARD_ZERO:
        inc = np.zeros(x.shape, bool)
    elif mode == P.HALF_UP:  # ties toward +inf
        inc = (d > 0.5) | ((d == 0.5) & ~neg)
    elif mode == P.HALF_AWAY:
        inc = d >= 0.5
    elif mode == P.HALF_EVEN:
        inc = (d > 0.5) | ((d == 0.5) & odd)
    else:
        # x >= 0: up iff d·2^32 > r.  x < 0, d > 0: x = -(f+1) + (1-d), so x rounds up to -f
        # iff (1-d)·2^32 > r, i.e. d·2^32 < 2^32 - r (both sides exact); else to -(f+1).
        if words is None:
            words = random_words(seed, tensor_id, x.size)
        r = np.asarray(words).reshape(x.shape).astype(np.float64)
        d32 = d * 2.0**32
        inc = np.where(neg, (d > 0) & ~(d32 < 2.0**32 - r), d32 > r)
    mag = (f + inc).astype(np.int64)
    return np.where(neg, -mag, mag)
