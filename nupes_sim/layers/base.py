"""What every integer layer declares about itself (the layer protocol) and the shared parts.

Golden files, verification, the audit and serialization never branch on layer types: they
ask the layer. A layer type is a frozen dataclass (``@dataclass(frozen=True, eq=False)``)
subclass of `Layer` whose ``__post_init__`` validates every field (naming the field, the
value and what is allowed; normalized values are stored with `set_fields`, arrays read-only),
so that backends re-check nothing but their inputs (docs/ARITHMETIC.md §4, "One rule for all
backends"). It is decorated with `@register`
(which puts it into `LAYER_TYPES`, by class name: what model files store), that provides:

- ``n_inputs``: how many tensors it reads (class attribute).
- ``stages()``: the names of the values it produces, in order: ``("acc_exact", "acc",
  "out")`` for layers with an accumulator (`AccLayer`), ``("out",)`` otherwise.
- ``in_ranges()``: one `CodeRange` (or None: any code) per input, the codes it accepts.
- ``passthrough``: True when its output codes are a selection or rearrangement of its input
  codes (MaxPool2d, Flatten): code ranges flow through it in both directions.
- ``stage_range(stage, in_ranges)``: (lo, hi) every value of `stage` lies in, or None;
  `in_ranges` are the (lo, hi) (or None) of the inputs. ``out`` is the output code range.
- ``out_shape(in_shapes)``: the output shape (batch first) for the given input shapes;
  raises ValueError for shapes the layer cannot take.
- ``stage_shapes(in_shapes)``: {stage: shape}; every stage has the output's shape unless the
  layer says otherwise (row statistics such as Softmax's sums or LayerNorm's mean).
- ``golden_params()``: (datasets {name: int array}, info {JSON-able}) of everything hardware
  needs (tables, codes, geometry, settings) — written to golden files (docs/GOLDEN.md).
- ``param_width(name)``: (bits, signed) of a `golden_params` dataset's words in hex export,
  or None (then the smallest two's complement width holding the values is used).
- ``feeding(multi, inputs, input_names)``: JSON-able description of what feeds output
  element `multi` (the diff's "inputs feeding this element").
- ``float_reference(inputs)``: (float64 exact result in accumulator LSBs, reference kind)
  for the audit, or (None, None) when the layer has no accumulator.

Every field that is a constructor argument (`dataclasses.fields(...)` with init=True) is
serialized; derived fields use ``field(init=False)`` and are recomputed on load.

Adding a layer type therefore means: the class here (in a module of this package, listed in
its ``__all__``), one kernel per backend (``OPS`` in nupes_sim/oracle.py, nupes_sim/cpu,
cuda/backend.py), and tests; tests/test_layer_protocol.py checks that every registered type
has all three kernels and a consistent self-description.
"""

from dataclasses import dataclass

import numpy as np

from ..formats import CodeRange, PowerFormat, UniformFormat
from ..rounding import DEFAULT
from ..rounding import NAMES as ROUNDING_NAMES
from ..tables import DecodeTable, Rescale, Thresholds, rescale_table, threshold_table
from ..validate import (
    check_choice,
    check_finite_positive,
    check_int,
    check_str,
    frozen_float_array,
    set_fields,
)
from .format_meta import format_from_meta, format_meta, meta_format  # noqa: F401 (re-exported)

OVERFLOW_MODES = ("wrap", "saturate", "exact")
INT64_LIMIT = 2**63 - 1
ACC_STAGES = ("acc_exact", "acc", "out")
OUT_STAGES = ("out",)

LAYER_TYPES = {}  # class name -> layer class, filled by @register


def register(cls):
    """Class decorator: make `cls` a layer type known to graphs, model files and golden files."""
    if cls.__name__ in LAYER_TYPES and LAYER_TYPES[cls.__name__] is not cls:
        raise TypeError(f"a layer type named {cls.__name__!r} is already registered")
    LAYER_TYPES[cls.__name__] = cls
    return cls


def is_layer(obj):
    """True for an instance of a registered layer type (exactly that class)."""
    return LAYER_TYPES.get(type(obj).__name__) is type(obj)


