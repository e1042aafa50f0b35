"""Multiply-accumulate layers: Linear and Conv2d (docs/ARITHMETIC.md §4–§6).

A layer holds only integers (codes, LUTs, thresholds, multipliers, bias) plus the host
reals that explain them (units), so hardware, golden files and every backend see the same
tables. Builders (`Linear.build`, `Conv2d.build`) make the tables from formats.
"""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange, UniformRange
from ..tables import DecodeTable, ProductTable
from ..validate import check_choice, check_int, frozen_int_array
from .base import (
    INT64_LIMIT,
    AccLayer,
    Accumulator,
    check_acc,
    check_decode_table,
    check_ids,
    check_meta,
    check_name,
    check_range,
    check_requant,
    check_requant_input,
    check_unit,
    maxabs,
    meta_format,
    pair,
    range_info,
    register,
    set_fields,
    table_info,
    unit_info,
    window,
    window_codes,
)
from .mac_build import DATAPATHS, _build


@dataclass(frozen=True, eq=False)
class MacLayer(AccLayer):
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
        check_name(self)
        n = self.name
        check_choice(f"{n}.datapath", self.datapath, DATAPATHS)
        check_acc(f"{n}.acc", self.acc)
        check_range(f"{n}.w_range", self.w_range)
        check_range(f"{n}.x_range", self.x_range)
        check_meta(n, self.meta)
        w_codes = np.ascontiguousarray(self.w_codes)
        self.w_range.check_codes(f"{n}.w_codes", w_codes)
        if w_codes.ndim < 2:
            raise ValueError(f"{n}.w_codes must be (O, K...), got shape {w_codes.shape}")
        w_codes = frozen_int_array(f"{n}.w_codes", w_codes, np.int16)
        O, K = w_codes.shape[0], int(np.prod(w_codes.shape[1:]))
        idx = frozen_int_array(f"{n}.w_table_index", self.w_table_index)
        if idx.size != O * K:
            raise ValueError(f"{n}.w_table_index has shape {idx.shape}; allowed: {O * K} entries ({O}, {K})")
        bias = np.zeros(O, np.int64) if self.bias is None else self.bias
        bias = frozen_int_array(f"{n}.bias", bias)
        if bias.shape not in ((O,), (O, 1), (1, O)):
            raise ValueError(f"{n}.bias has shape {bias.shape}; allowed: ({O},)")
        bias = bias.reshape(O)
        if bias.size and (int(bias.min()) < self.acc.lo or int(bias.max()) > self.acc.hi):
            bad = int(bias.min()) if int(bias.min()) < self.acc.lo else int(bias.max())
            raise ValueError(
                f"{n}.bias contains {bad}, outside the {self.acc.width}-bit accumulator range "
                f"[{self.acc.lo}, {self.acc.hi}]"
            )
        set_fields(
            self,
            w_codes=w_codes,
            w_table_index=idx.reshape(O, K),
            bias=bias,
            unit=check_unit(f"{n}.unit", self.unit, O),
        )
        check_ids(n, self)
        check_requant(self.requant, f"{n}.requant", (1, O))
        if self.datapath == "operand":
            check_decode_table(f"{n}.w_table", self.w_table, self.w_range)
            check_decode_table(f"{n}.x_table", self.x_table, self.x_range, rows=1)
            if self.p_table is not None:
                raise ValueError(f"{n}.p_table must be None for the operand datapath")
        else:
            if not isinstance(self.p_table, ProductTable):
                raise TypeError(f"{n}.p_table must be a ProductTable, got {type(self.p_table).__name__}")
            if self.w_table is not None or self.x_table is not None:
                raise ValueError(f"{n}: w_table and x_table must be None for the product datapath")
            for r, rng in (("w_range", self.w_range), ("x_range", self.x_range)):
                if isinstance(rng, UniformRange):
                    raise ValueError(f"{n}.{r}: the product datapath needs power-format codes (not uniform)")
            pt, mx = self.p_table, self.x_range.max_magnitude
            need = pt.length(self.w_range.max_magnitude, mx)  # of the ranges, not of the table's mx
            if pt.mx != mx or pt.lut.shape[1] != need:
                raise ValueError(
                    f"{n}.p_table has mx={pt.mx} and {pt.lut.shape[1]} entries per row; allowed: "
                    f"mx={mx} and {need} entries (every weight and activation magnitude of the code ranges)"
                )
            if pt.channel_factor is not None and pt.channel_factor.size not in (1, O):
                raise ValueError(
                    f"{n}.p_table.channel_factor has {pt.channel_factor.size} entries; allowed: 1 or {O}"
                )
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._n_tables()):
            raise ValueError(
                f"{n}.w_table_index contains {int(idx.min()) if int(idx.min()) < 0 else int(idx.max())}; "
                f"allowed: 0..{self._n_tables() - 1} (a row of the table)"
            )
        bound = self._worst_case()
        bound.setflags(write=False)
        set_fields(self, bound=bound)
        check_requant_input(n, self.requant, self.acc, int(self.bound.max(initial=0)))

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
            w = self.w_table.lut[self.w_table_index, qw - self.w_range.qmin]
            wmax, xmax = maxabs(w), maxabs(self.x_table.lut)  # exact (Python ints)
            if wmax * xmax >= 2**62:
                raise ValueError(
                    f"{self.name}: a single product can reach {wmax * xmax} >= 2^62; "
                    "lower the fractional bits"
                )
            return np.abs(w) * xmax  # no -2^63 left when xmax > 0 (wmax < 2^62)
        mags = self.p_table.lut  # (T, L)
        if maxabs(mags) >= 2**62:
            raise ValueError(f"{self.name}: a product table entry reaches 2^62; lower the fractional bits")
        # per (table row, |qw| = m): the largest entry over every activation magnitude n,
        # a (T, Mw+1) table, then gathered per weight (never an (O, K, Mx+1) array)
        mwmax = int(np.abs(qw).max(initial=0))
        idx = self.p_table.index(np.arange(mwmax + 1)[:, None], np.arange(self.p_table.mx + 1)[None, :])
        best = np.abs(mags[:, idx]).max(axis=-1)  # (T, mwmax+1)
        return best[self.w_table_index, np.abs(qw)]

    def _worst_case(self):
        """Per-channel bound |bias| + sum_k max|product| as Python ints (exact).

        Every exact prefix sum, tile partial and total is bounded by it; it must be < 2^63
        so that the simulator can hold every exact sum in int64 (docs/ARITHMETIC.md §4).
        """
        mp = self.max_abs_product()
        bound = np.array(
            [abs(int(b)) + int(np.sum(row, dtype=object)) for b, row in zip(self.bias, mp)], dtype=object
        )
        worst = int(bound.max()) if bound.size else 0
        if worst >= INT64_LIMIT:
            raise ValueError(
                f"{self.name}: the worst-case accumulator magnitude {worst} does not fit "
                "int64 (below 2^63-1); lower the fractional bits or split the layer"
            )
        return bound.astype(np.int64)

    # ---- layer protocol (base.py) ----

    def in_ranges(self):
        return (self.x_range,)

    def golden_params(self):
        from ..golden.packing import PACKING, pack_codes  # the golden package imports layers

        ds, info = self._acc_params()
        codes_dtype = np.int8 if self.w_range.qmax <= 127 else np.int16  # unsigned 8-bit codes reach 255
        ds.update(
            weight_codes=self.w_codes.astype(codes_dtype),
            weight_codes_packed=pack_codes(self.w_codes, self.w_range.bits),
            weight_table_index=self.w_table_index,
            bias=self.bias,
        )
        info.update(
            datapath=self.datapath,
            weight_range=range_info(self.w_range),
            input_range=range_info(self.x_range),
            packing=PACKING,
            packed_bits=int(self.w_range.bits),
            bound_max=int(self.bound.max(initial=0)),
        )
        if self.datapath == "operand":
            ds["w_lut"], ds["x_lut"] = self.w_table.lut, self.x_table.lut
            info.update(
                table_info("w_lut", self.w_table),
                **table_info("x_lut", self.x_table),
                w_lut_qmin=int(self.w_table.qmin),
                x_lut_qmin=int(self.x_table.qmin),
            )
        else:
            pt = self.p_table
            ds["p_lut"] = pt.lut
            info.update(
                table_info("p_lut", pt),
                p_lut_by_product=bool(pt.by_product),
                p_lut_mx=int(pt.mx),
                p_lut_channel_factor=None if pt.channel_factor is None else unit_info(pt.channel_factor),
            )
        return ds, info

    def param_width(self, name):
        return {
            "weight_codes": (int(self.w_range.bits), bool(self.w_range.signed)),
            "weight_codes_packed": (8, False),
            "bias": (int(self.acc.width), True),
        }.get(name)

    def float_reference(self, inputs):
        """(float64 exact sum in accumulator LSBs, reference kind): operands decoded with the
        real formats and the real bias when `meta` has them, else LUT values times unit."""
        from .. import oracle  # the oracle imports layers

        wf, xf = meta_format(self, "w_format"), meta_format(self, "x_format")
        real = wf is not None and xf is not None
        O = self.out_channels
        qw = self.w_codes.reshape(O, -1).astype(np.int64)
        if real:
            w = wf.decode_real(
                qw, wf.scale_index(self.w_codes.shape)
            )  # not w_table_index: product tables may be shared
            bias_real = (self.meta or {}).get("bias_real")
            b = np.zeros(O) if bias_real is None else np.asarray(bias_real, np.float64)
        else:
            b = self.bias.astype(np.float64) * self.channel_units()

        cu_all = self.channel_units()

        def prods_sum(cols, valid, sub, row0):
            # cols/valid (R, K) codes and mask; sub: the layer or a group view -> (R, Og) real
            # sums, in blocks of rows x channels within the memory budget (oracle.blocks)
            Og = sub.w_codes.shape[0]
            R, K = cols.shape
            y = np.empty((R, Og))
            rb, cb = oracle.blocks(R, Og, K)
            for r0 in range(0, R, rb):
                c, v = cols[r0 : r0 + rb], valid[r0 : r0 + rb]
                if real:
                    y[r0 : r0 + rb] = np.where(v, xf.decode_real(c), 0.0) @ w[row0 : row0 + Og].T
                    continue
                for o0 in range(0, Og, cb):
                    ch = oracle._ChannelView(sub, slice(o0, min(o0 + cb, Og)))
                    cu = cu_all[row0 + o0 : row0 + o0 + ch.out_channels]
                    p = oracle._mac_products(ch, c, v).astype(np.float64) * cu[:, None]  # (rb, cb, K)
                    y[r0 : r0 + rb, o0 : o0 + ch.out_channels] = p.sum(axis=-1)
            return y

        y = self._reference_sum(inputs[0], prods_sum, b, oracle)
        cu = self.channel_units()
        return y / (cu if y.ndim == 2 else cu[:, None, None]), "real formats" if real else "LUT values x unit"


