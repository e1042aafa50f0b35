"""Argument checks that name the field, the value and what is allowed."""

import math
import numbers

import numpy as np


def check_int(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name}={value} is out of range; allowed: {lo} <= {name} <= {hi}")
    return value


def check_finite_positive(name, values):
    """Float64 array (or scalar) of finite values > 0."""
    arr = np.asarray(values, dtype=np.float64) if not isinstance(values, str) else None
    if arr is None:
        raise TypeError(f"{name} must be numeric, got {values!r}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        first = arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
        raise ValueError(f"{name} must be finite and > 0; got {first!r}")
    return arr


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {sorted(choices)}")
    return value


def check_int_array(name, arr, lo, hi, shape=None):
    """An integer numpy array with every element in [lo, hi] (nothing is clipped)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy integer array, got {type(arr).__name__}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(arr.shape)}; expected {tuple(shape)}")
    if arr.size:
        amin, amax = int(arr.min()), int(arr.max())
        if amin < lo or amax > hi:
            bad = amin if amin < lo else amax
            raise ValueError(f"{name} contains {bad}, outside the allowed range [{lo}, {hi}]")
    return arr


def check_real(name, value, lo=-math.inf, hi=math.inf, lo_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name}={value!r} is not allowed; must be finite in {rng}")
    return v


def frozen_int_array(name, value, dtype=np.int64, ndim=None):
    """A read-only C-contiguous copy of an integer array (list or ndarray) as `dtype`; every
    element must fit `dtype` (nothing wraps) and, given `ndim`, the array must have it."""
    a = np.asarray(value)
    if a.size == 0 and a.dtype.kind == "f":  # an empty list
        a = a.astype(dtype)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    info = np.iinfo(dtype)
    if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
        bad = int(a.min()) if int(a.min()) < info.min else int(a.max())
        raise ValueError(f"{name} contains {bad}, outside the {np.dtype(dtype).name} range")
    out = np.array(a, dtype=dtype, order="C", copy=True)
    out.setflags(write=False)
    return out


def frozen_float_array(name, value):
    """A read-only C-contiguous float64 copy of finite values > 0 (units, scale factors)."""
    out = np.array(check_finite_positive(name, value), dtype=np.float64, order="C", copy=True)
    out.setflags(write=False)
    return out


def check_str(name, value):
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r}")
    return value


def set_fields(obj, **values):
    """Assign fields of a frozen dataclass from its __post_init__ (normalized values)."""
    for k, v in values.items():
        object.__setattr__(obj, k, v)
