"""Host (float64) construction of the transformer ops' integer tables (ARITHMETIC.md §10-§15).

Every float that feeds a transformer op's integers is computed here, once, and rounded by
a named mode; the layers then hold only integers (plus the host reals that explain them).
"""

import math

import numpy as np

from ..formats import PowerFormat, UniformFormat
from ..rounding import DEFAULT, mode_id, round_float
from ..validate import check_int


# ---- element-wise functions (§15) -------------------------------------------------------
def gelu_erf(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))


def gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def silu(x):
    x = np.asarray(x, np.float64)
    return x / (1.0 + np.exp(-x))


def relu(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


FUNCTIONS = {"gelu": gelu_erf, "gelu_tanh": gelu_tanh, "silu": silu, "relu": relu}


def resolve_function(fn):
    """(name, float64 function) for a FUNCTIONS name or a user callable."""
    if isinstance(fn, str):
        if fn not in FUNCTIONS:
            raise ValueError(
                f"function={fn!r} is not a built-in; choose one of {sorted(FUNCTIONS)} or pass a callable"
            )
        return fn, FUNCTIONS[fn]
    if not callable(fn):
        raise TypeError(f"function must be a name or a callable, got {type(fn).__name__}")
    return getattr(fn, "__name__", "user"), fn


def check_format(name, fmt):
    if not isinstance(fmt, (PowerFormat, UniformFormat)):
        raise TypeError(f"{name} must be a PowerFormat or UniformFormat, got {type(fmt).__name__}")
    if isinstance(fmt, PowerFormat) and fmt.granularity != "tensor":
        raise ValueError(f"{name} must have a per-tensor scale (activation formats), got {fmt.granularity!r}")
    return fmt


def elementwise_table(in_fmt, out_fmt, fn, rounding=DEFAULT, seed=0, tensor_id=0):
    """table[q - qmin_in] = encode_out(f(decode_in(q))) for every input code (int64)."""
    check_format("in_fmt", in_fmt)
    check_format("out_fmt", out_fmt)
    _, f = resolve_function(fn)
    x = in_fmt.decode_real(in_fmt.range.all_codes())
    y = np.asarray(f(x), np.float64)
    if y.shape != x.shape or not np.isfinite(y).all():
        raise ValueError("the element-wise function must return one finite value per input value")
    return out_fmt.encode(y, rounding, seed, tensor_id).astype(np.int64)


# ---- softmax exponentials (§13) ------------------------------------------------------------
def exp_table(x_fmt, frac_bits, rounding=DEFAULT, seed=0, tensor_id=0):
    """e[d] = R(2^F · exp(-s·d)) for every code difference d = q_max - q in [0, 2^b - 1].

    e[0] = 2^F exactly; the table is non-increasing for every mode but stochastic."""
    if not isinstance(x_fmt, UniformFormat):
        raise TypeError(
            "softmax scores must be in a UniformFormat (so x_i - x_max = s·(q_i - q_max) exactly)"
        )
    F = check_int("exp_frac_bits", frac_bits, 0, 40)
    d = np.arange(x_fmt.range.n_codes, dtype=np.float64)
    return round_float(np.exp(-x_fmt.scale * d) * 2.0**F, rounding, seed, tensor_id)


# ---- LayerNorm (§14) ---------------------------------------------------------------------------
def layernorm_tables(
    gamma, beta, channels, inv_frac_bits, gamma_frac_bits, rounding=DEFAULT, seed=0, tensor_id=0
):
    """G = R(γ·2^Fg), B = R(β·2^(R+Fg)) per channel (int64), Y = Z·G + B in units 2^-(R+Fg)."""
    g = np.ones(channels) if gamma is None else np.asarray(gamma, np.float64).reshape(-1)
    b = np.zeros(channels) if beta is None else np.asarray(beta, np.float64).reshape(-1)
    if g.shape != (channels,) or b.shape != (channels,):
        raise ValueError(f"gamma and beta need {channels} entries, got {g.shape} and {b.shape}")
    G = round_float(g * 2.0**gamma_frac_bits, rounding, seed, tensor_id)
    B = round_float(b * 2.0 ** (inv_frac_bits + gamma_frac_bits), rounding, seed, tensor_id + 1)
    return G, B


def eps_table(eps, x_unit, rounding=DEFAULT):
    """E = max(1, R(eps / u_x^2)): epsilon in units of the squared decode LSB, at least 1."""
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r} must be finite and >= 0")
    v = eps / (x_unit * x_unit)
    if v >= 2.0**52:
        raise ValueError(
            f"eps={eps} is {v:.3g} squared decode LSBs (limit 2^52); lower the decode fractional bits"
        )
    return max(1, int(round_float(np.array([v]), rounding)[0]))


def frac_bits_for(max_abs, bits, lo=0, hi=40):
    """Fractional bits so that the largest entry max_abs·2^F lies below 2^bits (clamped)."""
    if max_abs <= 0:
        return min(max(bits, lo), hi)
    return int(min(hi, max(lo, bits - 1 - math.floor(math.log2(max_abs)))))


__all__ = [
    "FUNCTIONS",
    "gelu_erf",
    "gelu_tanh",
    "silu",
    "relu",
    "resolve_function",
    "elementwise_table",
    "exp_table",
    "layernorm_tables",
    "eps_table",
    "frac_bits_for",
    "mode_id",
]