@register
@dataclass(frozen=True, eq=False)
class Linear(MacLayer):
    """y[b, o] = bias[o] + sum_k product(w[o, k], x[b, k]), k ascending."""

    def __post_init__(self):
        check_name(self)
        if np.ndim(self.w_codes) != 2:
            raise ValueError(f"{self.name}.w_codes must be 2-D (O, K), got shape {np.shape(self.w_codes)}")
        super().__post_init__()

    def check_shape(self, x):
        """The input-shape check every backend applies (codes are checked separately)."""
        if x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"{self.name}: input shape {x.shape}; expected (batch, {self.k})")

    build = classmethod(_build)

    def out_shape(self, in_shapes):
        self.check_shape(np.broadcast_to(np.int8(0), tuple(in_shapes[0])))
        return (in_shapes[0][0], self.out_channels)

    def feeding(self, multi, inputs, input_names):
        b, o = multi
        return dict(
            input=input_names[0],
            input_row=inputs[0][b].tolist(),
            weight_row=self.w_codes.reshape(self.out_channels, -1)[o].tolist(),
            bias=int(self.bias[o]),
        )

    def _reference_sum(self, x, prods_sum, b, oracle):
        return prods_sum(x.astype(np.int64), np.ones(x.shape, bool), self, 0) + b


