"""Scalar integer primitives of the arithmetic contract (docs/ARITHMETIC.md).

Each function is plain Python over integers only, written once and compiled for every
backend: ``numba.njit`` for the CPU kernels (nupes_sim.cpu) and ``cuda.jit(device=True)``
for the GPU kernels (nupes_sim.cuda). No floats, no numpy calls, no Python-only features,
so the two compiled copies cannot drift. Every intermediate stays below 2^63 in magnitude
(stated per function), so int64 never overflows in compiled code. The NumPy oracle
(nupes_sim.oracle) does NOT use these: it is an independent implementation.
"""

import types

# Rounding-mode identifiers (docs/ARITHMETIC.md §Rounding). Order is part of the contract:
# golden files store these numbers.
HALF_EVEN = 0
HALF_AWAY = 1
HALF_UP = 2
FLOOR = 3
CEIL = 4
TOWARD_ZERO = 5
STOCHASTIC = 6
DOUBLE_ROUND = 7  # TOSA RESCALE DOUBLE_ROUND (rescale only)

# Accumulator overflow-mode identifiers (docs/ARITHMETIC.md §4), the one numbering every
# backend's kernels use; the order is that of layers.OVERFLOW_MODES. Golden files store the
# names, never these numbers.
WRAP = 0
SATURATE = 1
EXACT = 2
OVERFLOW_IDS = {"wrap": WRAP, "saturate": SATURATE, "exact": EXACT}

MASK32 = 0xFFFFFFFF


def mul32(a, b):
    """(a*b) mod 2^32 for a, b in [0, 2^32); intermediates < 2^48."""
    lo = (a * (b & 0xFFFF)) & MASK32
    hi = ((a * (b >> 16)) & 0xFFFF) << 16
    return (lo + hi) & MASK32


def fmix32(x):
    """32-bit avalanche mixer (xor-shift-multiply, 'lowbias32' constants)."""
    x = x ^ (x >> 16)
    x = mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash32(seed, tensor_id, index):
    """Counter-based random word in [0, 2^32) for stochastic rounding.

    A pure function of (seed, tensor_id, index): seed and tensor_id in [0, 2^32),
    index in [0, 2^62). Independent of thread count, launch shape and backend.
    """
    h = fmix32((seed & MASK32) ^ 0x9E3779B9)
    h = fmix32(h ^ (tensor_id & MASK32) ^ 0x85EBCA6B)
    h = fmix32(h ^ (index & MASK32) ^ 0xC2B2AE35)
    h = fmix32(h ^ ((index >> 32) & MASK32) ^ 0x27D4EB2F)
    return h


def round_shift(x, s, mode, r):
    """x / 2^s rounded to an integer by `mode`; |x| < 2^62, 0 <= s <= 62.

    r is a random word in [0, 2^32) used only by STOCHASTIC, which rounds up with
    probability rem/2^s (exactly, for s <= 32; from the top 32 bits of rem for s > 32).
    """
    if s == 0:
        return x
    q = x >> s  # floor (arithmetic shift)
    rem = x - (q << s)  # in [0, 2^s)
    half = 1 << (s - 1)
    if mode == FLOOR:
        return q
    if mode == CEIL:
        return q + 1 if rem != 0 else q
    if mode == TOWARD_ZERO:
        return q + 1 if (rem != 0 and x < 0) else q
    if mode == HALF_UP:
        return q + 1 if rem >= half else q
    if mode == HALF_AWAY:
        if rem > half or (rem == half and x >= 0):
            return q + 1
        return q
    if mode == HALF_EVEN:
        if rem > half or (rem == half and (q & 1) == 1):
            return q + 1
        return q
    if mode == DOUBLE_ROUND:
        # TOSA apply_scale_32(double_round): (x + 2^(s-1) ± 2^30) >> s for s > 31 (+ for
        # x >= 0), i.e. half_up at bit 31 then half_away at bit s; half_up for s <= 31.
        # |x| + 2^61 + 2^30 < 2^63.
        if s > 31:
            if x >= 0:
                return (x + half + (1 << 30)) >> s
            return (x + half - (1 << 30)) >> s
        return q + 1 if rem >= half else q
    # STOCHASTIC
    if s <= 32:
        return q + 1 if rem > (r >> (32 - s)) else q
    return q + 1 if (rem >> (s - 32)) > r else q


def sat_add(a, b, lo, hi):
    """Clamp(a + b, lo, hi) for a in [lo, hi], |b| < 2^62; never overflows int64."""
    if b > 0 and a > hi - b:
        return hi
    if b < 0 and a < lo - b:
        return lo
    return a + b


def sat_step(acc, part, p, k, kk, tile, lo, hi):
    """One product p (index k of kk, k ascending) through the saturating accumulator
    (ARITHMETIC.md §4); returns the new (acc, part).

    tile == 0: acc = clamp(acc + p) for every p, starting from the bias.
    tile == T: part restarts at 0 at each tile start (k % T == 0), part = clamp(part + p), and
    at a tile end (or the last k) acc = clamp(acc + part). acc and part stay in [lo, hi] and
    |p| < 2^62 (layer checks), so every sat_add precondition holds."""
    if tile == 0:
        return sat_add(acc, p, lo, hi), part
    if k % tile == 0:
        part = 0
    part = sat_add(part, p, lo, hi)
    if k % tile == tile - 1 or k == kk - 1:
        acc = sat_add(acc, part, lo, hi)
    return acc, part


def wrap(x, n):
    """x reduced modulo 2^n into [-2^(n-1), 2^(n-1)), two's complement, 8 <= n <= 64."""
    if n >= 64:
        return x
    half = 1 << (n - 1)
    mask = half + (half - 1)
    y = x & mask
    if y >= half:
        y = (y - half) - half
    return y


def count_ge(v, thr, row, n):
    """Number of entries of the non-decreasing thr[row, :n] that are <= v (binary search)."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if v >= thr[row, mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo


def rescale(v, m, sh, zp, lo, hi, mode, r):
    """clamp(round_shift(v*m, sh) + zp, lo, hi); |v*m| < 2^62 is checked at construction."""
    y = round_shift(v * m, sh, mode, r) + zp
    if y < lo:
        return lo
    if y > hi:
        return hi
    return y


def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


NAMES = (
    "mul32",
    "fmix32",
    "hash32",
    "round_shift",
    "sat_add",
    "sat_step",
    "wrap",
    "count_ge",
    "rescale",
    "clamp",
)


def compile_all(decorator):
    """Every primitive compiled by `decorator` (numba.njit, cuda.jit(device=True)).

    Each function is re-bound from its own bytecode to a namespace whose globals are the
    compiled siblings (hash32 -> fmix32 -> mul32, rescale -> round_shift,
    sat_step -> sat_add) and this module's
    integer constants, so compiled code never calls back into Python and the backends share
    one source. Returns a namespace of the compiled functions."""
    ns = {k: v for k, v in globals().items() if isinstance(v, int) and not isinstance(v, bool)}
    out = {}
    for name in NAMES:
        f = globals()[name]
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        g.__qualname__ = f"primitives.{name}"
        ns[name] = out[name] = decorator(g)
    return types.SimpleNamespace(**out)
