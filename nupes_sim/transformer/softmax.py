"""Softmax with causal and padding masks (ARITHMETIC.md §12-§13)."""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange, UniformRange
from ..layers import AccLayer, Accumulator, format_meta, meta_format, range_info, register, set_fields
from ..rounding import DEFAULT, HOST_MODES, mode_id
from ..rounding import NAMES as ROUNDING_NAMES
from ..validate import check_int, frozen_int_array
from . import tables as T
from .common import I62, check_requant, check_rescale_input, read_only, requant_for, requant_out_range

STAGES = ("acc_exact", "acc", "prob", "out")


@register
@dataclass(frozen=True, eq=False)
class Softmax(AccLayer):
    """Softmax over the last axis of uniform-format score codes (..., Tq, Tk).

    Kept positions (mask, causal): d = q_max - q, e = exp_lut[d]; masked positions give e = 0
    and take no part in q_max. sum = Σ e (k ascending, in `acc`, which provably cannot
    overflow); p = round_div(e·2^P, sum, prob_rounding) (0 when sum = 0: a fully masked row);
    out = requant(p) with unit 2^-P. masked=True: a second input (B, Tk), nonzero = keep.

    Stages: acc_exact and acc (the row sums, shape (..., Tq)), prob (p) and out."""

    name: str
    x_range: CodeRange
    exp_lut: np.ndarray  # (2^b,) int64
    exp_frac_bits: int
    prob_bits: int
    acc: Accumulator
    max_len: int
    prob_rounding: int = 0
    requant: object = None
    causal: bool = False
    masked: bool = False
    tensor_id: int = 0
    seed: int = 0
    meta: dict = field(default=None, repr=False)
    bound: np.ndarray = field(init=False, repr=False)  # max_len·max(exp_lut) (derived)

    @property
    def n_inputs(self):
        return 2 if self.masked else 1

    @property
    def unit(self):
        """Real value of one LSB of the exponential sum (acc): 2^-exp_frac_bits."""
        return 2.0**-self.exp_frac_bits

    def __post_init__(self):
        if not isinstance(self.x_range, UniformRange):
            raise TypeError(f"{self.name}: softmax scores must be uniform-format codes")
        if not isinstance(self.acc, Accumulator):
            raise TypeError(f"{self.name}: acc must be an Accumulator")
        set_fields(self, exp_lut=frozen_int_array(f"{self.name}.exp_lut", self.exp_lut))
        if self.exp_lut.shape != (self.x_range.n_codes,):
            raise ValueError(
                f"{self.name}: exp_lut needs {self.x_range.n_codes} entries, got {self.exp_lut.shape}"
            )
        check_int(f"{self.name}.exp_frac_bits", self.exp_frac_bits, 0, 40)
        check_int(f"{self.name}.prob_bits", self.prob_bits, 0, 40)
        check_int(f"{self.name}.max_len", self.max_len, 1, None)
        check_int(f"{self.name}.prob_rounding", self.prob_rounding, 0, 6)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        check_requant(self.name, self.requant)
        if self.exp_lut.min() < 0:
            raise ValueError(f"{self.name}: exp_lut entries must be >= 0")
        emax = int(self.exp_lut.max())
        if int(self.exp_lut[0]) < 1:
            raise ValueError(
                f"{self.name}: exp_lut[0] (the row maximum) must be >= 1 so a kept row sums to >= 1"
            )
        if emax * self.max_len > self.acc.hi:
            raise ValueError(
                f"{self.name}: max_len·max(exp_lut) = {emax * self.max_len} exceeds the "
                f"{self.acc.width}-bit sum accumulator ({self.acc.hi}); the sum must provably fit"
            )
        if emax << self.prob_bits >= I62:
            raise ValueError(f"{self.name}: exp·2^prob_bits can reach {emax << self.prob_bits} >= 2^62")
        if self.prob_rounding == 6 and emax * self.max_len >= 2**31:
            raise ValueError(f"{self.name}: stochastic probability rounding needs sums < 2^31")
        check_rescale_input(self.name, self.requant, 1 << self.prob_bits)
        set_fields(self, bound=read_only(np.array([emax * self.max_len], np.int64)))  # <= acc.hi < 2^63

    @classmethod
    def build(
        cls,
        name,
        x_fmt,
        out_fmt=None,
        *,
        max_len,
        exp_frac_bits=15,
        prob_bits=15,
        acc=None,
        causal=False,
        masked=False,
        rounding=DEFAULT,
        prob_rounding=DEFAULT,
        requant_rounding=None,
        mult_bits=31,
        seed=0,
        tensor_id=0,
    ):
        acc = acc or Accumulator(32, "saturate")
        lut = T.exp_table(x_fmt, exp_frac_bits, rounding, seed, tensor_id)
        rq = requant_for(2.0**-prob_bits, out_fmt, 1 << prob_bits, requant_rounding or rounding, mult_bits)
        meta = {"x_format": format_meta(x_fmt), "out_format": format_meta(out_fmt)}
        return cls(
            name,
            x_fmt.range,
            lut,
            exp_frac_bits,
            prob_bits,
            acc,
            max_len,
            mode_id(prob_rounding, HOST_MODES),
            rq,
            causal,
            masked,
            tensor_id,
            seed,
            meta,
        )

    def no_overflow_possible(self):
        return True

    def keep_mask(self, x, mask=None):
        """Bool (..., Tq, Tk): the positions that take part (mask and causal rule)."""
        self.x_range.check_codes(f"{self.name} input", x)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: scores must be (..., Tq, Tk), got shape {x.shape}")
        tq, tk = x.shape[-2:]
        if tk > self.max_len:
            raise ValueError(f"{self.name}: row length {tk} exceeds max_len={self.max_len}")
        keep = np.ones(x.shape, bool)
        if self.masked:
            if mask is None:
                raise ValueError(f"{self.name}: masked=True needs a mask input (batch, {tk})")
            m = np.asarray(mask)
            if m.shape != (x.shape[0], tk) or m.dtype.kind not in "iub":
                raise ValueError(
                    f"{self.name}: mask must be integer/bool of shape {(x.shape[0], tk)}, "
                    f"got {m.dtype} {m.shape}"
                )
            keep &= (m != 0).reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (tk,))
        elif mask is not None:
            raise ValueError(f"{self.name}: got a mask input but masked=False")
        if self.causal:
            i = np.arange(tq)[:, None]
            j = np.arange(tk)[None, :]
            keep &= j <= i + (tk - tq)
        return keep

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def stages(self):
        return STAGES

    def in_ranges(self):
        return (self.x_range, None) if self.masked else (self.x_range,)

    def stage_range(self, stage, in_ranges):
        if stage == "acc_exact":
            return None
        if stage == "acc":
            return 0, int(self.bound[0])  # every kept row sums to >= 1, a masked row to 0
        p = (0, 1 << self.prob_bits)
        if stage == "prob":
            return p
        if stage == "out":
            return requant_out_range(self.requant, *p)
        raise ValueError(f"{self.name}: no stage {stage!r}; stages are {STAGES}")

    def out_shape(self, in_shapes):
        x = tuple(in_shapes[0])
        if len(x) < 2:
            raise ValueError(f"{self.name}: scores must be (..., Tq, Tk), got shape {x}")
        if x[-1] > self.max_len:
            raise ValueError(f"{self.name}: row length {x[-1]} exceeds max_len={self.max_len}")
        if self.masked and tuple(in_shapes[1]) != (x[0], x[-1]):
            raise ValueError(f"{self.name}: mask shape {tuple(in_shapes[1])}; expected {(x[0], x[-1])}")
        return x

    def stage_shapes(self, in_shapes):
        x = self.out_shape(in_shapes)
        return {"acc_exact": x[:-1], "acc": x[:-1], "prob": x, "out": x}

    def golden_params(self):
        ds, info = self._acc_params()
        ds["exp_lut"] = self.exp_lut
        info.update(
            x_range=range_info(self.x_range),
            exp_frac_bits=int(self.exp_frac_bits),
            prob_bits=int(self.prob_bits),
            max_len=int(self.max_len),
            prob_rounding=ROUNDING_NAMES[int(self.prob_rounding)],
            prob_rounding_id=int(self.prob_rounding),
            causal=bool(self.causal),
            masked=bool(self.masked),
            rule="kept: e = exp_lut[q_max - q], masked: e = 0; acc = sum e (k ascending); "
            "prob = round_div(e * 2^prob_bits, acc, prob_rounding) (0 if acc = 0); out = requant(prob); "
            "causal keeps j <= i + Tk - Tq",
        )
        return ds, info

    def feeding(self, multi, inputs, input_names):
        """The score row of the element (an element of prob/out, or a row of acc)."""
        x = inputs[0]
        row = tuple(multi[: x.ndim - 1])
        keep = self.keep_mask(x, inputs[1] if self.masked else None)[row]
        d = dict(input=input_names[0], row=list(row), scores=x[row].tolist(), kept=keep.astype(int).tolist())
        if self.masked:
            d["mask_from"] = input_names[1]
        return d

    def float_reference(self, inputs):
        """Σ_kept exp(x - x_max) in LSBs of acc (2^-exp_frac_bits), with the real score scale
        when meta has it, else the LUT (then only the integer sum is checked)."""
        x = np.asarray(inputs[0], np.int64)
        keep = self.keep_mask(x, inputs[1] if self.masked else None)
        qmax = np.where(keep, x, np.iinfo(np.int64).min).max(axis=-1, keepdims=True)
        d = np.where(keep, qmax - x, 0)
        f = meta_format(self, "x_format")
        if f is not None:
            e = np.exp(-float(f.scale) * d) * 2.0**self.exp_frac_bits
            kind = "real formats"
        else:
            e = self.exp_lut[d].astype(np.float64)
            kind = "LUT values x unit"
        return np.where(keep, e, 0.0).sum(axis=-1), kind


__all__ = ["Softmax"]
