"""Reusable hypothesis strategies: random *valid* integer layers and their inputs.

Every strategy draws a layer through the public builders (so tables come from
nupes_sim.tables exactly as in production) and then optionally swaps in integer parts
(bias, per-channel requant tables) with dataclasses.replace, which re-runs the layer's
checks. Configurations the builders reject (e.g. a LUT beyond 2^52) are discarded with
`reject()`; the ranges are chosen so that this is rare.

Use: ``layer, inputs = data.draw(mac_case())`` etc.; inputs is a tuple for run_layer.
"""

import dataclasses

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from nupes_sim.formats import CodebookFormat, PowerFormat, UniformFormat, UniformRange, UniformWeightFormat
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.rounding import HOST_MODES, RESCALE_MODES
from nupes_sim.tables import rescale_table, threshold_table

ROUNDINGS = sorted(HOST_MODES)  # table (LUT, bias) roundings
RESCALE_ROUNDINGS = sorted(RESCALE_MODES)  # + double_round
DETERMINISTIC = [r for r in ROUNDINGS if r != "stochastic"]
WIDTHS = [8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 52, 53, 54, 62, 63, 64]
EXPONENTS = [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]


def reject():
    assume(False)


def exponents():
    return st.one_of(st.sampled_from(EXPONENTS), st.floats(0.1, 4.0))