@dataclass(frozen=True)
class Accumulator:
    """Signed accumulator of `width` bits (8..64).

    overflow: 'wrap' (two's complement, the exact sum mod 2^width), 'saturate' (clamp after
    every addition, k ascending; with tile=T>0 each tile of T consecutive k is summed into a
    zeroed saturating partial, then partials are added to the bias in ascending tile order,
    clamping after every addition), or 'exact' (the exact sum; out-of-range results are
    counted as overflow, never changed).
    """

    width: int = 32
    overflow: str = "wrap"
    tile: int = 0

    def __post_init__(self):
        check_int("acc_width", self.width, 8, 64)
        check_choice("overflow", self.overflow, OVERFLOW_MODES)
        check_int("tile", self.tile, 0, None)

    @property
    def lo(self):
        return -(2 ** (self.width - 1))

    @property
    def hi(self):
        return 2 ** (self.width - 1) - 1


# ---- requantization -----------------------------------------------------------------------


def out_range(requant, acc):
    """(lo, hi) of a stage's output values: the requantized code range or the accumulator's."""
    if requant is None:
        return acc.lo, acc.hi
    return requant.qmin, requant.qmax


def build_requant(unit, out_fmt, acc, rounding=DEFAULT, relu=False, clip_max=None, mult_bits=31):
    """Thresholds for a PowerFormat output, rescale for a UniformFormat output, None for raw acc."""
    if out_fmt is None:
        return None
    if isinstance(out_fmt, PowerFormat):
        # exact mode passes unclamped sums (< 2^63) on: clamp thresholds to int64 instead
        width = 64 if acc.overflow == "exact" else acc.width
        return threshold_table(unit, out_fmt, width, rounding, relu, clip_max)
    if isinstance(out_fmt, UniformFormat):
        if clip_max is not None:
            raise ValueError("clip_max (ReLU6) is only folded into threshold requantization")
        return rescale_table(
            unit, out_fmt, acc.width, mult_bits, rounding, relu, exact=acc.overflow == "exact"
        )
    raise TypeError(f"out_fmt must be a PowerFormat, UniformFormat or None, got {type(out_fmt).__name__}")


def check_requant_input(name, requant, acc, bound):
    """The requantizer sees |acc| <= bound (exact mode: the unclamped sum) and
    |acc| <= 2^(width-1) otherwise; rescale's |acc·m| < 2^62 must hold for that limit.
    Thresholds of a wrap/saturate accumulator lie in [acc.lo, acc.hi + 1] (acc.hi + 1: never
    reached; what threshold_table produces), so hardware compares N+1-bit words at most."""
    if isinstance(requant, Thresholds) and acc.overflow != "exact" and requant.thr.size:
        lo, hi = acc.lo, min(acc.hi + 1, INT64_LIMIT)
        tmin, tmax = int(requant.thr.min()), int(requant.thr.max())
        if tmin < lo or tmax > hi:
            raise ValueError(
                f"{name}.requant thresholds hold {tmin if tmin < lo else tmax}; allowed: "
                f"[{lo}, {hi}] (the {acc.width}-bit accumulator's range, {hi} = never reached)"
            )
    if not isinstance(requant, Rescale):
        return
    limit = bound if acc.overflow == "exact" else min(bound, 2 ** (acc.width - 1))
    if limit * maxabs(requant.multiplier) >= 2**62:
        raise ValueError(
            f"{name}: rescale needs |acc|·multiplier < 2^62, but |acc| can reach {limit}; "
            "lower mult_bits (or use wrap/saturate instead of exact)"
        )


def check_requant(requant, name="requant", rows=(1,)):
    """A Thresholds, Rescale or None whose number of rows (thresholds rows, multipliers) is
    one of `rows` (1: per tensor; the layer's output channels: per channel)."""
    if requant is not None and not isinstance(requant, (Thresholds, Rescale)):
        raise TypeError(f"{name} must be Thresholds, Rescale or None, got {type(requant).__name__}")
    n = (
        None
        if requant is None
        else (requant.thr if isinstance(requant, Thresholds) else requant.multiplier).shape[0]
    )
    if n is not None and n not in rows:
        what = "threshold rows" if isinstance(requant, Thresholds) else "rescale multipliers"
        raise ValueError(f"{name} has {n} {what}; allowed: {' or '.join(str(r) for r in sorted(set(rows)))}")


def check_acc(name, acc):
    if not isinstance(acc, Accumulator):
        raise TypeError(f"{name} must be an Accumulator, got {type(acc).__name__}")


