"""Integer layers: the integer tables and settings of each op (docs/ARITHMETIC.md §4–§8).

A layer holds only integers (codes, LUTs, thresholds, multipliers, bias) plus the host
reals that explain them (units), so hardware, golden files and every backend see the same
tables. Builders (`Linear.build`, `Conv2d.build`, ...) make the tables from formats.
"""
from dataclasses import dataclass, field

import numpy as np

from .formats import CodeRange, PowerFormat, UniformFormat, UniformRange
from .rounding import DEFAULT
from .tables import (DecodeTable, ProductTable, Rescale, Thresholds, bias_table, decode_table,
                     product_table, rescale_table, threshold_table)
from .validate import check_choice, check_int

OVERFLOW_MODES = ("wrap", "saturate", "exact")
DATAPATHS = ("operand", "product")
INT64_LIMIT = 2**63 - 1


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


def format_meta(fmt):
    """JSON-able description of a real-valued format (None stays None); see `meta` on layers."""
    if fmt is None:
        return None
    if isinstance(fmt, PowerFormat):
        return {"kind": "power", "bits": int(fmt.bits), "signed": bool(fmt.signed), "exponent": float(fmt.exponent),
                "scale": np.asarray(fmt.scale, np.float64).tolist(), "scale_shape": list(fmt.scale.shape),
                "granularity": fmt.granularity, "group_size": int(fmt.group_size)}
    if isinstance(fmt, UniformFormat):
        return {"kind": "uniform", "bits": int(fmt.bits), "signed": bool(fmt.signed), "scale": float(fmt.scale),
                "zero_point": int(fmt.zero_point)}
    raise TypeError(f"unknown format type {type(fmt).__name__}")


def format_from_meta(d):
    """Inverse of format_meta."""
    if d is None:
        return None
    if d["kind"] == "power":
        scale = np.asarray(d["scale"], np.float64).reshape(d["scale_shape"])
        return PowerFormat(d["bits"], d["signed"], d["exponent"], scale, d["granularity"], d["group_size"])
    return UniformFormat(d["bits"], d["signed"], d["scale"], d["zero_point"])


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
        return rescale_table(unit, out_fmt, acc.width, mult_bits, rounding, relu, exact=acc.overflow == "exact")
    raise TypeError(f"out_fmt must be a PowerFormat, UniformFormat or None, got {type(out_fmt).__name__}")


def _check_requant_input(name, requant, acc, bound):
    """The requantizer sees |acc| <= bound (exact mode: the unclamped sum) and
    |acc| <= 2^(width-1) otherwise; rescale's |acc·m| < 2^62 must hold for that limit."""
    if not isinstance(requant, Rescale):
        return
    limit = bound if acc.overflow == "exact" else min(bound, 2 ** (acc.width - 1))
    if limit * int(np.abs(requant.multiplier).max(initial=0)) >= 2**62:
        raise ValueError(f"{name}: rescale needs |acc|·multiplier < 2^62, but |acc| can reach {limit}; "
                         "lower mult_bits (or use wrap/saturate instead of exact)")


def _check_requant(requant):
    if requant is not None and not isinstance(requant, (Thresholds, Rescale)):
        raise TypeError(f"requant must be Thresholds, Rescale or None, got {type(requant).__name__}")


