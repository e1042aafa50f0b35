"""Element-wise layers: the residual Add (docs/ARITHMETIC.md §8)."""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange, UniformFormat
from ..rounding import DEFAULT
from ..tables import DecodeTable, decode_table
from .base import (
    AccLayer,
    Accumulator,
    build_requant,
    check_acc,
    check_decode_table,
    check_ids,
    check_meta,
    check_name,
    check_per_tensor,
    check_range,
    check_requant,
    check_requant_input,
    check_unit,
    format_meta,
    maxabs,
    meta_format,
    range_info,
    register,
    set_fields,
    table_info,
)


@register
@dataclass(frozen=True, eq=False)
class Add(AccLayer):
    """Residual add: a_table[qa] + b_table[qb] on a common fixed-point grid, then requant."""

    n_inputs = 2

    name: str
    a_range: CodeRange
    b_range: CodeRange
    a_table: DecodeTable
    b_table: DecodeTable
    acc: Accumulator
    requant: object = None
    unit: float = 1.0
    tensor_id: int = 0
    seed: int = 0
    meta: dict = field(default=None, repr=False)  # host-only description, see MacLayer.meta

    def __post_init__(self):
        check_name(self)
        n = self.name
        check_acc(f"{n}.acc", self.acc)
        check_meta(n, self.meta)
        for which in ("a", "b"):
            rng = getattr(self, f"{which}_range")
            check_range(f"{n}.{which}_range", rng)
            check_decode_table(f"{n}.{which}_table", getattr(self, f"{which}_table"), rng, rows=1)
        check_requant(self.requant, f"{n}.requant", (1,))
        check_ids(n, self)
        set_fields(self, unit=check_unit(f"{n}.unit", self.unit))
        if self.a_table.unit != self.b_table.unit:
            raise ValueError(
                f"{n}: the two inputs must decode to the same grid "
                f"(units {self.a_table.unit} and {self.b_table.unit})"
            )
        worst = maxabs(self.a_table.lut) + maxabs(self.b_table.lut)
        if worst >= 2**62:
            raise ValueError(f"{n}: decoded values too large (>= 2^62)")
        bound = np.array([worst], np.int64)
        bound.setflags(write=False)
        set_fields(self, bound=bound)
        check_requant_input(n, self.requant, self.acc, worst)

    @classmethod
    def build(
        cls,
        name,
        a_fmt,
        b_fmt,
        frac_bits=12,
        acc=None,
        out_fmt=None,
        relu=False,
        clip_max=None,
        rounding=DEFAULT,
        requant_rounding=None,
        mult_bits=31,
        seed=0,
        tensor_id=0,
    ):
        acc = acc or Accumulator()
        check_per_tensor(f"{name}: a_fmt", a_fmt)
        check_per_tensor(f"{name}: b_fmt", b_fmt)
        at = decode_table(a_fmt, frac_bits, rounding, seed, tensor_id)
        bt = decode_table(b_fmt, frac_bits, rounding, seed, tensor_id + 1)
        if isinstance(a_fmt, UniformFormat) or isinstance(b_fmt, UniformFormat):
            raise TypeError("residual add aligns power-format inputs; both must be PowerFormat")
        rq = build_requant(at.unit, out_fmt, acc, requant_rounding or rounding, relu, clip_max, mult_bits)
        meta = {
            "a_format": format_meta(a_fmt),
            "b_format": format_meta(b_fmt),
            "out_format": format_meta(out_fmt),
            "relu": bool(relu),
            "clip_max": None if clip_max is None else float(clip_max),
        }
        return cls(name, a_fmt.range, b_fmt.range, at, bt, acc, rq, at.unit, tensor_id, seed, meta)

    # ---- layer protocol (base.py) ----

    def in_ranges(self):
        return (self.a_range, self.b_range)

    def out_shape(self, in_shapes):
        a, b = (tuple(s) for s in in_shapes)
        if a != b:
            raise ValueError(f"{self.name}: input shapes differ: {a} and {b}")
        return a

    def golden_params(self):
        ds, info = self._acc_params()
        ds["a_lut"], ds["b_lut"] = self.a_table.lut, self.b_table.lut
        info.update(
            a_range=range_info(self.a_range),
            b_range=range_info(self.b_range),
            **table_info("a_lut", self.a_table),
            **table_info("b_lut", self.b_table),
        )
        return ds, info

    def feeding(self, multi, inputs, input_names):
        return dict(
            a=int(inputs[0][multi]), b=int(inputs[1][multi]), a_from=input_names[0], b_from=input_names[1]
        )

    def float_reference(self, inputs):
        a, ra = _decode(self, "a_format", self.a_table, self.a_range, inputs[0])
        b, rb = _decode(self, "b_format", self.b_table, self.b_range, inputs[1])
        return (a + b) / self.unit, "real formats" if ra and rb else "LUT values x unit"


def _decode(layer, fmt_key, table, rng, codes):
    """(float64 values of codes, True if decoded with the real format rather than the LUT)."""
    f = meta_format(layer, fmt_key)
    if f is not None:
        return f.decode_real(codes), True
    return table.lut[0, codes.astype(np.int64) - rng.qmin].astype(np.float64) * table.unit, False


__all__ = ["Add"]