def check_range(name, rng):
    if not isinstance(rng, CodeRange):
        raise TypeError(f"{name} must be a CodeRange, got {type(rng).__name__}")


def check_decode_table(name, table, rng, rows=None):
    """`table` decodes every code of `rng`: a DecodeTable of rng.n_codes columns starting at
    rng.qmin; rows=1 for activations (a per-tensor scale: backends read row 0 only)."""
    if not isinstance(table, DecodeTable):
        raise TypeError(f"{name} must be a DecodeTable, got {type(table).__name__}")
    T, n = table.lut.shape
    if n != rng.n_codes or table.qmin != rng.qmin:
        raise ValueError(
            f"{name} covers {n} codes from {table.qmin}; allowed: the {rng.n_codes} codes "
            f"{rng.qmin}..{rng.qmax} of its code range"
        )
    if rows is not None and T != rows:
        raise ValueError(
            f"{name} has {T} rows (per-channel activation scales); allowed: {rows} "
            "(only per-tensor activation formats are implemented)"
        )


def check_per_tensor(name, fmt):
    """Builders: activation formats must have a per-tensor scale (one decode row)."""
    if getattr(fmt, "granularity", "tensor") != "tensor":
        raise ValueError(
            f"{name}.granularity={fmt.granularity!r} is not implemented for activations; "
            "allowed: 'tensor' (one scale)"
        )


def check_ids(name, layer):
    """seed and tensor_id of a layer: 32-bit words of the rounding hash."""
    check_int(f"{name}.tensor_id", layer.tensor_id, 0, 2**32 - 1)
    check_int(f"{name}.seed", layer.seed, 0, 2**32 - 1)
    set_fields(layer, tensor_id=int(layer.tensor_id), seed=int(layer.seed))


def check_unit(name, unit, n=None):
    """A unit (real value of one accumulator LSB): a float, or with n given an (n,) array
    (one per output channel); finite and > 0. Returns it normalized (float or read-only)."""
    if isinstance(unit, (np.ndarray, list, tuple)) and np.ndim(unit) >= 1:
        u = frozen_float_array(name, unit)
        if n is None or u.shape != (n,):
            allowed = "a float" if n is None else f"a float or {n} values"
            raise ValueError(f"{name} has shape {u.shape}; allowed: {allowed}")
        return u
    return float(check_finite_positive(name, unit))


def check_meta(name, meta):
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"{name}.meta must be a dict or None, got {type(meta).__name__}")


def check_name(layer):
    check_str("layer name", layer.name)


# ---- pieces of golden_params (docs/GOLDEN.md) ------------------------------------------------


def requant_params(rq):
    """(datasets, info) describing a requantizer (or none) for hardware."""
    if rq is None:
        return {}, {"requant": "none"}
    if isinstance(rq, Thresholds):
        return (
            {"thresholds": rq.thr},
            {
                "requant": "thresholds",
                "out_qmin": int(rq.qmin),
                "out_qmax": int(rq.qmax),
                "threshold_rule": "code = out_qmin + #{j : acc >= thresholds[row, j]}, row = channel if one "
                "row per channel else 0",
            },
        )
    return (
        {"multiplier": rq.multiplier, "shift": rq.shift},
        {
            "requant": "rescale",
            "out_qmin": int(rq.qmin),
            "out_qmax": int(rq.qmax),
            "zero_point": int(rq.zero_point),
            "rescale_rounding": ROUNDING_NAMES[int(rq.rounding)],
            "rescale_rounding_id": int(rq.rounding),
            "mult_bits": int(rq.mult_bits),
            "rescale_rule": "code = clamp(round_shift(acc*multiplier[row], shift[row]) + zero_point, qmin, qmax)",
        },
    )


def range_info(r):
    return {
        "bits": int(r.bits),
        "signed": bool(r.signed),
        "qmin": int(r.qmin),
        "qmax": int(r.qmax),
        "kind": type(r).__name__,
    }


def acc_info(a):
    return {"acc_width": int(a.width), "overflow": a.overflow, "tile": int(a.tile)}


def unit_info(u):
    """A unit as JSON: one float, or a list (one per output channel)."""
    u = np.asarray(u, dtype=np.float64)
    return float(u) if u.ndim == 0 else [float(v) for v in u]