@st.composite
def power_format(draw, bits=None, signed=None, granularity="tensor", channels=1, k=1, full_range=None):
    """A power format; signed ones are symmetric or full range (the code -2^(b-1) too)."""
    b = draw(st.integers(2, 8)) if bits is None else bits
    s = draw(st.booleans()) if signed is None else signed
    full = (draw(st.booleans()) if full_range is None else full_range) and s
    a = draw(exponents())
    qmax = 2 ** (b - 1) - 1 if s else 2**b - 1
    # real range: the largest code decodes to about top = (scale*qmax)^(1/a)
    top = draw(st.sampled_from([0.01, 0.1, 0.5, 1.0, 2.0, 4.0]))
    base = top**a / qmax
    if granularity == "tensor":
        scale = np.array([base])
        return PowerFormat(b, s, a, scale, full_range=full)
    if granularity == "channel":
        f = draw(st.lists(st.floats(0.25, 4.0), min_size=channels, max_size=channels))
        return PowerFormat(b, s, a, base * np.array(f), "channel", full_range=full)
    g = draw(st.sampled_from([d for d in range(1, k + 1) if k % d == 0]))
    f = draw(st.lists(st.floats(0.25, 4.0), min_size=channels * (k // g), max_size=channels * (k // g)))
    return PowerFormat(b, s, a, base * np.array(f).reshape(channels, k // g), "group", g, full_range=full)


@st.composite
def uniform_format(draw, bits=None, signed=None):
    b = draw(st.integers(2, 8)) if bits is None else bits
    s = draw(st.booleans()) if signed is None else signed
    lo, hi = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if s else (0, 2**b - 1)
    zp = draw(st.integers(lo, hi))
    scale = draw(st.sampled_from([2.0**-6, 0.01, 0.1, 1.0]))
    return UniformFormat(b, s, scale, zp)


@st.composite
def uniform_weight_format(draw, granularity="channel", channels=1):
    """Uniform weights with a zero point per tensor or per channel (operand datapath only)."""
    b = draw(st.integers(2, 8))
    s = draw(st.booleans())
    r = UniformRange(b, s)
    n = 1 if granularity == "tensor" else channels
    zp = draw(st.lists(st.integers(r.qmin, r.qmax), min_size=n, max_size=n))
    sc = draw(st.lists(st.sampled_from([2.0**-6, 0.01, 0.1, 1.0]), min_size=n, max_size=n))
    return UniformWeightFormat(b, s, np.array(sc), np.array(zp, np.int64), granularity)


@st.composite
def codebook_format(draw, granularity="channel", channels=1, k=1):
    """Codebook weights: per tensor/channel/group tables of 2^b reals (any order, repeats,
    exact zeros, ties at the LUT's fractional bits), operand datapath only."""
    b = draw(st.integers(2, 8))
    n = 2**b
    g = draw(st.sampled_from([d for d in range(1, k + 1) if k % d == 0])) if granularity == "group" else 0
    T = {"tensor": 1, "channel": channels, "group": channels * (k // max(g, 1))}[granularity]
    top = draw(st.sampled_from([0.01, 0.5, 1.0, 4.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    v = r.uniform(-top, top, (T, n))
    kind = draw(st.sampled_from(["random", "ties", "sorted"]))
    if kind == "ties":
        v = np.round(v * 64) / 64 + 2.0**-7  # halfway at 6 fractional bits
    elif kind == "sorted":
        v = np.sort(v, axis=1)
        v[:, 0] = 0.0
    shape = {"tensor": (1, n), "channel": (channels, n), "group": (channels, k // max(g, 1), n)}
    return CodebookFormat(b, v.reshape(shape[granularity]), granularity, g)


@st.composite
def accumulator(draw, k=8):
    width = draw(st.one_of(st.sampled_from(WIDTHS), st.integers(8, 64)))
    overflow = draw(st.sampled_from(["wrap", "saturate", "exact"]))
    tile = draw(st.one_of(st.just(0), st.integers(1, max(k + 1, 2))))
    return Accumulator(width, overflow, tile)


@st.composite
def requant_spec(draw, acc, power_ok=True):
    """Keyword arguments of a builder's output side: none, thresholds or rescale."""
    kinds = ["none", "rescale"] + (["thresholds"] if power_ok else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return dict(out_fmt=None)
    if kind == "thresholds":
        fmt = draw(power_format(granularity="tensor"))
        out = dict(
            out_fmt=fmt, requant_rounding=draw(st.sampled_from(DETERMINISTIC)), relu=draw(st.booleans())
        )
        if draw(st.booleans()):
            out["clip_max"] = draw(st.sampled_from([0.5, 1.0, 6.0]))
        return out
    if acc.width > 62:
        return dict(out_fmt=None)
    fmt = draw(uniform_format())
    mb = draw(st.integers(1, min(31, 63 - acc.width)))
    return dict(
        out_fmt=fmt,
        requant_rounding=draw(st.sampled_from(RESCALE_ROUNDINGS)),
        relu=draw(st.booleans()),
        mult_bits=mb,
    )


def _try(fn):
    try:
        return fn()
    except ValueError:
        reject()


@st.composite
def codes(draw, rng_obj, shape):
    """Codes of a CodeRange: random, or a boundary pattern (all max, all min, zeros, mixed ends)."""
    lo, hi = rng_obj.qmin, rng_obj.qmax
    kind = draw(st.sampled_from(["random", "random", "random", "max", "min", "zero", "ends"]))
    seed = draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    if kind == "random":
        return r.integers(lo, hi + 1, size=shape, dtype=np.int64)
    if kind == "max":
        return np.full(shape, hi, np.int64)
    if kind == "min":
        return np.full(shape, lo, np.int64)
    if kind == "zero":
        return np.full(shape, min(max(0, lo), hi), np.int64)
    return r.choice(np.array([lo, hi], np.int64), size=shape)


@st.composite
def _mac_common(draw, cls, w_shape, k, extra):
    O = w_shape[0]
    datapath = draw(st.sampled_from(["operand", "product"]))
    gran = draw(st.sampled_from(["tensor", "channel", "group"]))
    wfmt = draw(power_format(granularity=gran, channels=O, k=k))
    if datapath == "operand" and gran != "group" and draw(st.integers(0, 3)) == 0:
        wfmt = draw(uniform_weight_format(gran, O))
    elif datapath == "operand" and draw(st.integers(0, 4)) == 0:
        wfmt = draw(codebook_format(gran, O, k))
    if datapath == "product":
        xfmt = draw(power_format(granularity="tensor"))
    else:
        xfmt = draw(st.one_of(power_format(granularity="tensor"), uniform_format()))
    acc = draw(accumulator(k))
    rq = draw(requant_spec(acc))
    w = draw(codes(wfmt.range, w_shape))
    kw = dict(
        datapath=datapath,
        w_frac_bits=draw(st.integers(0, 20)),
        x_frac_bits=draw(st.integers(0, 16)),
        product_frac_bits=draw(st.integers(0, 24)),
        rounding=draw(st.sampled_from(ROUNDINGS)),
        seed=draw(st.integers(0, 2**32 - 1)),
        tensor_id=draw(st.integers(0, 2**32 - 3)),
        acc=acc,
        **rq,
        **extra,
    )
    layer = _try(lambda: cls.build("l", w, wfmt, xfmt, **kw))
    # integer bias anywhere in the accumulator range (boundaries included)
    bias_kind = draw(st.sampled_from(["none", "none", "small", "edge"]))
    if bias_kind != "none":
        lo, hi = acc.lo, acc.hi
        if bias_kind == "small":
            b = np.array(draw(st.lists(st.integers(-1000, 1000), min_size=O, max_size=O)), dtype=object)
            b = np.clip(b, lo, hi)
        else:
            b = np.array(
                draw(st.lists(st.sampled_from([lo, lo + 1, -1, 0, 1, hi - 1, hi]), min_size=O, max_size=O)),
                dtype=object,
            )
        layer = _try(lambda: dataclasses.replace(layer, bias=np.array([int(v) for v in b], np.int64)))
    # per-channel requant rows (one threshold row / multiplier per output channel)
    if rq.get("out_fmt") is not None and draw(st.booleans()):
        units = layer.unit * np.array(draw(st.lists(st.floats(0.5, 2.0), min_size=O, max_size=O)))
        if isinstance(rq["out_fmt"], PowerFormat):
            req = _try(
                lambda: threshold_table(
                    units, rq["out_fmt"], acc.width, rq["requant_rounding"], rq["relu"], rq.get("clip_max")
                )
            )
        else:
            req = _try(
                lambda: rescale_table(
                    units, rq["out_fmt"], acc.width, rq["mult_bits"], rq["requant_rounding"], rq["relu"]
                )
            )
        layer = _try(lambda: dataclasses.replace(layer, requant=req))
    return layer, xfmt


@st.composite
def linear_case(draw, max_batch=3, max_out=4, max_k=8):
    O = draw(st.integers(1, max_out))
    K = draw(st.integers(1, max_k))
    layer, xfmt = draw(_mac_common(Linear, (O, K), K, {}))
    B = draw(st.integers(0, max_batch))
    x = draw(codes(xfmt.range, (B, K)))
    return layer, (x,)


@st.composite
def conv_case(draw):
    groups = draw(st.integers(1, 2))
    cg = draw(st.integers(1, 2))
    og = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 5))
    W = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 5))
    O = groups * og
    extra = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer, xfmt = draw(_mac_common(Conv2d, (O, cg, kh, kw), cg * kh * kw, extra))
    B = draw(st.integers(1, 2))
    x = draw(codes(xfmt.range, (B, cg * groups, H, W)))
    return layer, (x,)


@st.composite
def add_case(draw):
    fa = draw(power_format(granularity="tensor"))
    fb = draw(power_format(granularity="tensor"))
    acc = draw(accumulator(2))
    rq = draw(requant_spec(acc))
    layer = _try(
        lambda: Add.build(
            "add",
            fa,
            fb,
            frac_bits=draw(st.integers(0, 24)),
            acc=acc,
            rounding=draw(st.sampled_from(ROUNDINGS)),
            seed=draw(st.integers(0, 2**32 - 1)),
            tensor_id=draw(st.integers(0, 2**32 - 2)),
            **rq,
        )
    )
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4)))
    return layer, (draw(codes(fa.range, shape)), draw(codes(fb.range, shape)))


@st.composite
def avgpool_case(draw):
    fmt = draw(st.one_of(power_format(granularity="tensor"), uniform_format()))
    B, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    acc = draw(accumulator(H * W))
    rq = draw(requant_spec(acc))
    rq.pop("relu", None)
    rq.pop("clip_max", None)
    if draw(st.booleans()):
        kernel, window = None, H * W
        stride = None
    else:
        kernel = (draw(st.integers(1, H)), draw(st.integers(1, W)))
        stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 2), st.integers(1, 2))))
        window = None
    layer = _try(
        lambda: AvgPool2d.build(
            "avg",
            fmt,
            frac_bits=draw(st.integers(0, 20)),
            acc=acc,
            kernel=kernel,
            stride=stride,
            window=window,
            rounding=draw(st.sampled_from(ROUNDINGS)),
            seed=draw(st.integers(0, 2**32 - 1)),
            tensor_id=draw(st.integers(0, 2**32 - 1)),
            **rq,
        )
    )
    return layer, (draw(codes(fmt.range, (B, C, H, W))),)


@st.composite
def maxpool_case(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    layer = MaxPool2d("mp", (kh, kw), stride, padding)
    H = draw(st.integers(max(1, kh - 2 * padding[0]), 6))
    W = draw(st.integers(max(1, kw - 2 * padding[1]), 6))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        -128, 256, size=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    )
    return layer, (x,)


@st.composite
def flatten_case(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=2, max_size=4)))
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(-8, 8, size=shape)
    return Flatten("fl"), (x,)


def any_case():
    return st.one_of(linear_case(), conv_case(), add_case(), avgpool_case(), maxpool_case(), flatten_case())
