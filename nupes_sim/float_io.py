"""Float data in and out of a model file: the stored input format (float inputs -> codes)
and output unit (integer outputs -> real values), host float64 only.

A model file (format version 2, serialize.save_model) may carry
  input_format: JSON of the format that encodes the graph's real inputs into codes
                (layers.base.format_meta: power or uniform, per-tensor scale);
  output_unit:  JSON {"kind": "accumulator", "unit": u} (real output = value * u, u one
                float or one per channel of axis 1), or a power/uniform format of the
                output codes when the graph ends in a requantizer.
Both are host-side descriptions, like a layer's `meta`: they decide which codes float data
becomes and how outputs are shown, never a computed bit (the integers are the contract).
"""

import json

import numpy as np

from .formats import PowerFormat, UniformFormat

OUTPUT_KINDS = ("accumulator", "power", "uniform")


class FloatIOError(ValueError):
    """An input format / output unit that cannot be stored, read or applied."""


def _no_constant(c):
    raise ValueError(f"{c} is not allowed")


def input_format_json(fmt):
    """JSON text of an input format; only per-tensor formats encode a whole input tensor."""
    from .layers.base import format_meta

    if isinstance(fmt, PowerFormat) and fmt.granularity != "tensor":
        raise FloatIOError(
            f"input_format granularity {fmt.granularity!r} is not supported; allowed: 'tensor' "
            "(one scale for the whole input)"
        )
    if not isinstance(fmt, (PowerFormat, UniformFormat)):
        raise FloatIOError(f"input_format must be a PowerFormat or UniformFormat, got {type(fmt).__name__}")
    return json.dumps(format_meta(fmt), sort_keys=True)


def output_unit_json(spec):
    """JSON text of an output unit: a float or 1-D floats (accumulator unit), or a format."""
    from .layers.base import format_meta

    if isinstance(spec, (PowerFormat, UniformFormat)):
        input_format_json(spec)  # same restriction: one scale
        return json.dumps(format_meta(spec), sort_keys=True)
    u = np.asarray(spec, np.float64)
    if u.ndim > 1 or u.size == 0 or not np.isfinite(u).all() or (u <= 0).any():
        raise FloatIOError(f"output_unit must be a positive finite float or 1-D array of them, got {spec!r}")
    return json.dumps({"kind": "accumulator", "unit": u.tolist() if u.ndim else float(u)}, sort_keys=True)


def graph_output_unit(graph):
    """The output unit of a graph: the last layer's accumulator unit when it does not
    requantize, its output format (from meta) when it does, else None."""
    from .layers.base import format_from_meta

    layer = graph.nodes[-1].layer
    if getattr(layer, "requant", "absent") is None and getattr(layer, "unit", None) is not None:
        return layer.unit
    meta = getattr(layer, "meta", None) or {}
    if meta.get("out_format"):
        return format_from_meta(meta["out_format"])
    return None


def parse_input_format(text, where):
    from .layers.base import format_from_meta

    try:
        d = json.loads(text, parse_constant=_no_constant)
        if not isinstance(d, dict) or d.get("kind") not in ("power", "uniform"):
            raise ValueError("kind must be 'power' or 'uniform'")
        fmt = format_from_meta(d)
        input_format_json(fmt)
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise FloatIOError(
            f"{where} (input_format): not a valid input format ({type(e).__name__}: {e})"
        ) from None
    return fmt


def parse_output_unit(text, where):
    """A float/array (accumulator unit) or a format."""
    try:
        d = json.loads(text, parse_constant=_no_constant)
        if not isinstance(d, dict) or d.get("kind") not in OUTPUT_KINDS:
            raise ValueError(f"kind must be one of {OUTPUT_KINDS}")
        if d["kind"] == "accumulator":
            if set(d) != {"kind", "unit"}:
                raise ValueError(f"keys {sorted(d)}; expected ['kind', 'unit']")
            u = np.asarray(d["unit"], np.float64)
            output_unit_json(u)
            return u
        return parse_input_format(text, where)
    except FloatIOError as e:
        raise FloatIOError(str(e).replace("(input_format)", "(output_unit)")) from None
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise FloatIOError(
            f"{where} (output_unit): not a valid output unit ({type(e).__name__}: {e})"
        ) from None


def encode_inputs(fmt, x):
    """int64 codes of float inputs x (batch first), float64 host encoding."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise FloatIOError(f"float inputs must have a floating dtype, got {x.dtype}")
    if not np.isfinite(x).all():
        raise FloatIOError("float inputs hold NaN or infinity")
    return fmt.encode(x.astype(np.float64)).astype(np.int64)


def decode_outputs(spec, y):
    """float64 real values of integer outputs y (batch first; channels on axis 1)."""
    y = np.asarray(y)
    if isinstance(spec, (PowerFormat, UniformFormat)):
        return spec.decode_real(y)
    u = np.asarray(spec, np.float64)
    if u.ndim == 0 or u.size == 1:
        return y.astype(np.float64) * float(u.reshape(-1)[0])
    if y.ndim < 2 or y.shape[1] != u.size:
        raise FloatIOError(f"output_unit has {u.size} channels; the output has shape {y.shape}")
    return y.astype(np.float64) * u.reshape([1, -1] + [1] * (y.ndim - 2))


__all__ = [
    "FloatIOError",
    "input_format_json",
    "output_unit_json",
    "graph_output_unit",
    "parse_input_format",
    "parse_output_unit",
    "encode_inputs",
    "decode_outputs",
]