def table_info(prefix, t):
    return {f"{prefix}_frac_bits": int(t.frac_bits), f"{prefix}_unit": float(t.unit)}


# ---- geometry helpers ----------------------------------------------------------------------


def pair(name, v, lo=None):
    """(int, int) from an int or a pair of ints, each >= lo when given."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    try:
        v = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return tuple(check_int(name, x, lo, None) for x in v)


def window(o, stride, pad, dil, k):
    """Input coordinates of the k taps feeding output coordinate o (may lie in the padding)."""
    return [o * stride - pad + i * dil for i in range(k)]


def window_codes(x, b, c, rows, cols):
    """x[b, c, h, w] for the window's taps, None for taps in the padding."""
    H, W = x.shape[2:]
    return [[int(x[b, c, h, w]) if 0 <= h < H and 0 <= w < W else None for w in cols] for h in rows]


def maxabs(a):
    """max |a| over an integer array as an exact Python int (0 when empty). np.abs is not
    exact: np.abs(-2^63) is -2^63 in int64, which would pass every bound check."""
    a = np.asarray(a)
    return max(-int(a.min()), int(a.max())) if a.size else 0


def check_rank(name, shape, ndim, what):
    if len(shape) != ndim:
        raise ValueError(f"{name}: input must be {what}, got shape {tuple(shape)}")


# ---- the protocol ------------------------------------------------------------------------------


class Layer:
    """Defaults of the layer protocol (module doc); subclasses override what applies."""

    n_inputs = 1
    passthrough = False

    def stages(self):
        return OUT_STAGES

    def in_ranges(self):
        return (None,) * self.n_inputs

    def stage_range(self, stage, in_ranges):
        if stage != "out":
            raise ValueError(f"{self.name}: no stage {stage!r}; stages are {self.stages()}")
        return in_ranges[0] if self.passthrough else None

    def out_shape(self, in_shapes):
        return tuple(in_shapes[0])

    def stage_shapes(self, in_shapes):
        out = tuple(self.out_shape(in_shapes))
        return {s: out for s in self.stages()}

    def golden_params(self):
        return {}, {}

    def param_width(self, name):
        return None

    def feeding(self, multi, inputs, input_names):
        return {}

    def float_reference(self, inputs):
        return None, None


class AccLayer(Layer):
    """A layer with an accumulator `acc`, a requantizer `requant` (or None), `bound` (the
    analytic worst-case |exact sum| per channel), `unit`, `seed` and `tensor_id`."""

    def stages(self):
        return ACC_STAGES

    def stage_range(self, stage, in_ranges):
        if stage == "acc_exact":
            return None
        if stage == "acc" or (stage == "out" and self.requant is None):
            return None if self.acc.overflow == "exact" else (self.acc.lo, self.acc.hi)
        if stage == "out":
            return self.requant.qmin, self.requant.qmax
        raise ValueError(f"{self.name}: no stage {stage!r}; stages are {self.stages()}")

    def no_overflow_possible(self):
        """True when no accumulator (prefix, tile partial or total) can leave the range."""
        return int(np.asarray(self.bound).max(initial=0)) <= self.acc.hi

    def _acc_params(self):
        """golden_params common to every accumulating layer (requant datasets, settings)."""
        ds, info = requant_params(self.requant)
        info.update(
            unit=unit_info(self.unit),
            seed=int(self.seed),
            tensor_id=int(self.tensor_id),
            **acc_info(self.acc),
        )
        return ds, info


__all__ = [
    "Layer",
    "AccLayer",
    "Accumulator",
    "LAYER_TYPES",
    "register",
    "is_layer",
    "OVERFLOW_MODES",
    "INT64_LIMIT",
    "ACC_STAGES",
    "OUT_STAGES",
    "format_meta",
    "format_from_meta",
    "meta_format",
    "out_range",
    "build_requant",
    "check_requant",
    "check_acc",
    "check_range",
    "check_decode_table",
    "check_per_tensor",
    "check_ids",
    "check_unit",
    "check_meta",
    "check_name",
    "set_fields",
    "check_requant_input",
    "requant_params",
    "range_info",
    "acc_info",
    "unit_info",
    "table_info",
    "pair",
    "window",
    "window_codes",
    "check_rank",
    "maxabs",
]