@dataclass(eq=False)
class MacLayer:
    """Common part of Linear and Conv2d: weights, datapath tables, bias, accumulator, requant.

    w_codes: (O, K) for linear, (O, C/groups, kh, kw) for conv, int codes in w_range.
    w_table_index: (O, K) int64 row of w_table/p_table used by each weight (its scale entry).
    operand datapath: product = w_table.lut[t, qw - qmin] * x_table.lut[0, qx - qmin].
    product datapath: product = sign(qw)sign(qx) * p_table.lut[t, index(|qw|, |qx|)].
    """

    name: str
    w_codes: np.ndarray
    w_range: CodeRange
    x_range: CodeRange
    datapath: str
    w_table_index: np.ndarray
    acc: Accumulator
    w_table: DecodeTable = None
    x_table: DecodeTable = None
    p_table: ProductTable = None
    bias: np.ndarray = None
    requant: object = None
    unit: object = 1.0  # real value of one accumulator LSB: float, or (O,) per channel (host only)
    tensor_id: int = 0
    seed: int = 0
    bound: np.ndarray = field(init=False, repr=False)
    # Optional host-only description (real formats, real bias, relu) set by the builders;
    # JSON-able, never read by the integer datapath. Golden files and the audit use it.
    meta: dict = field(default=None, repr=False)

    def __post_init__(self):
        check_choice("datapath", self.datapath, DATAPATHS)
        if not isinstance(self.acc, Accumulator):
            raise TypeError("acc must be an Accumulator")
        self.w_codes = np.ascontiguousarray(self.w_codes)
        self.w_range.check_codes(f"{self.name}.w_codes", self.w_codes)
        self.w_codes = self.w_codes.astype(np.int16)
        O = self.w_codes.shape[0]
        K = int(np.prod(self.w_codes.shape[1:]))
        self.w_table_index = np.ascontiguousarray(self.w_table_index, dtype=np.int64).reshape(O, K)
        check_int(f"{self.name}.tensor_id", self.tensor_id, 0, 2**32 - 1)
        check_int(f"{self.name}.seed", self.seed, 0, 2**32 - 1)
        _check_requant(self.requant)
        if self.datapath == "operand":
            if self.w_table is None or self.x_table is None:
                raise ValueError(f"{self.name}: the operand datapath needs w_table and x_table")
            if self.w_table.lut.shape[1] != self.w_range.n_codes or self.x_table.lut.shape[1] != self.x_range.n_codes:
                raise ValueError(f"{self.name}: decode tables do not cover the code ranges")
        else:
            if self.p_table is None:
                raise ValueError(f"{self.name}: the product datapath needs p_table")
            if isinstance(self.x_range, UniformRange) or isinstance(self.w_range, UniformRange):
                raise ValueError(f"{self.name}: the product datapath needs power-format (symmetric) codes")
        if self.w_table_index.min() < 0 or self.w_table_index.max() >= self._n_tables():
            raise ValueError(f"{self.name}: w_table_index refers to a missing table row")
        if self.bias is None:
            self.bias = np.zeros(O, np.int64)
        self.bias = np.asarray(self.bias, dtype=np.int64).reshape(O)
        if self.bias.min(initial=0) < self.acc.lo or self.bias.max(initial=0) > self.acc.hi:
            raise ValueError(f"{self.name}: bias outside the {self.acc.width}-bit accumulator range")
        self.bound = self._worst_case()
        _check_requant_input(self.name, self.requant, self.acc, int(self.bound.max(initial=0)))
        if self.requant is not None and self.requant.__class__ is Thresholds:
            if self.requant.thr.shape[0] not in (1, O):
                raise ValueError(f"{self.name}: thresholds need 1 or {O} rows")
        if isinstance(self.requant, Rescale) and self.requant.multiplier.shape[0] not in (1, O):
            raise ValueError(f"{self.name}: rescale needs 1 or {O} multipliers")

    def channel_units(self):
        """(O,) float64: the real value of one accumulator LSB of each output channel."""
        return np.broadcast_to(np.asarray(self.unit, dtype=np.float64), (self.out_channels,)).copy()

    def _n_tables(self):
        return (self.w_table if self.datapath == "operand" else self.p_table).lut.shape[0]

    @property
    def out_channels(self):
        return self.w_codes.shape[0]

    @property
    def k(self):
        return int(np.prod(self.w_codes.shape[1:]))

    def max_abs_product(self):
        """(O, K) int64: the largest |product| each weight can make over all input codes.

        Raises if any single product could reach 2^62 (checked in Python ints before any
        int64 multiplication, so nothing can wrap)."""
        qw = self.w_codes.reshape(self.out_channels, -1).astype(np.int64)
        if self.datapath == "operand":
            w = np.abs(self.w_table.lut[self.w_table_index, qw - self.w_range.qmin])
            xmax = int(np.abs(self.x_table.lut).max())
            if int(w.max(initial=0)) * xmax >= 2**62:
                raise ValueError(f"{self.name}: a single product can reach {int(w.max()) * xmax} >= 2^62; "
                                 "lower the fractional bits")
            return w * xmax
        mags = self.p_table.lut  # (T, L)
        if int(np.abs(mags).max(initial=0)) >= 2**62:
            raise ValueError(f"{self.name}: a product table entry reaches 2^62; lower the fractional bits")
        # per (table row, |qw| = m): the largest entry over every activation magnitude n,
        # a (T, Mw+1) table, then gathered per weight (never an (O, K, Mx+1) array)
        mwmax = int(np.abs(qw).max(initial=0))
        m = np.arange(mwmax + 1)[:, None]
        n = np.arange(self.p_table.mx + 1)[None, :]
        idx = m * n if self.p_table.by_product else m * (self.p_table.mx + 1) + n
        best = np.abs(mags[:, idx]).max(axis=-1)  # (T, mwmax+1)
        return best[self.w_table_index, np.abs(qw)]

    def _worst_case(self):
        """Per-channel bound |bias| + sum_k max|product| as Python ints (exact).

        Every exact prefix sum, tile partial and total is bounded by it; it must be < 2^63
        so that the simulator can hold every exact sum in int64 (docs/ARITHMETIC.md §4).
        """
        mp = self.max_abs_product()
        bound = np.array([abs(int(b)) + int(np.sum(row, dtype=object)) for b, row in zip(self.bias, mp)],
                         dtype=object)
        worst = int(bound.max()) if bound.size else 0
        if worst >= INT64_LIMIT:
            raise ValueError(f"{self.name}: the worst-case accumulator magnitude {worst} does not fit "
                             "int64 (below 2^63-1); lower the fractional bits or split the layer")
        return bound.astype(np.int64)

    def no_overflow_possible(self):
        """True when no accumulator (prefix, tile partial or total) can leave the range."""
        return int(self.bound.max(initial=0)) <= self.acc.hi


