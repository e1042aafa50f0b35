"""Table-lookup layers: Embedding (ARITHMETIC.md §10) and element-wise code->code tables (§15)."""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange
from ..layers import Layer, format_meta, range_info, register, set_fields
from ..rounding import DEFAULT
from ..validate import frozen_int_array
from . import tables as T
from .common import IndexRange


@register
@dataclass(frozen=True, eq=False)
class Embedding(Layer):
    """out[..., c] = codes[index, c]: index = the token id (positional=False) or the position
    along the last input axis (positional=True, input values ignored). Lookup is exact."""

    name: str
    codes: np.ndarray  # (V, C) codes in out_range
    out_range: CodeRange
    positional: bool = False
    meta: dict = field(default=None, repr=False)
    n_inputs = 1

    def __post_init__(self):
        codes = np.asarray(self.codes)
        if codes.ndim != 2 or codes.shape[0] < 1:
            raise ValueError(f"{self.name}: the embedding table must be (vocab, channels), got {codes.shape}")
        self.out_range.check_codes(f"{self.name}.codes", codes)
        set_fields(self, codes=frozen_int_array(f"{self.name}.codes", codes))

    @classmethod
    def build(cls, name, weight, fmt, rounding=DEFAULT, positional=False, seed=0, tensor_id=0):
        T.check_format("fmt", fmt)
        w = np.asarray(weight, np.float64)
        codes = fmt.encode(w, rounding, seed, tensor_id).astype(np.int64)
        return cls(name, codes, fmt.range, positional, {"out_format": format_meta(fmt), "rounding": rounding})

    def check_input(self, idx):
        """Validated int64 indices (...,) with the error naming the first bad position."""
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: token indices must be integers, got dtype {idx.dtype}")
        if idx.ndim < 1:
            raise ValueError(f"{self.name}: token indices need at least one axis")
        V = self.codes.shape[0]
        if self.positional:
            if idx.shape[-1] > V:
                raise ValueError(f"{self.name}: sequence length {idx.shape[-1]} exceeds the {V} positions")
            return np.broadcast_to(np.arange(idx.shape[-1], dtype=np.int64), idx.shape)
        bad = (idx < 0) | (idx >= V)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{self.name}: token index {int(idx[pos])} at position {pos} is outside [0, {V - 1}]"
            )
        return idx.astype(np.int64)

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def in_ranges(self):
        return (None,) if self.positional else (IndexRange(self.codes.shape[0]),)

    def stage_range(self, stage, in_ranges):
        super().stage_range(stage, in_ranges)
        return self.out_range.qmin, self.out_range.qmax

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        if not s:
            raise ValueError(f"{self.name}: token indices need at least one axis")
        if self.positional and s[-1] > self.codes.shape[0]:
            raise ValueError(
                f"{self.name}: sequence length {s[-1]} exceeds the {self.codes.shape[0]} positions"
            )
        return s + (self.codes.shape[1],)

    def golden_params(self):
        return {"codes": self.codes}, {
            "out_range": range_info(self.out_range),
            "vocab": int(self.codes.shape[0]),
            "channels": int(self.codes.shape[1]),
            "positional": bool(self.positional),
            "rule": "out[..., c] = codes[index, c]; index = token id, or its position if positional",
        }

    def param_width(self, name):
        return (int(self.out_range.bits), bool(self.out_range.signed)) if name == "codes" else None

    def feeding(self, multi, inputs, input_names):
        pos, c = tuple(multi[:-1]), int(multi[-1])
        index = pos[-1] if self.positional else int(inputs[0][pos])
        return dict(
            input=input_names[0], position=list(pos), index=int(index), code=int(self.codes[index, c])
        )


@register
@dataclass(frozen=True, eq=False)
class ElementwiseTable(Layer):
    """out = table[q - in_qmin]: a code->code table built on the host (exact by construction)."""

    name: str
    in_range: CodeRange
    out_range: CodeRange
    table: np.ndarray  # (n_in,) output codes
    meta: dict = field(default=None, repr=False)
    n_inputs = 1

    def __post_init__(self):
        table = np.asarray(self.table)
        if table.shape != (self.in_range.n_codes,):
            raise ValueError(
                f"{self.name}: the table needs {self.in_range.n_codes} entries (one per input "
                f"code), got shape {table.shape}"
            )
        self.out_range.check_codes(f"{self.name}.table", table)
        set_fields(self, table=frozen_int_array(f"{self.name}.table", table))

    @classmethod
    def build(cls, name, in_fmt, out_fmt, function, rounding=DEFAULT, seed=0, tensor_id=0):
        fname, _ = T.resolve_function(function)
        table = T.elementwise_table(in_fmt, out_fmt, function, rounding, seed, tensor_id)
        meta = {
            "in_format": format_meta(in_fmt),
            "out_format": format_meta(out_fmt),
            "function": fname,
            "rounding": rounding,
        }
        return cls(name, in_fmt.range, out_fmt.range, table, meta)

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def in_ranges(self):
        return (self.in_range,)

    def stage_range(self, stage, in_ranges):
        super().stage_range(stage, in_ranges)
        return self.out_range.qmin, self.out_range.qmax

    def golden_params(self):
        return {"table": self.table}, {
            "in_range": range_info(self.in_range),
            "out_range": range_info(self.out_range),
            "function": (self.meta or {}).get("function"),
            "rule": "out = table[q - in_range.qmin]",
        }

    def param_width(self, name):
        return (int(self.out_range.bits), bool(self.out_range.signed)) if name == "table" else None

    def feeding(self, multi, inputs, input_names):
        q = int(inputs[0][tuple(multi)])
        return dict(input=input_names[0], input_code=q, table_index=q - self.in_range.qmin)


__all__ = ["Embedding", "ElementwiseTable"]
