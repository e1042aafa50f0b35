"""Real-valued formats in a layer's `meta` (host only): the JSON description written to model
files and its inverse, used for float references and decoded I/O; the integer layer itself is
defined by its tables alone."""

import numpy as np

from ..formats import CodebookFormat, PowerFormat, UniformFormat, UniformWeightFormat


def format_meta(fmt):
    """JSON-able description of a real-valued format (None stays None); see `meta` on layers."""
    if fmt is None:
        return None
    if isinstance(fmt, PowerFormat):
        return {
            "kind": "power",
            "bits": int(fmt.bits),
            "signed": bool(fmt.signed),
            "exponent": float(fmt.exponent),
            "scale": np.asarray(fmt.scale, np.float64).tolist(),
            "scale_shape": list(fmt.scale.shape),
            "granularity": fmt.granularity,
            "group_size": int(fmt.group_size),
            **({"full_range": True} if fmt.full_range else {}),  # absent: meta (and hash) as before
        }
    if isinstance(fmt, CodebookFormat):
        return {
            "kind": "codebook",
            "bits": int(fmt.bits),
            "values": fmt.values.tolist(),
            "granularity": fmt.granularity,
            "group_size": int(fmt.group_size),
        }
    if isinstance(fmt, UniformWeightFormat):
        return {
            "kind": "uniform_weight",
            "bits": int(fmt.bits),
            "signed": bool(fmt.signed),
            "scale": fmt.scale.tolist(),
            "zero_point": fmt.zero_point.tolist(),
            "granularity": fmt.granularity,
        }
    if isinstance(fmt, UniformFormat):
        return {
            "kind": "uniform",
            "bits": int(fmt.bits),
            "signed": bool(fmt.signed),
            "scale": float(fmt.scale),
            "zero_point": int(fmt.zero_point),
        }
    raise TypeError(f"unknown format type {type(fmt).__name__}")


def format_from_meta(d):
    """Inverse of format_meta."""
    if d is None:
        return None
    if d["kind"] == "power":
        scale = np.asarray(d["scale"], np.float64).reshape(d["scale_shape"])
        return PowerFormat(
            d["bits"],
            d["signed"],
            d["exponent"],
            scale,
            d["granularity"],
            d["group_size"],
            d.get("full_range", False),
        )
    if d["kind"] == "codebook":
        return CodebookFormat(
            d["bits"], np.asarray(d["values"], np.float64), d["granularity"], d["group_size"]
        )
    if d["kind"] == "uniform_weight":
        zp = np.asarray(d["zero_point"], np.int64)
        return UniformWeightFormat(
            d["bits"], d["signed"], np.asarray(d["scale"], np.float64), zp, d["granularity"]
        )
    return UniformFormat(d["bits"], d["signed"], d["scale"], d["zero_point"])


def meta_format(layer, key):
    """The real format stored under `key` of layer.meta, or None."""
    meta = getattr(layer, "meta", None) or {}
    return format_from_meta(meta.get(key)) if meta.get(key) else None
