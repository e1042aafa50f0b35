"""Pooling layers: MaxPool2d on codes, AvgPool2d through the accumulator (docs/ARITHMETIC.md §8)."""

from dataclasses import dataclass, field

import numpy as np

from ..formats import CodeRange
from ..rounding import DEFAULT
from ..tables import DecodeTable, decode_table
from ..validate import check_int
from .base import (
    INT64_LIMIT,
    AccLayer,
    Accumulator,
    Layer,
    build_requant,
    check_acc,
    check_decode_table,
    check_ids,
    check_meta,
    check_name,
    check_per_tensor,
    check_range,
    check_rank,
    check_requant,
    check_requant_input,
    check_unit,
    format_meta,
    maxabs,
    pair,
    range_info,
    register,
    set_fields,
    table_info,
    window,
    window_codes,
)
from .elementwise import _decode


def _pool_hw(name, h, w, kernel, stride, padding):
    ho = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    wo = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{name}: input {h}x{w} is smaller than the {kernel[0]}x{kernel[1]} window")
    return ho, wo


def _pool_feeding(name, multi, x, kernel, stride, padding):
    b, c, oh, ow = multi
    rows = window(oh, stride[0], padding[0], 1, kernel[0])
    cols = window(ow, stride[1], padding[1], 1, kernel[1])
    return dict(
        input=name, batch=b, channel=c, rows=rows, cols=cols, window_codes=window_codes(x, b, c, rows, cols)
    )


@register
@dataclass(frozen=True, eq=False)
class MaxPool2d(Layer):
    """Max over the window on codes (valid because every decode is non-decreasing in the code).

    Padded taps are ignored (they never win)."""

    passthrough = True

    name: str
    kernel: tuple
    stride: tuple = None
    padding: tuple = (0, 0)

    def __post_init__(self):
        check_name(self)
        n = self.name
        kernel = pair(f"{n}.kernel", self.kernel, 1)
        set_fields(
            self,
            kernel=kernel,
            stride=pair(f"{n}.stride", self.stride if self.stride is not None else kernel, 1),
            padding=pair(f"{n}.padding", self.padding, 0),
        )
        if self.padding[0] * 2 > self.kernel[0] or self.padding[1] * 2 > self.kernel[1]:
            raise ValueError(
                f"{n}.padding={self.padding} is not allowed: at most half the kernel {self.kernel}"
            )

    # ---- layer protocol (base.py) ----

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        check_rank(self.name, s, 4, "(B, C, H, W)")
        return s[:2] + _pool_hw(self.name, s[2], s[3], self.kernel, self.stride, self.padding)

    def golden_params(self):
        return {}, dict(kernel=list(self.kernel), stride=list(self.stride), padding=list(self.padding))

    def feeding(self, multi, inputs, input_names):
        return _pool_feeding(input_names[0], multi, inputs[0], self.kernel, self.stride, self.padding)


@register
@dataclass(frozen=True, eq=False)
class AvgPool2d(AccLayer):
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
        check_name(self)
        n = self.name
        check_acc(f"{n}.acc", self.acc)
        check_meta(n, self.meta)
        check_range(f"{n}.x_range", self.x_range)
        check_decode_table(f"{n}.x_table", self.x_table, self.x_range, rows=1)
        check_requant(self.requant, f"{n}.requant", (1,))
        check_ids(n, self)
        set_fields(self, unit=check_unit(f"{n}.unit", self.unit))
        if self.kernel is not None:
            kernel = pair(f"{n}.kernel", self.kernel, 1)
            stride = pair(f"{n}.stride", self.stride if self.stride is not None else kernel, 1)
            set_fields(self, kernel=kernel, stride=stride, window=kernel[0] * kernel[1])
        elif self.stride is not None:
            set_fields(self, stride=pair(f"{n}.stride", self.stride, 1))
        set_fields(self, window=check_int(f"{n}.window", self.window, 1, None))
        worst = maxabs(self.x_table.lut) * self.window
        if worst > INT64_LIMIT:
            raise ValueError(f"{n}: worst-case window sum does not fit int64")
        bound = np.array([worst], np.int64)
        bound.setflags(write=False)
        set_fields(self, bound=bound)
        check_requant_input(n, self.requant, self.acc, worst)

    @classmethod
    def build(
        cls,
        name,
        x_fmt,
        frac_bits=12,
        acc=None,
        kernel=None,
        stride=None,
        window=None,
        out_fmt=None,
        rounding=DEFAULT,
        requant_rounding=None,
        mult_bits=31,
        seed=0,
        tensor_id=0,
    ):
        acc = acc or Accumulator()
        check_per_tensor(f"{name}: x_fmt", x_fmt)
        xt = decode_table(x_fmt, frac_bits, rounding, seed, tensor_id)
        if kernel is not None:
            k = pair(f"{name}.kernel", kernel, 1)
            window = k[0] * k[1]
        if window is None:
            raise ValueError(f"{name}: global average pooling needs window = H*W of its input")
        window = check_int(f"{name}.window", window, 1, None)
        rq = build_requant(
            xt.unit / window, out_fmt, acc, requant_rounding or rounding, False, None, mult_bits
        )
        meta = {"x_format": format_meta(x_fmt), "out_format": format_meta(out_fmt)}
        return cls(
            name, x_fmt.range, xt, acc, kernel, stride, rq, window, xt.unit / window, tensor_id, seed, meta
        )

    def check_input(self, x):
        """Validate input codes (B, C, H, W) for every backend; returns (kernel, stride)."""
        self.x_range.check_codes(f"{self.name} input", x)
        return self._geometry(x.shape)

    def _geometry(self, shape):
        """(kernel, stride) for an input of `shape`; checks the rank and the window size."""
        if len(shape) != 4:
            raise ValueError(f"{self.name}: input must be (B, C, H, W), got shape {tuple(shape)}")
        kernel = self.kernel or tuple(shape[2:])
        stride = self.stride or kernel
        if kernel[0] * kernel[1] != self.window:
            raise ValueError(
                f"{self.name}: window {kernel} has {kernel[0] * kernel[1]} elements; "
                f"the requant tables were built for {self.window}"
            )
        return kernel, stride

    # ---- layer protocol (base.py) ----

    def in_ranges(self):
        return (self.x_range,)

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        kernel, stride = self._geometry(s)
        return s[:2] + _pool_hw(self.name, s[2], s[3], kernel, stride, (0, 0))

    def golden_params(self):
        ds, info = self._acc_params()
        ds["x_lut"] = self.x_table.lut
        info.update(
            input_range=range_info(self.x_range),
            kernel=None if self.kernel is None else list(self.kernel),
            stride=None if self.stride is None else list(self.stride),
            window=int(self.window),
            **table_info("x_lut", self.x_table),
        )
        return ds, info

    def feeding(self, multi, inputs, input_names):
        kernel, stride = self._geometry(inputs[0].shape)
        return _pool_feeding(input_names[0], multi, inputs[0], kernel, stride, (0, 0))

    def float_reference(self, inputs):
        x = inputs[0]
        v, r = _decode(self, "x_format", self.x_table, self.x_range, x)
        k, s = self._geometry(x.shape)
        ho, wo = _pool_hw(self.name, x.shape[2], x.shape[3], k, s, (0, 0))
        out = np.empty(x.shape[:2] + (ho, wo))
        for i in range(ho):
            for j in range(wo):
                out[:, :, i, j] = v[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]].mean(
                    axis=(2, 3)
                )
        return out / self.unit, "real formats" if r else "LUT values x unit"


__all__ = ["MaxPool2d", "AvgPool2d"]
