"""One-pass fake quantization of float64 values (the reference twin's activation quantizer).

Host reals only (never an integer datapath kernel): ``PowerFormat.decode_real(encode(x))``
for a per-tensor PowerFormat and a round-to-nearest host mode, without the half-dozen
temporary arrays of ``round_float``. Equal to it value for value:
- z = PowerFormat.scaled(x) is computed by the same NumPy expression encode uses;
- the kernel then does exactly round_float's arithmetic on z (a = |z|, f = floor(a),
  d = a - f, all exact IEEE operations for |z| < 2^52; the tie rule of the mode; the sign
  applied to the magnitude), the same clip, and reads the decoded value of the code from
  lut = decode_real(qmin..qmax), i.e. decode_real of that code;
- anything round_float or encode would reject (a non-finite z, |z| >= 2^52) makes the kernel
  return False and the caller runs the original functions, which raise their errors.
tests/reference/test_fake_quant_fast.py compares both on every code, at every rounding
boundary and tie, and on the exporter's twin outputs.
"""

import numpy as np
from numba import prange

from .jit import kernel

MODES = {"half_even": 0, "half_away": 1, "half_up": 2}
_LIMIT = float(2**52)  # rounding.HOST_LIMIT


@kernel(parallel=True)
def _round_decode(z, mode, qmin, qmax, lut, out):
    n = z.size
    bad = 0
    for i in prange(n):
        v = z[i]
        a = abs(v)
        if not (a < _LIMIT):  # also NaN
            bad += 1
            continue
        f = np.floor(a)
        d = a - f
        neg = v < 0
        if mode == 0:
            inc = d > 0.5 or (d == 0.5 and (np.int64(f) & 1) == 1)
        elif mode == 1:
            inc = d >= 0.5
        else:
            inc = d > 0.5 or (d == 0.5 and not neg)
        m = np.int64(f) + (1 if inc else 0)
        q = -m if neg else m
        if q < qmin:
            q = qmin
        elif q > qmax:
            q = qmax
        out[i] = lut[q - qmin]
    return bad == 0


def fake_quantize(fmt, x, rounding):
    """decode_real(encode(x, rounding)) as float64 of x's shape, or None when this pass does
    not apply (another format or mode: the caller runs the original functions)."""
    mode = MODES.get(rounding)
    if mode is None or getattr(fmt, "granularity", None) != "tensor" or not hasattr(fmt, "scaled"):
        return None
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        return None  # encode raises its error
    z = np.ascontiguousarray(fmt.scaled(x)).reshape(-1)
    q0, q1 = fmt.range.qmin, fmt.range.qmax
    lut = np.ascontiguousarray(fmt.decode_real(np.arange(q0, q1 + 1, dtype=np.int64)))
    out = np.empty(z.size, np.float64)
    if not _round_decode(z, mode, q0, q1, lut, out):
        return None
    return out.reshape(x.shape)
