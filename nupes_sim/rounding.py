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
}
NAMES = {v: k for k, v in MODES.items()}
DEFAULT = "half_even"

# Host float rounding is exact only while the fractional part is exact: |x| < 2^52.
HOST_LIMIT = float(2**52)


def mode_id(name):
    if isinstance(name, str) and name in MODES:
        return MODES[name]
    raise ValueError(f"rounding={name!r} is not a rounding mode; choose one of {sorted(MODES)}")


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


def round_float(x, rounding=DEFAULT, seed=0, tensor_id=0):
    """Round float64 values to int64 by a named mode (host only).

    floor/ceil/toward_zero are the usual functions; half_* round to nearest with ties
    resolved as named; stochastic rounds up with probability frac(x), drawing
    hash32(seed, tensor_id, flat index)/2^32. Raises if any |x| >= 2^52 or non-finite.
    """
    mode = mode_id(rounding)
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("cannot round a non-finite value to an integer table entry")
    if x.size and np.abs(x).max() >= HOST_LIMIT:
        raise ValueError(
            f"value {np.abs(x).max():.6g} is too large for an int64 table built in float64 "
            f"(limit 2^52); lower the fractional bits or the scale")
    f = np.floor(x)
    d = x - f  # exact for |x| < 2^52
    if mode == P.FLOOR:
        up = np.zeros(x.shape, bool)
    elif mode == P.CEIL:
        up = d > 0
    elif mode == P.TOWARD_ZERO:
        up = (d > 0) & (x < 0)
    elif mode == P.HALF_UP:
        up = d >= 0.5
    elif mode == P.HALF_AWAY:
        up = (d > 0.5) | ((d == 0.5) & (x > 0))
    elif mode == P.HALF_EVEN:
        up = (d > 0.5) | ((d == 0.5) & (np.mod(f, 2) == 1))
    else:
        r = random_words(seed, tensor_id, x.size).reshape(x.shape).astype(np.float64)
        up = d * 2.0**32 > r
    return (f + up).astype(np.int64)
