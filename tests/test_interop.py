"""Bit-exact equivalences with outside implementations (docs/ARITHMETIC.md §6(ii)):
TOSA reference model (PyPI tosa-tools) RESCALE SINGLE_ROUND = half_up, DOUBLE_ROUND =
double_round, and CONV2D / DEPTHWISE_CONV2D / MATMUL accumulators + RESCALE = our layers;
ONNX Runtime QLinearConv / QLinearMatMul / QuantizeLinear = half_even. Each test skips with a
reason when its package cannot be imported. Cases are small (a few thousand elements)."""

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from nupes_sim import oracle
from nupes_sim import primitives as P
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Conv2d, Linear

# weights: power codes with a = 1, s = 1 and F = 0 decode to the integer code itself; inputs:
# uniform int8 with zero point z decode to q - z: the accumulator is the plain int8 dot product
W_FMT = PowerFormat(8, True, 1.0, 1.0)


def _tosa():
    ts = pytest.importorskip("tosa_serializer", reason="tosa-tools (TOSA reference model) not installed")
    trm = pytest.importorskip(
        "tosa_reference_model", reason="tosa-tools (TOSA reference model) not installed"
    )
    return ts, trm


def _ort():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    return ort, onnx


class _Tosa:
    """A one-block TOSA graph: placeholders in order, constants, operators, one output."""

    def __init__(self):
        self.ts, self.trm = _tosa()
        self.ser = self.ts.TosaSerializer("")
        self.inputs = []

    def placeholder(self, arr, dtype):
        self.inputs.append(arr)
        return self.ser.addPlaceholder(list(arr.shape), getattr(self.ts.DType, dtype)).name

    def const(self, arr, dtype):
        return self.ser.addConst(list(arr.shape), getattr(self.ts.DType, dtype), arr).name

    def rescale_op(self, src, shape, mult, shift, zp_out, mode, out_dtype="INT8", out=True):
        ts = self.ts
        ins = [
            src,
            self.const(np.asarray(mult, np.int32), "INT32"),
            self.const(np.asarray(shift, np.int8), "INT8"),
            self.const(np.array([0], np.int32), "INT32"),
            self.const(np.array([zp_out], np.int8), "INT8"),
        ]
        dst = (
            self.ser.addOutput(shape, getattr(ts.DType, out_dtype))
            if out
            else self.ser.addIntermediate(shape, getattr(ts.DType, out_dtype))
        ).name
        attr = ts.TosaSerializerAttribute()
        rm = {"half_up": ts.RoundingMode.SINGLE_ROUND, "double_round": ts.RoundingMode.DOUBLE_ROUND}[mode]
        attr.RescaleAttribute(True, rm, len(mult) > 1, False, False)
        self.ser.addOperator(ts.Op.RESCALE, ins, [dst], attr)
        return dst

    def run(self):
        outs, status = self.trm.run(self.ser.serialize(), self.inputs)
        assert status == self.trm.GraphStatus.TOSA_VALID, status
        return outs[0]