def _tables_for(w_fmt, x_fmt, datapath, w_frac_bits, x_frac_bits, product_frac_bits, rounding, seed, tensor_id):
    if datapath == "operand":
        wt = decode_table(w_fmt, w_frac_bits, rounding, seed, tensor_id)
        xt = decode_table(x_fmt, x_frac_bits, rounding, seed, tensor_id + 1)
        return dict(w_table=wt, x_table=xt), wt.unit * xt.unit
    pt = product_table(w_fmt, x_fmt, product_frac_bits, rounding, seed, tensor_id)
    if pt.channel_factor is None:
        return dict(p_table=pt), pt.unit
    unit = pt.unit * pt.channel_factor  # per-channel LSB (ProductTable docstring)
    return dict(p_table=pt), (float(unit[0]) if w_fmt.granularity == "tensor" else unit)


def _build(cls, name, w_codes, w_fmt, x_fmt, *, datapath="operand", w_frac_bits=12, x_frac_bits=8,
           product_frac_bits=16, bias=None, acc=None, out_fmt=None, relu=False, clip_max=None,
           rounding=DEFAULT, requant_rounding=None, mult_bits=31, seed=0, tensor_id=0, **extra):
    acc = acc or Accumulator()
    check_choice("datapath", datapath, DATAPATHS)
    w_codes = np.asarray(w_codes)
    tables, unit = _tables_for(w_fmt, x_fmt, datapath, w_frac_bits, x_frac_bits, product_frac_bits,
                               rounding, seed, tensor_id)
    idx = w_fmt.scale_index(w_codes.shape)
    if "p_table" in tables and tables["p_table"].channel_factor is not None:
        idx = np.zeros_like(idx)  # one shared product table; the scale lives in `unit`
    b = None if bias is None else bias_table(bias, unit, acc.width, rounding, seed, tensor_id + 2)
    rq = build_requant(unit, out_fmt, acc, requant_rounding or rounding, relu, clip_max, mult_bits)
    meta = {"w_format": format_meta(w_fmt), "x_format": format_meta(x_fmt), "out_format": format_meta(out_fmt),
            "bias_real": None if bias is None else np.asarray(bias, np.float64).reshape(-1).tolist(),
            "relu": bool(relu), "clip_max": None if clip_max is None else float(clip_max)}
    return cls(name=name, w_codes=w_codes, w_range=w_fmt.range, x_range=x_fmt.range, datapath=datapath,
               w_table_index=idx, acc=acc, bias=b, requant=rq, unit=unit, tensor_id=tensor_id,
               seed=seed, meta=meta, **tables, **extra)


