"""LayerNorm over the last axis, integers only (ARITHMETIC.md §14)."""

import math
from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange
from ..layers import (
    Layer,
    format_meta,
    range_info,
    register,
    requant_params,
    set_fields,
    table_info,
    unit_info,
)
from ..rounding import DEFAULT, HOST_MODES, mode_id
from ..rounding import NAMES as ROUNDING_NAMES
from ..tables import DecodeTable, decode_table
from ..validate import check_int, frozen_int_array
from . import tables as T
from .common import I62, check_requant, check_rescale_input, maxabs, requant_for, requant_out_range

STAGES = ("mean", "inv", "y", "out")


@register
@dataclass(frozen=True, eq=False)
class LayerNorm(Layer):
    """LayerNorm over the last axis of C channels, integers only (ARITHMETIC.md §14).

    X = x_table[q]; S = ΣX; μ = round_div(S, C, mean_rounding); D = X - μ; V = ΣD²;
    inv = isqrt(floor(C·2^(2R) / (V + C·eps_int))); Z = D·inv (unit 2^-R);
    Y = Z·gamma[c] + beta[c] (unit 2^-(R+Fg)); out = requant(Y).

    Stages: mean and inv (one per row, shape (...,)), y and out (shape (..., C))."""

    name: str
    x_range: CodeRange
    x_table: DecodeTable
    channels: int
    eps_int: int
    inv_frac_bits: int
    gamma_frac_bits: int
    gamma: np.ndarray
    beta: np.ndarray
    mean_rounding: int = 0
    requant: object = None
    unit: float = 1.0  # real value of one LSB of Y (host only)
    tensor_id: int = 0
    seed: int = 0
    meta: dict = field(default=None, repr=False)
    x_max: int = field(init=False, repr=False)  # max |x_table| (derived)
    y_bound: int = field(init=False, repr=False)  # max |Y| (derived)
    n_inputs = 1

    def __post_init__(self):
        C = check_int(f"{self.name}.channels", self.channels, 1, None)
        check_int(f"{self.name}.eps_int", self.eps_int, 1, None)
        R = check_int(f"{self.name}.inv_frac_bits", self.inv_frac_bits, 0, 62)
        check_int(f"{self.name}.gamma_frac_bits", self.gamma_frac_bits, 0, 40)
        check_int(f"{self.name}.mean_rounding", self.mean_rounding, 0, 6)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        check_requant(self.name, self.requant)
        set_fields(
            self,
            gamma=frozen_int_array(f"{self.name}.gamma", np.asarray(self.gamma).reshape(-1)),
            beta=frozen_int_array(f"{self.name}.beta", np.asarray(self.beta).reshape(-1)),
        )
        if self.gamma.shape != (C,) or self.beta.shape != (C,):
            raise ValueError(f"{self.name}: gamma and beta need {C} entries")
        if self.x_table.lut.shape != (1, self.x_range.n_codes):
            raise ValueError(f"{self.name}: x_table must be (1, {self.x_range.n_codes})")
        # every intermediate, in Python integers (ARITHMETIC.md §14 table of widths)
        xm = maxabs(self.x_table.lut)
        widths = {
            "S = ΣX": C * xm,
            "V = ΣD²": C * (2 * xm) ** 2,
            "V + C·eps_int": C * (2 * xm) ** 2 + C * self.eps_int,
            "C·2^(2R)": C << (2 * R),
        }
        zmax = isqrt_ceil(C) << R  # |Z| <= sqrt(C)·2^R
        widths["Y = Z·G + B"] = zmax * maxabs(self.gamma) + maxabs(self.beta)
        for what, v in widths.items():
            if v >= I62:
                raise ValueError(
                    f"{self.name}: intermediate {what} can reach {v} >= 2^62; lower the decode "
                    "fractional bits, inv_frac_bits or gamma_frac_bits"
                )
        if self.mean_rounding == 6 and C >= 2**31:
            raise ValueError(f"{self.name}: stochastic mean rounding needs C < 2^31")
        set_fields(self, x_max=xm, y_bound=widths["Y = Z·G + B"])
        check_rescale_input(self.name, self.requant, self.y_bound)

    @classmethod
    def build(
        cls,
        name,
        x_fmt,
        out_fmt=None,
        *,
        channels,
        gamma=None,
        beta=None,
        eps=1e-5,
        x_frac_bits=None,
        x_lut_bits=16,
        inv_frac_bits=None,
        gamma_bits=16,
        rounding=DEFAULT,
        mean_rounding=DEFAULT,
        requant_rounding=None,
        mult_bits=31,
        seed=0,
        tensor_id=0,
    ):
        """x_frac_bits None: chosen so the largest decoded value has x_lut_bits magnitude bits;
        inv_frac_bits None: the largest R with C·2^(2R) < 2^62; gamma_frac_bits from gamma_bits."""
        T.check_format("x_fmt", x_fmt)
        C = check_int(f"{name}.channels", channels, 1, None)
        if x_frac_bits is None:
            xmax = float(np.abs(x_fmt.decode_real(x_fmt.range.all_codes())).max())
            x_frac_bits = T.frac_bits_for(xmax, x_lut_bits)
        xt = decode_table(x_fmt, x_frac_bits, rounding, seed, tensor_id)
        if inv_frac_bits is None:
            inv_frac_bits = (61 - C.bit_length()) // 2
        g = np.ones(C) if gamma is None else np.asarray(gamma, np.float64).reshape(-1)
        Fg = T.frac_bits_for(float(np.abs(g).max(initial=0)), gamma_bits)
        G, B = T.layernorm_tables(gamma, beta, C, inv_frac_bits, Fg, rounding, seed, tensor_id + 1)
        E = T.eps_table(float(eps), xt.unit, rounding)
        unit = 2.0 ** -(inv_frac_bits + Fg)
        ybound = (isqrt_ceil(C) << inv_frac_bits) * maxabs(G) + maxabs(B)
        rq = requant_for(unit, out_fmt, ybound, requant_rounding or rounding, mult_bits)
        meta = {
            "x_format": format_meta(x_fmt),
            "out_format": format_meta(out_fmt),
            "eps": float(eps),
            "gamma_real": g.tolist(),
            "beta_real": (np.zeros(C) if beta is None else np.asarray(beta, np.float64).reshape(-1)).tolist(),
        }
        return cls(
            name,
            x_fmt.range,
            xt,
            C,
            E,
            inv_frac_bits,
            Fg,
            G,
            B,
            mode_id(mean_rounding, HOST_MODES),
            rq,
            unit,
            tensor_id,
            seed,
            meta,
        )

    def check_input(self, x):
        self.x_range.check_codes(f"{self.name} input", x)
        if x.ndim < 1 or x.shape[-1] != self.channels:
            raise ValueError(f"{self.name}: input shape {x.shape}; expected (..., {self.channels})")

    def inv_max(self):
        """The largest inv: the row variance V = 0 gives isqrt(floor(2^(2R) / eps_int))."""
        return math.isqrt((self.channels << (2 * self.inv_frac_bits)) // (self.channels * self.eps_int))

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def stages(self):
        return STAGES

    def in_ranges(self):
        return (self.x_range,)

    def stage_range(self, stage, in_ranges):
        if stage == "mean":  # a rounded mean of values in [-x_max, x_max]
            return -self.x_max, self.x_max
        if stage == "inv":
            return 0, self.inv_max()
        if stage == "y":
            return -self.y_bound, self.y_bound
        if stage == "out":
            return requant_out_range(self.requant, -self.y_bound, self.y_bound)
        raise ValueError(f"{self.name}: no stage {stage!r}; stages are {STAGES}")

    def out_shape(self, in_shapes):
        x = tuple(in_shapes[0])
        if not x or x[-1] != self.channels:
            raise ValueError(f"{self.name}: input shape {x}; expected (..., {self.channels})")
        return x

    def stage_shapes(self, in_shapes):
        x = self.out_shape(in_shapes)
        return {"mean": x[:-1], "inv": x[:-1], "y": x, "out": x}

    def golden_params(self):
        ds, info = requant_params(self.requant)
        ds.update(x_lut=self.x_table.lut, gamma=self.gamma, beta=self.beta)
        info.update(
            x_range=range_info(self.x_range),
            **table_info("x_lut", self.x_table),
            x_lut_qmin=int(self.x_table.qmin),
            channels=int(self.channels),
            eps_int=int(self.eps_int),
            inv_frac_bits=int(self.inv_frac_bits),
            gamma_frac_bits=int(self.gamma_frac_bits),
            mean_rounding=ROUNDING_NAMES[int(self.mean_rounding)],
            mean_rounding_id=int(self.mean_rounding),
            unit=unit_info(self.unit),
            seed=int(self.seed),
            tensor_id=int(self.tensor_id),
            y_bound=int(self.y_bound),
            rule="X = x_lut[q - x_lut_qmin]; mean = round_div(sum X, C, mean_rounding); D = X - mean; "
            "V = sum D^2; inv = isqrt(floor(C * 2^(2 inv_frac_bits) / (V + C * eps_int))); "
            "y = D * inv * gamma[c] + beta[c]; out = requant(y)",
        )
        return ds, info

    def feeding(self, multi, inputs, input_names):
        """The input row of the element (an element of y/out, or a row of mean/inv)."""
        x = inputs[0]
        row = tuple(multi[: x.ndim - 1])
        d = dict(input=input_names[0], row=list(row), input_row=x[row].tolist())
        if len(multi) == x.ndim:
            c = int(multi[-1])
            d.update(channel=c, gamma=int(self.gamma[c]), beta=int(self.beta[c]))
        return d


def isqrt_ceil(n):
    r = math.isqrt(n)
    return r if r * r == n else r + 1


__all__ = ["LayerNorm", "isqrt_ceil"]