def _rescale_cases(rng, n):
    """(value, multiplier, shift) within TOSA's preconditions (value in [-2^(s-1), 2^(s-1)),
    2 <= s <= 62, 31-bit multiplier), with exact ties on purpose in half of them."""
    sh = rng.integers(2, 63, n)
    m = rng.integers(2**30, 2**31, n)
    lim = np.minimum(2.0 ** (sh - 1), 2.0**31)
    v = np.floor(rng.uniform(-1, 1, n) * lim).astype(np.int64)
    v = np.clip(v, -(2**31), 2**31 - 1)
    # ties: m = 2^30 and v·2^30 ≡ 2^(s-1) mod 2^s  <=> v odd multiple of 2^(s-31) (s > 31)
    tie = rng.random(n) < 0.5
    m = np.where(tie, 2**30, m)
    for i in np.flatnonzero(tie):
        s = int(sh[i])
        step = 2 ** max(s - 31, 0)
        k = int(rng.integers(-(2 ** min(s - 1, 31)) // step, (2 ** min(s - 1, 31)) // step)) | 1
        v[i] = int(np.clip(k * step, -(2**31), 2**31 - 1))
    return v, m, sh


@pytest.mark.parametrize("mode", ["half_up", "double_round"])
def test_tosa_rescale_rounding_modes(mode):
    """Elementwise RESCALE (per channel: one multiplier/shift per element) against
    primitives.rescale and the oracle's independent rounding."""
    g = _Tosa()
    rng = np.random.default_rng(15)
    n = 3000
    v, m, sh = _rescale_cases(rng, n)
    zp = -5
    src = g.placeholder(v.astype(np.int32).reshape(1, n), "INT32")
    g.rescale_op(src, [1, n], m, sh, zp, mode)
    got = g.run().reshape(-1).astype(np.int64)
    mid = {"half_up": P.HALF_UP, "double_round": P.DOUBLE_ROUND}[mode]
    ours = [P.rescale(int(a), int(b), int(c), zp, -128, 127, mid, 0) for a, b, c in zip(v, m, sh)]
    orc = [
        min(max(oracle.round_div_pow2(int(a) * int(b), int(c), mid) + zp, -128), 127)
        for a, b, c in zip(v, m, sh)
    ]
    assert got.tolist() == ours == orc
    other = P.HALF_UP if mode == "double_round" else P.HALF_EVEN
    differ = sum(
        P.rescale(int(a), int(b), int(c), zp, -128, 127, other, 0) != g_ for a, b, c, g_ in zip(v, m, sh, got)
    )
    assert differ > 20  # the ties separate the modes: the comparison can fail


def _conv_layer(rng, depthwise, mode, zp_x):
    C = 3
    if depthwise:
        M = 2
        O, Cg, groups = C * M, 1, C
    else:
        O, Cg, groups = 4, C, 1
    kh, kw = 3, 2
    w = rng.integers(-127, 128, (O, Cg, kh, kw))
    xf = UniformFormat(8, True, 1.0, zp_x)
    out = UniformFormat(8, True, float(rng.choice([256.0, 300.0, 611.0])), int(rng.integers(-10, 10)))
    layer = Conv2d.build(
        "c",
        w,
        W_FMT,
        xf,
        w_frac_bits=0,
        x_frac_bits=0,
        acc=Accumulator(32, "wrap"),
        out_fmt=out,
        requant_rounding=mode,
        mult_bits=31,
        padding=(1, 1),
        groups=groups,
        stride=(1, 1),
        dilation=(1, 2),
    )
    bias = rng.integers(-5000, 5000, O)
    return dataclasses.replace(layer, bias=bias.astype(np.int64)), w, bias


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("mode", ["half_up", "double_round"])
def test_tosa_conv2d_and_depthwise_then_rescale(depthwise, mode):
    rng = np.random.default_rng(16 + depthwise)
    zp_x = -3
    layer, w, bias = _conv_layer(rng, depthwise, mode, zp_x)
    B, C, H, W = 2, 3, 6, 7
    x = rng.integers(-128, 128, (B, C, H, W))
    want = oracle.run_layer(layer, x)
    O = w.shape[0]
    ho, wo = want["acc"].shape[2:]
    g = _Tosa()
    ts = g.ts
    src = g.placeholder(x.transpose(0, 2, 3, 1).astype(np.int8).copy(), "INT8")  # NHWC
    if depthwise:  # [KH, KW, C, M]
        wt = w.reshape(C, O // C, *w.shape[2:]).transpose(2, 3, 0, 1)
    else:  # OHWI
        wt = w.transpose(0, 2, 3, 1)
    ins = [
        src,
        g.const(wt.astype(np.int8).copy(), "INT8"),
        g.const(bias.astype(np.int32), "INT32"),
        g.const(np.array([zp_x], np.int8), "INT8"),
        g.const(np.array([0], np.int8), "INT8"),
    ]
    acc = g.ser.addIntermediate([B, ho, wo, O], ts.DType.INT32).name
    attr = ts.TosaSerializerAttribute()
    args = ([1, 1, 1, 1], [1, 1], [1, 2], False, ts.DType.INT32)
    (attr.DepthwiseConv2dAttribute if depthwise else attr.Conv2dAttribute)(*args)
    g.ser.addOperator(ts.Op.DEPTHWISE_CONV2D if depthwise else ts.Op.CONV2D, ins, [acc], attr)
    rq = layer.requant
    g.rescale_op(
        acc,
        [B, ho, wo, O],
        np.broadcast_to(rq.multiplier, (O,)),
        np.broadcast_to(rq.shift, (O,)),
        rq.zero_point,
        mode,
    )
    got = g.run().astype(np.int64).transpose(0, 3, 1, 2)
    assert (got == want["out"]).all()
    assert len(np.unique(want["out"])) > 30 and (np.abs(got) < 127).mean() > 0.8


@pytest.mark.parametrize("mode", ["half_up", "double_round"])
def test_tosa_matmul_then_rescale(mode):
    rng = np.random.default_rng(17)
    B, K, O = 5, 33, 7
    zp_x = 7
    w = rng.integers(-127, 128, (O, K))
    x = rng.integers(-128, 128, (B, K))
    out = UniformFormat(8, True, 500.0, 3)
    layer = Linear.build(
        "fc",
        w,
        W_FMT,
        UniformFormat(8, True, 1.0, zp_x),
        w_frac_bits=0,
        x_frac_bits=0,
        acc=Accumulator(32, "wrap"),
        out_fmt=out,
        requant_rounding=mode,
        mult_bits=31,
    )
    want = oracle.run_layer(layer, x)
    g = _Tosa()
    ts = g.ts
    a = g.placeholder(x.astype(np.int8).reshape(1, B, K), "INT8")
    ins = [
        a,
        g.const(w.T.astype(np.int8).reshape(1, K, O).copy(), "INT8"),
        g.const(np.array([zp_x], np.int8), "INT8"),
        g.const(np.array([0], np.int8), "INT8"),
    ]
    acc = g.ser.addIntermediate([1, B, O], ts.DType.INT32).name
    attr = ts.TosaSerializerAttribute()
    attr.MatMulAttribute()
    g.ser.addOperator(ts.Op.MATMUL, ins, [acc], attr)
    rq = layer.requant
    g.rescale_op(acc, [1, B, O], rq.multiplier, rq.shift, rq.zero_point, mode)
    got = g.run().astype(np.int64).reshape(B, O)
    assert (got == want["out"]).all()
    assert (np.abs(got) < 127).mean() > 0.8


# ---- ONNX Runtime: QLinear ops requantize in float32, which is exact when the combined scale
# is a short dyadic number and |acc·scale| < 2^24: then ORT rounds the exact real half to even.


def _ort_run(ort, onnx, nodes, inputs, initializers, outputs):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess


def _qparams(onnx, prefix, scale, zp):
    from onnx import numpy_helper

    return [
        numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(np.array(zp, np.int8), f"{prefix}_zp"),
    ]


@pytest.mark.parametrize("x_scale, y_scale", [(1.0, 2.0**9), (3.0, 2.0**11)])
def test_ort_qlinear_matmul_is_half_even(x_scale, y_scale):
    """ORT's float32 multiplier x_scale/y_scale is exact here (1/512, 3/2048)."""
    ort, onnx = _ort()
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(18)
    B, K, O = 6, 40, 9
    zp_x, zp_y = -4, 2
    w = rng.integers(-127, 128, (O, K))
    x = rng.integers(-128, 128, (B, K)).astype(np.int8)
    # a constructed tie in out[0, 0]: acc·f = 64·d·f is 0.5 (f = 1/512) or 4.5 (f = 3/2048)
    w[0, 0], x[0] = 64, zp_x
    x[0, 0] = zp_x + (4 if x_scale == 1.0 else 48)
    layer = Linear.build(
        "fc",
        w,
        W_FMT,
        UniformFormat(8, True, x_scale, zp_x),
        w_frac_bits=0,
        x_frac_bits=0,
        acc=Accumulator(32, "wrap"),
        out_fmt=UniformFormat(8, True, y_scale, zp_y),
        requant_rounding="half_even",
        mult_bits=31,
    )
    want = oracle.run_layer(layer, x)["out"]
    inits = (
        _qparams(onnx, "a", x_scale, zp_x)
        + _qparams(onnx, "b", 1.0, 0)
        + _qparams(onnx, "y", y_scale, zp_y)
        + [numpy_helper.from_array(w.T.astype(np.int8).copy(), "b")]
    )
    node = helper.make_node(
        "QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale", "y_zp"], ["y"]
    )
    sess = _ort_run(
        ort,
        onnx,
        [node],
        [helper.make_tensor_value_info("a", TensorProto.INT8, [B, K])],
        inits,
        [helper.make_tensor_value_info("y", TensorProto.INT8, [B, O])],
    )
    got = sess.run(None, {"a": x})[0].astype(np.int64)
    assert (got == want).all()
    assert (np.abs(got) < 127).mean() > 0.9  # mostly unsaturated
    acc = oracle.run_layer(dataclasses.replace(layer, requant=None), x)["acc"].reshape(-1)
    ties = [
        v for v in acc if (Fraction(int(v)) * Fraction(x_scale) / Fraction(y_scale)) % 1 == Fraction(1, 2)
    ]
    assert ties  # exact ties occur, so half_even is really what ORT does
    away = oracle.run_layer(
        dataclasses.replace(layer, requant=dataclasses.replace(layer.requant, rounding=P.HALF_AWAY)), x
    )
    assert (away["out"] != got).any()


def test_ort_qlinear_conv_is_half_even():
    ort, onnx = _ort()
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(19)
    zp_x, zp_y, y_scale = 5, -1, 2.0**9
    O, C, kh, kw = 4, 3, 3, 3
    w = rng.integers(-127, 128, (O, C, kh, kw))
    bias = rng.integers(-3000, 3000, O)
    layer = Conv2d.build(
        "c",
        w,
        W_FMT,
        UniformFormat(8, True, 1.0, zp_x),
        w_frac_bits=0,
        x_frac_bits=0,
        acc=Accumulator(32, "wrap"),
        out_fmt=UniformFormat(8, True, y_scale, zp_y),
        requant_rounding="half_even",
        mult_bits=31,
        padding=(1, 1),
        stride=(2, 1),
    )
    layer = dataclasses.replace(layer, bias=bias.astype(np.int64))
    x = rng.integers(-128, 128, (2, C, 7, 6)).astype(np.int8)
    want = oracle.run_layer(layer, x)["out"]
    inits = (
        _qparams(onnx, "x", 1.0, zp_x)
        + _qparams(onnx, "w", 1.0, 0)
        + _qparams(onnx, "y", y_scale, zp_y)
        + [
            numpy_helper.from_array(w.astype(np.int8), "w"),
            numpy_helper.from_array(bias.astype(np.int32), "B"),
        ]
    )
    node = helper.make_node(
        "QLinearConv",
        ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp", "B"],
        ["y"],
        pads=[1, 1, 1, 1],
        strides=[2, 1],
        kernel_shape=[kh, kw],
    )
    sess = _ort_run(
        ort,
        onnx,
        [node],
        [helper.make_tensor_value_info("x", TensorProto.INT8, list(x.shape))],
        inits,
        [helper.make_tensor_value_info("y", TensorProto.INT8, list(want.shape))],
    )
    got = sess.run(None, {"x": x})[0].astype(np.int64)
    assert (got == want).all()
    assert (np.abs(got) < 127).mean() > 0.9 and len(np.unique(got)) > 30


def test_ort_quantize_linear_is_half_even():
    ort, onnx = _ort()
    from onnx import TensorProto, helper

    scale, zp = 2.0**-3, 3
    # every multiple of scale/2 in range: half of them are exact ties
    x = (np.arange(-600, 600) * (scale / 2)).astype(np.float32)
    inits = _qparams(onnx, "y", scale, zp)
    node = helper.make_node("QuantizeLinear", ["x", "y_scale", "y_zp"], ["y"])
    sess = _ort_run(
        ort,
        onnx,
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        inits,
        [helper.make_tensor_value_info("y", TensorProto.INT8, [x.size])],
    )
    got = sess.run(None, {"x": x})[0].astype(np.int64)
    fmt = UniformFormat(8, True, scale, zp)
    assert (got == fmt.encode(x.astype(np.float64), "half_even")).all()
    assert (got != fmt.encode(x.astype(np.float64), "half_away")).sum() > 100
