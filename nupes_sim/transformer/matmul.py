"""MatMul of two activation tensors (ARITHMETIC.md §11): Q·Kᵀ and attention·V."""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange, UniformRange
from ..layers import (
    AccLayer,
    Accumulator,
    build_requant,
    format_meta,
    meta_format,
    range_info,
    register,
    set_fields,
)
from ..layers import table_info as _table_info
from ..rounding import DEFAULT
from ..tables import DecodeTable, ProductTable, decode_table, product_table
from ..validate import check_int
from . import tables as T
from .common import I62, I63, check_requant, check_rescale_input, maxabs, read_only

DATAPATHS = ("operand", "product")


@register
@dataclass(frozen=True, eq=False)
class MatMul(AccLayer):
    """out[..., m, n] = requant(Σ_k product(a[..., m, k], b[..., k, n])), k ascending, bias-free.

    transpose_b: b is given as (..., n, k) (Q·Kᵀ without a layout op). Operand datapath:
    product = a_table[qa]·b_table[qb]; product datapath (power formats): sign(qa)sign(qb)·
    p_table[index(|qa|, |qb|)]. k_max bounds the shared dimension (the int64 proof)."""

    name: str
    a_range: CodeRange
    b_range: CodeRange
    datapath: str
    acc: Accumulator
    k_max: int
    a_table: DecodeTable = None
    b_table: DecodeTable = None
    p_table: ProductTable = None
    requant: object = None
    unit: float = 1.0
    transpose_b: bool = False
    tensor_id: int = 0
    seed: int = 0
    meta: dict = field(default=None, repr=False)
    bound: np.ndarray = field(init=False, repr=False)  # k_max·max|product| (derived)
    max_product: int = field(init=False, repr=False)
    n_inputs = 2

    def __post_init__(self):
        if self.datapath not in DATAPATHS:
            raise ValueError(f"{self.name}: datapath={self.datapath!r}; choose one of {list(DATAPATHS)}")
        if not isinstance(self.acc, Accumulator):
            raise TypeError(f"{self.name}: acc must be an Accumulator")
        check_int(f"{self.name}.k_max", self.k_max, 1, None)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        check_requant(self.name, self.requant)
        if self.datapath == "operand":
            if self.a_table is None or self.b_table is None:
                raise ValueError(f"{self.name}: the operand datapath needs a_table and b_table")
            for t, r, n in ((self.a_table, self.a_range, "a"), (self.b_table, self.b_range, "b")):
                if t.lut.shape != (1, r.n_codes):
                    raise ValueError(f"{self.name}: {n}_table must be (1, {r.n_codes}), got {t.lut.shape}")
            top = maxabs(self.a_table.lut) * maxabs(self.b_table.lut)
        else:
            if self.p_table is None or self.p_table.lut.shape[0] != 1:
                raise ValueError(f"{self.name}: the product datapath needs a one-row p_table")
            if isinstance(self.a_range, UniformRange) or isinstance(self.b_range, UniformRange):
                bad = "a" if isinstance(self.a_range, UniformRange) else "b"
                raise ValueError(
                    f"{self.name}: the product datapath needs power-format codes; {bad}_range is a "
                    "UniformRange (allowed: power code ranges, symmetric or full range)"
                )
            ma, mb = self.a_range.max_magnitude, self.b_range.max_magnitude
            need = self.p_table.index(ma, mb) + 1  # the largest index the codes can form, + 1
            if self.p_table.lut.shape[1] < need or self.p_table.mx < mb:
                raise ValueError(
                    f"{self.name}: p_table has {self.p_table.lut.shape[1]} entries; needs {need}"
                )
            top = maxabs(self.p_table.lut)
        if top >= I62:
            raise ValueError(
                f"{self.name}: a single product can reach {top} >= 2^62; lower the fractional bits"
            )
        bound = top * self.k_max
        if bound >= I63:
            raise ValueError(
                f"{self.name}: k_max·max|product| = {bound} does not fit int64; lower k_max or the "
                "fractional bits"
            )
        set_fields(self, bound=read_only(np.array([bound], np.int64)), max_product=top)
        limit = bound if self.acc.overflow == "exact" else min(bound, 2 ** (self.acc.width - 1))
        check_rescale_input(self.name, self.requant, limit)

    @classmethod
    def build(
        cls,
        name,
        a_fmt,
        b_fmt,
        *,
        k_max,
        datapath="operand",
        a_frac_bits=12,
        b_frac_bits=12,
        product_frac_bits=16,
        acc=None,
        out_fmt=None,
        alpha=1.0,
        transpose_b=False,
        rounding=DEFAULT,
        requant_rounding=None,
        mult_bits=31,
        seed=0,
        tensor_id=0,
    ):
        """alpha > 0 is a real factor folded into the requantization (e.g. 1/sqrt(d_head))."""
        acc = acc or Accumulator()
        T.check_format("a_fmt", a_fmt)
        T.check_format("b_fmt", b_fmt)
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"{name}: alpha={alpha!r} must be finite and > 0")
        if datapath == "operand":
            at = decode_table(a_fmt, a_frac_bits, rounding, seed, tensor_id)
            bt = decode_table(b_fmt, b_frac_bits, rounding, seed, tensor_id + 1)
            tabs, unit = dict(a_table=at, b_table=bt), at.unit * bt.unit
        elif datapath == "product":
            pt = product_table(a_fmt, b_fmt, product_frac_bits, rounding, seed, tensor_id)
            tabs, unit = dict(p_table=pt), pt.unit * float(pt.channel_factor[0])
        else:
            raise ValueError(f"{name}: datapath={datapath!r}; choose one of {list(DATAPATHS)}")
        rq = build_requant(unit * alpha, out_fmt, acc, requant_rounding or rounding, False, None, mult_bits)
        meta = {
            "a_format": format_meta(a_fmt),
            "b_format": format_meta(b_fmt),
            "out_format": format_meta(out_fmt),
            "alpha": float(alpha),
        }
        return cls(
            name,
            a_fmt.range,
            b_fmt.range,
            datapath,
            acc,
            k_max,
            requant=rq,
            unit=unit * alpha,
            transpose_b=transpose_b,
            tensor_id=tensor_id,
            seed=seed,
            meta=meta,
            **tabs,
        )

    def no_overflow_possible(self):
        return int(self.bound[0]) <= self.acc.hi

    def check_inputs(self, a, b):
        """Codes and shapes; returns b in (..., k, n) layout and K."""
        self.a_range.check_codes(f"{self.name} input a", a)
        self.b_range.check_codes(f"{self.name} input b", b)
        self._check_shapes(a.shape, b.shape)
        bk = np.swapaxes(b, -1, -2) if self.transpose_b else b
        return bk, a.shape[-1]

    def _check_shapes(self, a, b):
        """Output shape (..., M, N) of inputs of shapes a and b, or ValueError."""
        a, b = tuple(a), tuple(b)
        if len(a) < 2 or len(a) != len(b):
            raise ValueError(f"{self.name}: inputs must have the same rank >= 2, got {a} and {b}")
        bk = b[:-2] + (b[-1], b[-2]) if self.transpose_b else b
        if a[:-2] != bk[:-2] or a[-1] != bk[-2]:
            raise ValueError(
                f"{self.name}: shapes {a} and {b} do not multiply (transpose_b={self.transpose_b})"
            )
        if a[-1] > self.k_max:
            raise ValueError(f"{self.name}: shared dimension {a[-1]} exceeds k_max={self.k_max}")
        return a[:-1] + (bk[-1],)

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def in_ranges(self):
        return (self.a_range, self.b_range)

    def out_shape(self, in_shapes):
        return self._check_shapes(*in_shapes)

    def golden_params(self):
        ds, info = self._acc_params()
        info.update(
            datapath=self.datapath,
            a_range=range_info(self.a_range),
            b_range=range_info(self.b_range),
            k_max=int(self.k_max),
            transpose_b=bool(self.transpose_b),
            bound_max=int(self.bound[0]),
            rule="acc[..., m, n] = sum_k product(a[..., m, k], b[..., k, n]) (b[..., n, k] if transpose_b), "
            "k ascending, no bias",
        )
        if self.datapath == "operand":
            ds["a_lut"], ds["b_lut"] = self.a_table.lut, self.b_table.lut
            info.update(_table_info("a_lut", self.a_table), **_table_info("b_lut", self.b_table))
        else:
            pt = self.p_table
            ds["p_lut"] = pt.lut
            info.update(_table_info("p_lut", pt), p_lut_by_product=bool(pt.by_product), p_lut_mx=int(pt.mx))
        return ds, info

    def feeding(self, multi, inputs, input_names):
        a, b = inputs
        lead, m, n = tuple(multi[:-2]), int(multi[-2]), int(multi[-1])
        bcol = b[lead + (n,)] if self.transpose_b else b[lead + (slice(None), n)]
        return dict(
            a_from=input_names[0], b_from=input_names[1], a_row=a[lead + (m,)].tolist(), b_col=bcol.tolist()
        )

    def float_reference(self, inputs):
        """Σ_k a·b in float64 in accumulator LSBs: the real formats' values (times alpha) when
        meta has them, else the LUT products (exact up to float64 rounding of the sum)."""
        a, b = (np.asarray(v, np.int64) for v in inputs)
        bk = np.swapaxes(b, -1, -2) if self.transpose_b else b
        af, bf = meta_format(self, "a_format"), meta_format(self, "b_format")
        if af is not None and bf is not None:
            alpha = float((self.meta or {}).get("alpha", 1.0))
            return alpha * (af.decode_real(a) @ bf.decode_real(bk)) / self.unit, "real formats"
        if self.datapath == "operand":
            av = self.a_table.lut[0, a - self.a_range.qmin].astype(np.float64)
            bv = self.b_table.lut[0, bk - self.b_range.qmin].astype(np.float64)
            return av @ bv, "LUT values x unit"
        pt = self.p_table
        qa, qb = a[..., :, :, None], bk[..., None, :, :]
        idx = pt.index(np.abs(qa), np.abs(qb))
        p = (np.sign(qa) * np.sign(qb)).astype(np.float64) * pt.lut[0, idx]
        return p.sum(axis=-2), "LUT values x unit"


__all__ = ["MatMul", "DATAPATHS"]
