"""The builders of the MAC layers (`Linear.build`, `Conv2d.build`): integer tables from
real formats (tables.py), bias, requantizer and the host-only `meta`; the layer's
constructor then validates the result like any other."""

import numpy as np

from ..formats import UniformWeightFormat
from ..rounding import DEFAULT
from ..tables import bias_table, decode_table, product_table
from ..validate import check_choice
from .base import Accumulator, build_requant, check_per_tensor, format_meta

DATAPATHS = ("operand", "product")


def _tables_for(
    w_fmt, x_fmt, datapath, w_frac_bits, x_frac_bits, product_frac_bits, rounding, seed, tensor_id
):
    if datapath == "operand":
        wt = decode_table(w_fmt, w_frac_bits, rounding, seed, tensor_id)
        xt = decode_table(x_fmt, x_frac_bits, rounding, seed, tensor_id + 1)
        if isinstance(w_fmt, UniformWeightFormat):  # unit[o] = fl(s_w[o]·2^-F_w·u_x) (§2)
            u = wt.unit * xt.unit * w_fmt.scale
            return dict(w_table=wt, x_table=xt), (float(u[0]) if w_fmt.granularity == "tensor" else u)
        return dict(w_table=wt, x_table=xt), wt.unit * xt.unit
    pt = product_table(w_fmt, x_fmt, product_frac_bits, rounding, seed, tensor_id)
    if pt.channel_factor is None:
        return dict(p_table=pt), pt.unit
    unit = pt.unit * pt.channel_factor  # per-channel LSB (ProductTable docstring)
    return dict(p_table=pt), (float(unit[0]) if w_fmt.granularity == "tensor" else unit)


def _build(
    cls,
    name,
    w_codes,
    w_fmt,
    x_fmt,
    *,
    datapath="operand",
    w_frac_bits=12,
    x_frac_bits=8,
    product_frac_bits=16,
    bias=None,
    acc=None,
    out_fmt=None,
    relu=False,
    clip_max=None,
    rounding=DEFAULT,
    requant_rounding=None,
    mult_bits=31,
    seed=0,
    tensor_id=0,
    **extra,
):
    acc = acc or Accumulator()
    check_choice("datapath", datapath, DATAPATHS)
    check_per_tensor(f"{name}: x_fmt", x_fmt)
    w_codes = np.asarray(w_codes)
    tables, unit = _tables_for(
        w_fmt, x_fmt, datapath, w_frac_bits, x_frac_bits, product_frac_bits, rounding, seed, tensor_id
    )
    idx = w_fmt.scale_index(w_codes.shape)
    if "p_table" in tables and tables["p_table"].channel_factor is not None:
        idx = np.zeros_like(idx)  # one shared product table; the scale lives in `unit`
    b = None if bias is None else bias_table(bias, unit, acc.width, rounding, seed, tensor_id + 2)
    rq = build_requant(unit, out_fmt, acc, requant_rounding or rounding, relu, clip_max, mult_bits)
    meta = {
        "w_format": format_meta(w_fmt),
        "x_format": format_meta(x_fmt),
        "out_format": format_meta(out_fmt),
        "bias_real": None if bias is None else np.asarray(bias, np.float64).reshape(-1).tolist(),
        "relu": bool(relu),
        "clip_max": None if clip_max is None else float(clip_max),
    }
    return cls(
        name=name,
        w_codes=w_codes,
        w_range=w_fmt.range,
        x_range=x_fmt.range,
        datapath=datapath,
        w_table_index=idx,
        acc=acc,
        bias=b,
        requant=rq,
        unit=unit,
        tensor_id=tensor_id,
        seed=seed,
        meta=meta,
        **tables,
        **extra,
    )