@dataclass(eq=False)
class Linear(MacLayer):
    """y[b, o] = bias[o] + sum_k product(w[o, k], x[b, k]), k ascending."""

    def check_shape(self, x):
        """The input-shape check every backend applies (codes are checked separately)."""
        if x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"{self.name}: input shape {x.shape}; expected (batch, {self.k})")

    build = classmethod(_build)


@dataclass(eq=False)
class Conv2d(MacLayer):
    """NCHW conv; k enumerates (c, i, j) of the kernel window, c slowest; padded taps add 0."""

    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def __post_init__(self):
        self.stride, self.padding, self.dilation = (_pair(n, v) for n, v in (
            ("stride", self.stride), ("padding", self.padding), ("dilation", self.dilation)))
        for n, v, lo in (("stride", self.stride, 1), ("padding", self.padding, 0), ("dilation", self.dilation, 1)):
            for x in v:
                check_int(f"{self.name}.{n}", x, lo, None)
        check_int(f"{self.name}.groups", self.groups, 1, None)
        if np.asarray(self.w_codes).ndim != 4:
            raise ValueError(f"{self.name}.w_codes must be 4-D (O, C/groups, kh, kw)")
        if np.asarray(self.w_codes).shape[0] % self.groups:
            raise ValueError(f"{self.name}: out channels not divisible by groups={self.groups}")
        super().__post_init__()

    build = classmethod(_build)

    def check_shape(self, x):
        """The input-shape check every backend applies; returns the output (Ho, Wo)."""
        cin = self.w_codes.shape[1] * self.groups
        if x.ndim != 4 or x.shape[1] != cin:
            raise ValueError(f"{self.name}: input shape {x.shape}; expected (B, {cin}, H, W)")
        return self.out_hw(*x.shape[2:])

    def out_hw(self, h, w):
        kh, kw = self.w_codes.shape[2:]
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: input {h}x{w} is smaller than the kernel window")
        return ho, wo


def _pair(name, v):
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return v


@dataclass(eq=False)
class Add:
    """Residual add: a_table[qa] + b_table[qb] on a common fixed-point grid, then requant."""

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
        _check_requant(self.requant)
        if self.a_table.unit != self.b_table.unit:
            raise ValueError(f"{self.name}: the two inputs must decode to the same grid "
                             f"(units {self.a_table.unit} and {self.b_table.unit})")
        worst = int(np.abs(self.a_table.lut).max()) + int(np.abs(self.b_table.lut).max())
        if worst >= 2**62:
            raise ValueError(f"{self.name}: decoded values too large (>= 2^62)")
        self.bound = np.array([worst], np.int64)
        _check_requant_input(self.name, self.requant, self.acc, worst)

    @classmethod
    def build(cls, name, a_fmt, b_fmt, frac_bits=12, acc=None, out_fmt=None, relu=False, clip_max=None,
              rounding=DEFAULT, requant_rounding=None, mult_bits=31, seed=0, tensor_id=0):
        acc = acc or Accumulator()
        at = decode_table(a_fmt, frac_bits, rounding, seed, tensor_id)
        bt = decode_table(b_fmt, frac_bits, rounding, seed, tensor_id + 1)
        if isinstance(a_fmt, UniformFormat) or isinstance(b_fmt, UniformFormat):
            raise TypeError("residual add aligns power-format inputs; both must be PowerFormat")
        rq = build_requant(at.unit, out_fmt, acc, requant_rounding or rounding, relu, clip_max, mult_bits)
        meta = {"a_format": format_meta(a_fmt), "b_format": format_meta(b_fmt), "out_format": format_meta(out_fmt),
                "relu": bool(relu), "clip_max": None if clip_max is None else float(clip_max)}
        return cls(name, a_fmt.range, b_fmt.range, at, bt, acc, rq, at.unit, tensor_id, seed, meta)

    def no_overflow_possible(self):
        return int(self.bound[0]) <= self.acc.hi