@register
@dataclass(frozen=True, eq=False)
class Conv2d(MacLayer):
    """NCHW conv; k enumerates (c, i, j) of the kernel window, c slowest; padded taps add 0."""

    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    def __post_init__(self):
        check_name(self)
        set_fields(
            self,
            stride=pair(f"{self.name}.stride", self.stride, 1),
            padding=pair(f"{self.name}.padding", self.padding, 0),
            dilation=pair(f"{self.name}.dilation", self.dilation, 1),
            groups=check_int(f"{self.name}.groups", self.groups, 1, None),
        )
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

    def out_shape(self, in_shapes):
        ho, wo = self.check_shape(np.broadcast_to(np.int8(0), tuple(in_shapes[0])))
        return (in_shapes[0][0], self.out_channels, ho, wo)

    def golden_params(self):
        ds, info = super().golden_params()
        info.update(
            stride=list(self.stride),
            padding=list(self.padding),
            dilation=list(self.dilation),
            groups=int(self.groups),
            kernel=list(self.w_codes.shape[2:]),
        )
        return ds, info

    def feeding(self, multi, inputs, input_names):
        b, o, oh, ow = multi
        O, Cg, kh, kw = self.w_codes.shape
        g = o // (O // self.groups)
        rows = window(oh, self.stride[0], self.padding[0], self.dilation[0], kh)
        cols = window(ow, self.stride[1], self.padding[1], self.dilation[1], kw)
        vals = [window_codes(inputs[0], b, c, rows, cols) for c in range(g * Cg, (g + 1) * Cg)]
        return dict(
            input=input_names[0],
            batch=b,
            channels=[g * Cg, (g + 1) * Cg],
            rows=rows,
            cols=cols,
            window_codes=vals,
            weight_codes=self.w_codes[o].tolist(),
            bias=int(self.bias[o]),
            note="window_codes[c][i][j]; None = padding tap (adds 0)",
        )

    def _reference_sum(self, x, prods_sum, b, oracle):
        O, Cg, kh, kw = self.w_codes.shape
        pad = 0 if self.x_range.qmin <= 0 <= self.x_range.qmax else self.x_range.qmin
        ho, wo = self.out_hw(*x.shape[2:])
        B = x.shape[0]
        Og = O // self.groups
        y = np.empty((B, ho, wo, O))
        for r0, r1 in oracle.conv_row_blocks(self, B, ho, wo):  # output rows are independent
            cols, valid = oracle.im2col(
                x.astype(np.int64), (kh, kw), self.stride, self.padding, self.dilation, pad, (r0, r1)
            )
            n = B * (r1 - r0) * wo
            for g in range(self.groups):
                sub = oracle._group_view(self, g, Og)
                c = cols[:, :, :, g * Cg : (g + 1) * Cg].reshape(n, -1)
                v = valid[:, :, :, g * Cg : (g + 1) * Cg].reshape(n, -1)
                yg = prods_sum(c, v, sub, g * Og) + b[g * Og : (g + 1) * Og]
                y[:, r0:r1, :, g * Og : (g + 1) * Og] = yg.reshape(B, r1 - r0, wo, Og)
        return y.transpose(0, 3, 1, 2)


__all__ = ["MacLayer", "Linear", "Conv2d", "DATAPATHS"]
