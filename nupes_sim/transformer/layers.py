"""Integer transformer layers (docs/ARITHMETIC.md §10-§16): tables, settings and the checks
every backend applies. Builders make the tables from formats; construction proves every
intermediate fits int64 (Python integers) or raises ValueError naming the cause.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange, PowerFormat, UniformFormat, UniformRange
from ..layers import Accumulator, build_requant, format_meta
from ..rounding import DEFAULT, HOST_MODES, mode_id
from ..tables import (
    DecodeTable,
    ProductTable,
    Rescale,
    Thresholds,
    decode_table,
    product_table,
    rescale_table,
)
from ..validate import check_int
from . import tables as T

DATAPATHS = ("operand", "product")
_I62 = 2**62
_I63 = 2**63 - 1


def _maxabs(a):
    a = np.asarray(a)
    return int(np.abs(a.astype(object)).max()) if a.size else 0


def _check_requant(name, rq):
    if rq is not None and not isinstance(rq, (Thresholds, Rescale)):
        raise TypeError(f"{name}: requant must be Thresholds, Rescale or None, got {type(rq).__name__}")
    if isinstance(rq, Thresholds) and rq.thr.shape[0] != 1:
        raise ValueError(
            f"{name}: a transformer op's thresholds have one row (per tensor), got {rq.thr.shape[0]}"
        )
    if isinstance(rq, Rescale) and rq.multiplier.shape[0] != 1:
        raise ValueError(
            f"{name}: a transformer op's rescale has one multiplier, got {rq.multiplier.shape[0]}"
        )


def _check_rescale_input(name, rq, limit):
    if isinstance(rq, Rescale) and limit * int(rq.multiplier[0]) >= _I62:
        raise ValueError(
            f"{name}: rescale needs |value|·multiplier < 2^62 but |value| can reach {limit}; lower mult_bits"
        )


def _requant_for(unit, out_fmt, bound, rounding, mult_bits=31):
    """Thresholds (power output) or rescale (uniform output) of a value |v| <= bound (exact)."""
    if out_fmt is None:
        return None
    width = max(8, min(64, int(bound).bit_length() + 1))
    if isinstance(out_fmt, UniformFormat):
        return rescale_table(unit, out_fmt, width, min(mult_bits, 63 - width), rounding)
    return build_requant(unit, out_fmt, Accumulator(64, "exact"), rounding)


def _pass_through(x):
    return np.ascontiguousarray(x).copy()


# ============================================================================ §10 Embedding
@dataclass(eq=False)
class Embedding:
    """out[..., c] = codes[index, c]: index = the token id (positional=False) or the position
    along the last input axis (positional=True, input values ignored). Lookup is exact."""

    name: str
    codes: np.ndarray  # (V, C) codes in out_range
    out_range: CodeRange
    positional: bool = False
    meta: dict = field(default=None, repr=False)
    n_inputs = 1

    def __post_init__(self):
        self.codes = np.asarray(self.codes)
        if self.codes.ndim != 2 or self.codes.shape[0] < 1:
            raise ValueError(
                f"{self.name}: the embedding table must be (vocab, channels), got {self.codes.shape}"
            )
        self.out_range.check_codes(f"{self.name}.codes", self.codes)
        self.codes = np.ascontiguousarray(self.codes, np.int64)

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


# ============================================================================ §15 element-wise
@dataclass(eq=False)
class ElementwiseTable:
    """out = table[q - in_qmin]: a code->code table built on the host (exact by construction)."""

    name: str
    in_range: CodeRange
    out_range: CodeRange
    table: np.ndarray  # (n_in,) output codes
    meta: dict = field(default=None, repr=False)
    n_inputs = 1

    def __post_init__(self):
        self.table = np.asarray(self.table)
        if self.table.shape != (self.in_range.n_codes,):
            raise ValueError(
                f"{self.name}: the table needs {self.in_range.n_codes} entries (one per input "
                f"code), got shape {self.table.shape}"
            )
        self.out_range.check_codes(f"{self.name}.table", self.table)
        self.table = np.ascontiguousarray(self.table, np.int64)

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


# ============================================================================ §11 MatMul
@dataclass(eq=False)
class MatMul:
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
    n_inputs = 2

    def __post_init__(self):
        if self.datapath not in DATAPATHS:
            raise ValueError(f"{self.name}: datapath={self.datapath!r}; choose one of {list(DATAPATHS)}")
        if not isinstance(self.acc, Accumulator):
            raise TypeError(f"{self.name}: acc must be an Accumulator")
        check_int(f"{self.name}.k_max", self.k_max, 1, None)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        _check_requant(self.name, self.requant)
        if self.datapath == "operand":
            if self.a_table is None or self.b_table is None:
                raise ValueError(f"{self.name}: the operand datapath needs a_table and b_table")
            for t, r, n in ((self.a_table, self.a_range, "a"), (self.b_table, self.b_range, "b")):
                if t.lut.shape != (1, r.n_codes):
                    raise ValueError(f"{self.name}: {n}_table must be (1, {r.n_codes}), got {t.lut.shape}")
            top = _maxabs(self.a_table.lut) * _maxabs(self.b_table.lut)
        else:
            if self.p_table is None or self.p_table.lut.shape[0] != 1:
                raise ValueError(f"{self.name}: the product datapath needs a one-row p_table")
            if isinstance(self.a_range, UniformRange) or isinstance(self.b_range, UniformRange):
                raise ValueError(f"{self.name}: the product datapath needs power-format (symmetric) codes")
            ma, mb = self.a_range.max_magnitude, self.b_range.max_magnitude
            need = ma * mb + 1 if self.p_table.by_product else ma * (self.p_table.mx + 1) + mb + 1
            if self.p_table.lut.shape[1] < need or self.p_table.mx < mb:
                raise ValueError(
                    f"{self.name}: p_table has {self.p_table.lut.shape[1]} entries; needs {need}"
                )
            top = _maxabs(self.p_table.lut)
        if top >= _I62:
            raise ValueError(
                f"{self.name}: a single product can reach {top} >= 2^62; lower the fractional bits"
            )
        self.max_product = top
        bound = top * self.k_max
        if bound >= _I63:
            raise ValueError(
                f"{self.name}: k_max·max|product| = {bound} does not fit int64; lower k_max or the "
                "fractional bits"
            )
        self.bound = np.array([bound], np.int64)
        limit = bound if self.acc.overflow == "exact" else min(bound, 2 ** (self.acc.width - 1))
        _check_rescale_input(self.name, self.requant, limit)

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
        if a.ndim < 2 or a.ndim != b.ndim:
            raise ValueError(f"{self.name}: inputs must have the same rank >= 2, got {a.shape} and {b.shape}")
        bk = np.swapaxes(b, -1, -2) if self.transpose_b else b
        if a.shape[:-2] != bk.shape[:-2] or a.shape[-1] != bk.shape[-2]:
            raise ValueError(
                f"{self.name}: shapes {a.shape} and {b.shape} do not multiply "
                f"(transpose_b={self.transpose_b})"
            )
        if a.shape[-1] > self.k_max:
            raise ValueError(f"{self.name}: shared dimension {a.shape[-1]} exceeds k_max={self.k_max}")
        return bk, a.shape[-1]


# ============================================================================ §12-13 Softmax
@dataclass(eq=False)
class Softmax:
    """Softmax over the last axis of uniform-format score codes (..., Tq, Tk).

    Kept positions (mask, causal): d = q_max - q, e = exp_lut[d]; masked positions give e = 0
    and take no part in q_max. sum = Σ e (k ascending, in `acc`, which provably cannot
    overflow); p = round_div(e·2^P, sum, prob_rounding) (0 when sum = 0: a fully masked row);
    out = requant(p) with unit 2^-P. masked=True: a second input (B, Tk), nonzero = keep."""

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

    @property
    def n_inputs(self):
        return 2 if self.masked else 1

    def __post_init__(self):
        if not isinstance(self.x_range, UniformRange):
            raise TypeError(f"{self.name}: softmax scores must be uniform-format codes")
        if not isinstance(self.acc, Accumulator):
            raise TypeError(f"{self.name}: acc must be an Accumulator")
        self.exp_lut = np.ascontiguousarray(self.exp_lut, np.int64)
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
        _check_requant(self.name, self.requant)
        if self.exp_lut.min() < 0:
            raise ValueError(f"{self.name}: exp_lut entries must be >= 0")
        emax = int(self.exp_lut.max())
        if int(self.exp_lut[0]) < 1:
            raise ValueError(
                f"{self.name}: exp_lut[0] (the row maximum) must be >= 1 so a kept row sums to >= 1"
            )
        self.bound = np.array([emax * self.max_len], np.int64) if emax * self.max_len < _I63 else None
        if emax * self.max_len > self.acc.hi:
            raise ValueError(
                f"{self.name}: max_len·max(exp_lut) = {emax * self.max_len} exceeds the "
                f"{self.acc.width}-bit sum accumulator ({self.acc.hi}); the sum must provably fit"
            )
        if emax << self.prob_bits >= _I62:
            raise ValueError(f"{self.name}: exp·2^prob_bits can reach {emax << self.prob_bits} >= 2^62")
        if self.prob_rounding == 6 and emax * self.max_len >= 2**31:
            raise ValueError(f"{self.name}: stochastic probability rounding needs sums < 2^31")
        _check_rescale_input(self.name, self.requant, 1 << self.prob_bits)

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
        rq = _requant_for(2.0**-prob_bits, out_fmt, 1 << prob_bits, requant_rounding or rounding, mult_bits)
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


# ============================================================================ §14 LayerNorm
@dataclass(eq=False)
class LayerNorm:
    """LayerNorm over the last axis of C channels, integers only (ARITHMETIC.md §14).

    X = x_table[q]; S = ΣX; μ = round_div(S, C, mean_rounding); D = X - μ; V = ΣD²;
    inv = isqrt(floor(C·2^(2R) / (V + C·eps_int))); Z = D·inv (unit 2^-R);
    Y = Z·gamma[c] + beta[c] (unit 2^-(R+Fg)); out = requant(Y)."""

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
    n_inputs = 1

    def __post_init__(self):
        C = check_int(f"{self.name}.channels", self.channels, 1, None)
        check_int(f"{self.name}.eps_int", self.eps_int, 1, None)
        R = check_int(f"{self.name}.inv_frac_bits", self.inv_frac_bits, 0, 62)
        check_int(f"{self.name}.gamma_frac_bits", self.gamma_frac_bits, 0, 40)
        check_int(f"{self.name}.mean_rounding", self.mean_rounding, 0, 6)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        _check_requant(self.name, self.requant)
        self.gamma = np.ascontiguousarray(self.gamma, np.int64).reshape(-1)
        self.beta = np.ascontiguousarray(self.beta, np.int64).reshape(-1)
        if self.gamma.shape != (C,) or self.beta.shape != (C,):
            raise ValueError(f"{self.name}: gamma and beta need {C} entries")
        if self.x_table.lut.shape != (1, self.x_range.n_codes):
            raise ValueError(f"{self.name}: x_table must be (1, {self.x_range.n_codes})")
        # every intermediate, in Python integers (ARITHMETIC.md §14 table of widths)
        xm = _maxabs(self.x_table.lut)
        widths = {
            "S = ΣX": C * xm,
            "V = ΣD²": C * (2 * xm) ** 2,
            "V + C·eps_int": C * (2 * xm) ** 2 + C * self.eps_int,
            "C·2^(2R)": C << (2 * R),
        }
        zmax = _isqrt_ceil(C) << R  # |Z| <= sqrt(C)·2^R
        widths["Y = Z·G + B"] = zmax * _maxabs(self.gamma) + _maxabs(self.beta)
        for what, v in widths.items():
            if v >= _I62:
                raise ValueError(
                    f"{self.name}: intermediate {what} can reach {v} >= 2^62; lower the decode "
                    "fractional bits, inv_frac_bits or gamma_frac_bits"
                )
        if self.mean_rounding == 6 and C >= 2**31:
            raise ValueError(f"{self.name}: stochastic mean rounding needs C < 2^31")
        self.y_bound = widths["Y = Z·G + B"]
        _check_rescale_input(self.name, self.requant, self.y_bound)

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
        ybound = (_isqrt_ceil(C) << inv_frac_bits) * _maxabs(G) + _maxabs(B)
        rq = _requant_for(unit, out_fmt, ybound, requant_rounding or rounding, mult_bits)
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


def _isqrt_ceil(n):
    r = math.isqrt(n)
    return r if r * r == n else r + 1


# ============================================================================ §16 layout ops
@dataclass(eq=False)
class Reshape:
    """C-order reshape; shape entries: -1 (one, inferred) or 0 (copy that input axis), as ONNX."""

    name: str
    shape: tuple
    n_inputs = 1

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if sum(s == -1 for s in self.shape) > 1 or any(s < -1 for s in self.shape):
            raise ValueError(f"{self.name}: shape {self.shape} may hold one -1 and no other negative entry")

    def out_shape(self, in_shape):
        shp = [in_shape[i] if s == 0 else s for i, s in enumerate(self.shape)]
        if -1 in shp:
            known = int(np.prod([s for s in shp if s != -1]))
            total = int(np.prod(in_shape))
            if known == 0 or total % known:
                raise ValueError(f"{self.name}: cannot reshape {tuple(in_shape)} to {self.shape}")
            shp[shp.index(-1)] = total // known
        if int(np.prod(shp)) != int(np.prod(in_shape)):
            raise ValueError(f"{self.name}: cannot reshape {tuple(in_shape)} to {self.shape}")
        return tuple(shp)


@dataclass(eq=False)
class Transpose:
    """Swap axes dim0 and dim1 (torch.transpose), output C-contiguous."""

    name: str
    dim0: int
    dim1: int
    n_inputs = 1


@dataclass(eq=False)
class Slice:
    """x[..., start:stop, ...] along `axis` (torch.split pieces are Slices)."""

    name: str
    axis: int
    start: int
    stop: int
    n_inputs = 1

    def __post_init__(self):
        if not 0 <= self.start < self.stop:
            raise ValueError(f"{self.name}: need 0 <= start < stop, got {self.start}, {self.stop}")


@dataclass(eq=False)
class PadMask:
    """mask = (ids != pad_id) as int64 0/1: the key-padding mask of a Softmax from token ids."""

    name: str
    pad_id: int
    n_inputs = 1


LAYER_TYPES = (Embedding, ElementwiseTable, MatMul, Softmax, LayerNorm, Reshape, Transpose, Slice, PadMask)

__all__ = [
    "Embedding",
    "ElementwiseTable",
    "MatMul",
    "Softmax",
    "LayerNorm",
    "Reshape",
    "Transpose",
    "Slice",
    "PadMask",
    "LAYER_TYPES",
    "PowerFormat",
    "UniformFormat",
]
