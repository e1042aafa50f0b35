"""Hypothesis strategies of valid transformer layers (nupes_sim.transformer) and their inputs.

Layers come from the public builders; configurations a builder refuses (a width proof
fails) are rejected. Shapes stay tiny: the same cases run under the CUDA simulator.
"""

import numpy as np
from hypothesis import strategies as st
from strategies import DETERMINISTIC, ROUNDINGS, _try, codes, power_format, uniform_format

from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator
from nupes_sim.transformer.layers import ElementwiseTable, Embedding, LayerNorm, MatMul, Softmax
from nupes_sim.transformer.tables import FUNCTIONS


def act_format(draw, signed=None, bits=None):
    return draw(st.one_of(power_format(bits=bits, signed=signed), uniform_format(bits=bits, signed=signed)))


@st.composite
def out_spec(draw):
    kind = draw(st.sampled_from(["none", "power", "uniform"]))
    if kind == "none":
        return dict(out_fmt=None)
    if kind == "power":
        return dict(out_fmt=draw(power_format()), requant_rounding=draw(st.sampled_from(DETERMINISTIC)))
    return dict(out_fmt=draw(uniform_format()), requant_rounding=draw(st.sampled_from(ROUNDINGS)))


@st.composite
def embedding_case(draw):
    fmt = act_format(draw)
    V, C = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    w = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(0, 1, (V, C))
    pos = draw(st.booleans())
    layer = Embedding.build("emb", w, fmt, positional=pos, rounding=draw(st.sampled_from(ROUNDINGS)))
    shape = (draw(st.integers(0, 3)), draw(st.integers(1, V)))
    idx = np.random.default_rng(draw(st.integers(0, 99))).integers(0, V, shape)
    return layer, (idx,)


@st.composite
def elementwise_case(draw):
    fin, fout = act_format(draw), act_format(draw)
    fn = draw(st.sampled_from(sorted(FUNCTIONS)))
    layer = _try(
        lambda: ElementwiseTable.build(
            "f", fin, fout, fn, rounding=draw(st.sampled_from(ROUNDINGS)), seed=draw(st.integers(0, 9))
        )
    )
    x = draw(codes(fin.range, (2, draw(st.integers(0, 4)), 3)))
    return layer, (x,)


@st.composite
def matmul_case(draw):
    datapath = draw(st.sampled_from(["operand", "product"]))
    if datapath == "product":
        fa, fb = draw(power_format(signed=True)), draw(power_format(signed=True))
    else:
        fa, fb = act_format(draw), act_format(draw)
    K = draw(st.integers(1, 5))
    width = draw(st.sampled_from([8, 9, 12, 16, 24, 32, 48, 64]))
    acc = Accumulator(width, draw(st.sampled_from(["wrap", "saturate", "exact"])), draw(st.integers(0, 3)))
    spec = draw(out_spec())
    if isinstance(spec["out_fmt"], UniformFormat) and width > 62:
        spec = dict(out_fmt=None)
    tb = draw(st.booleans())
    layer = _try(
        lambda: MatMul.build(
            "mm",
            fa,
            fb,
            k_max=K + draw(st.integers(0, 3)),
            datapath=datapath,
            a_frac_bits=draw(st.integers(0, 14)),
            b_frac_bits=draw(st.integers(0, 14)),
            product_frac_bits=draw(st.integers(0, 20)),
            acc=acc,
            alpha=draw(st.sampled_from([1.0, 0.125, 0.35])),
            transpose_b=tb,
            rounding=draw(st.sampled_from(ROUNDINGS)),
            mult_bits=min(31, 63 - width),
            seed=draw(st.integers(0, 2**32 - 1)),
            tensor_id=draw(st.integers(0, 99)),
            **spec,
        )
    )
    lead = draw(st.sampled_from([(), (2,), (1, 2)]))
    M, N = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    a = draw(codes(fa.range, lead + (M, K)))
    b = draw(codes(fb.range, lead + ((N, K) if tb else (K, N))))
    return layer, (a, b)


@st.composite
def softmax_case(draw):
    bits = draw(st.integers(2, 8))
    s = draw(st.sampled_from([0.05, 0.125, 0.5, 1.0, 3.0]))
    xf = UniformFormat(bits, draw(st.booleans()), s, 0)
    F = draw(st.integers(0, 16))
    max_len = draw(st.integers(4, 9))
    width = max(8, (max_len << F).bit_length() + 1 + draw(st.integers(0, 3)))
    if width > 64:
        width = 64
    acc = Accumulator(width, draw(st.sampled_from(["wrap", "saturate", "exact"])))
    prob_rounding = draw(st.sampled_from(ROUNDINGS))
    spec = draw(out_spec())
    masked, causal = draw(st.booleans()), draw(st.booleans())
    layer = _try(
        lambda: Softmax.build(
            "sm",
            xf,
            max_len=max_len,
            exp_frac_bits=F,
            prob_bits=draw(st.integers(0, 20)),
            acc=acc,
            causal=causal,
            masked=masked,
            rounding=draw(st.sampled_from(ROUNDINGS)),
            prob_rounding=prob_rounding,
            seed=draw(st.integers(0, 2**32 - 1)),
            tensor_id=draw(st.integers(0, 99)),
            **spec,
        )
    )
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tk = draw(st.integers(1, max_len))
    tq = draw(st.integers(1, tk)) if causal else draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["random", "equal", "dominant"]))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = r.integers(xf.range.qmin, xf.range.qmax + 1, (B, H, tq, tk))
    if kind == "equal":
        x[:] = x.reshape(-1)[0]
    elif kind == "dominant":
        x[:] = xf.range.qmin
        x[..., r.integers(0, tk)] = xf.range.qmax
    inputs = (x,)
    if masked:
        m = r.integers(0, 2, (B, tk))
        if draw(st.booleans()):
            m[0] = 0  # a fully masked row
        inputs = (x, m)
    return layer, inputs


@st.composite
def layernorm_case(draw):
    xf = act_format(draw, signed=True)
    C = draw(st.integers(1, 7))
    r = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gamma = r.normal(1, 0.5, C) if draw(st.booleans()) else None
    beta = r.normal(0, 0.5, C) if draw(st.booleans()) else None
    spec = draw(out_spec())
    layer = _try(
        lambda: LayerNorm.build(
            "ln",
            xf,
            channels=C,
            gamma=gamma,
            beta=beta,
            eps=draw(st.sampled_from([1e-12, 1e-5, 0.1])),
            x_lut_bits=draw(st.integers(4, 20)),
            inv_frac_bits=draw(st.one_of(st.none(), st.integers(0, 24))),
            gamma_bits=draw(st.integers(1, 20)),
            rounding=draw(st.sampled_from(ROUNDINGS)),
            mean_rounding=draw(st.sampled_from(ROUNDINGS)),
            seed=draw(st.integers(0, 2**32 - 1)),
            tensor_id=draw(st.integers(0, 99)),
            **spec,
        )
    )
    x = draw(codes(xf.range, (draw(st.integers(0, 2)), draw(st.integers(1, 3)), C)))
    if draw(st.booleans()) and x.size:
        x[0, 0] = x[0, 0, 0]  # a constant row: variance 0
    return layer, (x,)


def power(bits, signed, a, top):
    M = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return PowerFormat(bits, signed, a, np.array([top**a / M]))


ALL_CASES = {
    "embedding": embedding_case,
    "elementwise": elementwise_case,
    "matmul": matmul_case,
    "softmax": softmax_case,
    "layernorm": layernorm_case,
}