@dataclass(eq=False)
class MaxPool2d:
    """Max over the window on codes (valid because every decode is non-decreasing in the code).

    Padded taps are ignored (they never win)."""

    name: str
    kernel: tuple
    stride: tuple = None
    padding: tuple = (0, 0)

    def __post_init__(self):
        self.kernel = _pair("kernel", self.kernel)
        self.stride = _pair("stride", self.stride if self.stride is not None else self.kernel)
        self.padding = _pair("padding", self.padding)
        if self.padding[0] * 2 > self.kernel[0] or self.padding[1] * 2 > self.kernel[1]:
            raise ValueError(f"{self.name}: padding must be at most half the kernel")


@dataclass(eq=False)
class AvgPool2d:
    """Average pool: decode (LUT) to fixed point, window sum in the accumulator (rows then
    columns), requantize with thresholds/rescale built for unit/window (division folded).

    kernel=None means global average pooling over the whole map (shape given at run time,
    so the requant tables are built for `window` = kh*kw elements, which must match)."""

    name: str
    x_range: CodeRange
    x_table: DecodeTable
    acc: Accumulator
    kernel: tuple = None
    stride: tuple = None
    requant: object = None
    window: int = 0
    unit: float = 1.0
    tensor_id: int = 0
    seed: int = 0
    meta: dict = field(default=None, repr=False)  # host-only description, see MacLayer.meta

    def __post_init__(self):
        _check_requant(self.requant)
        if self.kernel is not None:
            self.kernel = _pair("kernel", self.kernel)
            self.stride = _pair("stride", self.stride if self.stride is not None else self.kernel)
            self.window = self.kernel[0] * self.kernel[1]
        check_int(f"{self.name}.window", self.window, 1, None)
        worst = int(np.abs(self.x_table.lut).max()) * self.window
        if worst > INT64_LIMIT:
            raise ValueError(f"{self.name}: worst-case window sum does not fit int64")
        self.bound = np.array([worst], np.int64)
        _check_requant_input(self.name, self.requant, self.acc, worst)

    @classmethod
    def build(cls, name, x_fmt, frac_bits=12, acc=None, kernel=None, stride=None, window=None,
              out_fmt=None, rounding=DEFAULT, requant_rounding=None, mult_bits=31, seed=0, tensor_id=0):
        acc = acc or Accumulator()
        xt = decode_table(x_fmt, frac_bits, rounding, seed, tensor_id)
        if kernel is not None:
            k = _pair("kernel", kernel)
            window = k[0] * k[1]
        if window is None:
            raise ValueError(f"{name}: global average pooling needs window = H*W of its input")
        rq = build_requant(xt.unit / window, out_fmt, acc, requant_rounding or rounding, False, None, mult_bits)
        meta = {"x_format": format_meta(x_fmt), "out_format": format_meta(out_fmt)}
        return cls(name, x_fmt.range, xt, acc, kernel, stride, rq, window, xt.unit / window, tensor_id, seed, meta)

    def no_overflow_possible(self):
        return int(self.bound[0]) <= self.acc.hi

    def check_input(self, x):
        """Validate input codes (B, C, H, W) for every backend; returns (kernel, stride)."""
        self.x_range.check_codes(f"{self.name} input", x)
        if x.ndim != 4:
            raise ValueError(f"{self.name}: input must be (B, C, H, W), got shape {x.shape}")
        kernel = self.kernel or tuple(x.shape[2:])
        stride = self.stride or kernel
        if kernel[0] * kernel[1] != self.window:
            raise ValueError(f"{self.name}: window {kernel} has {kernel[0] * kernel[1]} elements; "
                             f"the requant tables were built for {self.window}")
        return kernel, stride


@dataclass(eq=False)
class Flatten:
    """(B, C, H, W) -> (B, C*H*W), C-major as torch.flatten(x, 1)."""

    name: str
