"""The transformer ops' oracle against the contract (ARITHMETIC.md §10-§16): worked examples,
every stage re-derived from its definition with Python integers, exhaustive tables for
b <= 8, boundary cases and the derived float64 error bounds."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tx_strategies import layernorm_case, matmul_case, power, softmax_case

from nupes_sim import oracle
from nupes_sim import primitives as P
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph, Node
from nupes_sim.layers import Accumulator, Add
from nupes_sim.rounding import HOST_MODES, MODES, hash_words
from nupes_sim.tables import DecodeTable
from nupes_sim.transformer import prims
from nupes_sim.transformer import tables as TT
from nupes_sim.transformer.layers import (
    ElementwiseTable,
    Embedding,
    LayerNorm,
    MatMul,
    PadMask,
    Reshape,
    Slice,
    Softmax,
    Transpose,
)
from nupes_sim.transformer.oracle import round_div

IDS = sorted(MODES[n] for n in HOST_MODES)  # double_round is a rescale rule only


# ---- §12 round_div and isqrt ------------------------------------------------------------------
WORKED = {  # round_div(-7, 2) = -3.5 and round_div(5, 4) = 1.25, round_div(6, 4) = 1.5, per mode
    P.HALF_EVEN: (-4, 1, 2),
    P.HALF_AWAY: (-4, 1, 2),
    P.HALF_UP: (-3, 1, 2),
    P.FLOOR: (-4, 1, 1),
    P.CEIL: (-3, 2, 2),
    P.TOWARD_ZERO: (-3, 1, 1),
}


@pytest.mark.parametrize("mode", sorted(WORKED))
def test_round_div_worked_examples(mode):
    got = tuple(f(n, d, mode, 0) for n, d in ((-7, 2), (5, 4), (6, 4)) for f in (round_div,))
    assert got == WORKED[mode]
    assert tuple(prims.round_div(n, d, mode, 0) for n, d in ((-7, 2), (5, 4), (6, 4))) == WORKED[mode]


def test_round_div_exhaustive_small():
    """Oracle (Fractions) == primitive (integer rules) for every n in [-50, 50], d in [1, 13], mode."""
    words = hash_words(1, 2, np.arange(101 * 13))
    for mode in IDS:
        for d in range(1, 14):
            for n in range(-50, 51):
                r = int(words[(n + 50) * 13 + d - 1])
                assert prims.round_div(n, d, mode, r) == round_div(n, d, mode, r), (n, d, mode)


def test_round_div_stochastic_rule():
    # rem/d = 1/4: up iff 2^32/4 > r, i.e. r < 2^30
    assert round_div(5, 4, P.STOCHASTIC, 2**30 - 1) == 2 and round_div(5, 4, P.STOCHASTIC, 2**30) == 1
    assert (
        prims.round_div(5, 4, P.STOCHASTIC, 2**30 - 1) == 2
        and prims.round_div(5, 4, P.STOCHASTIC, 2**30) == 1
    )


@given(st.integers(0, 2**63 - 1))
def test_isqrt(n):
    assert prims.isqrt(n) == math.isqrt(n)


def test_isqrt_boundaries():
    for k in (0, 1, 2, 3, 2**31 - 1, 2**31, 3037000499):
        for n in (k * k - 1, k * k, k * k + 1):
            if 0 <= n < 2**63:
                assert prims.isqrt(n) == math.isqrt(n), n
    assert prims.isqrt(2**63 - 1) == math.isqrt(2**63 - 1)


# ---- §10 Embedding ----------------------------------------------------------------------------
def test_embedding_worked_example_and_errors():
    fmt = PowerFormat(4, True, 1.0, np.array([0.1]))
    emb = Embedding.build("tok", np.array([[0.3, -0.04], [0.0, 0.7]]), fmt)
    assert emb.codes.tolist() == [[3, 0], [0, 7]]
    out = oracle.run_layer(emb, np.array([[1, 0, 1]]))["out"]
    assert out.shape == (1, 3, 2) and out[0, 0].tolist() == [0, 7] and out[0, 1].tolist() == [3, 0]
    with pytest.raises(ValueError, match=r"token index 2 at position \(0, 1\)"):
        oracle.run_layer(emb, np.array([[0, 2, 5]]))
    pos = Embedding.build("pos", np.array([[0.3, -0.04], [0.0, 0.7]]), fmt, positional=True)
    assert oracle.run_layer(pos, np.array([[9, 9]]))["out"][0].tolist() == [[3, 0], [0, 7]]
    with pytest.raises(ValueError, match="exceeds the 2 positions"):
        oracle.run_layer(pos, np.zeros((1, 3), np.int64))


# ---- §15 element-wise tables: exhaustive ---------------------------------------------------------
def _scalar_encode(fmt, y, mode):
    """Independent scalar encoder (half_even/floor/ceil only) for the exhaustive check."""
    if isinstance(fmt, UniformFormat):
        z = Fraction(y) / Fraction(fmt.scale)
        zp = fmt.zero_point
    else:
        z = Fraction(math.copysign(abs(y) ** fmt.exponent, y)) / Fraction(float(fmt.scale[0]))
        zp = 0
    q = {"half_even": round(z), "floor": math.floor(z), "ceil": math.ceil(z)}[mode] + zp
    return min(max(q, fmt.range.qmin), fmt.range.qmax)


@pytest.mark.parametrize("fn", sorted(TT.FUNCTIONS))
@pytest.mark.parametrize("bits", range(2, 9))
def test_elementwise_tables_exhaustive(fn, bits):
    scalar = {
        "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2))),
        "gelu_tanh": lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        "silu": lambda x: x / (1 + math.exp(-x)),
        "relu": lambda x: max(x, 0.0),
    }[fn]
    fins = [power(bits, True, 0.5, 4.0), UniformFormat(bits, True, 6.0 / 2**bits, 0)]
    fouts = [power(bits, True, 1.5, 4.0), UniformFormat(bits, False, 4.0 / 2**bits, 1)]
    for fin in fins:
        for fout in fouts:
            for mode in ("half_even", "floor", "ceil"):
                layer = ElementwiseTable.build("f", fin, fout, fn, rounding=mode)
                for q in fin.range.all_codes():
                    y = scalar(float(fin.decode_real(np.array([q]))[0]))
                    assert layer.table[q - fin.range.qmin] == _scalar_encode(fout, y, mode), (fn, q, mode)
                x = fin.range.all_codes()
                assert (oracle.run_layer(layer, x)["out"] == layer.table).all()


def test_elementwise_relu_worked_example_and_user_function():
    layer = ElementwiseTable.build("r", UniformFormat(4, True, 0.5), UniformFormat(4, False, 0.5), "relu")
    assert oracle.run_layer(layer, np.array([-3, 5]))["out"].tolist() == [0, 5]
    sq = ElementwiseTable.build(
        "sq", UniformFormat(4, True, 0.5), UniformFormat(4, False, 0.25), lambda x: x * x
    )
    assert oracle.run_layer(sq, np.array([-3, 2]))["out"].tolist() == [9, 4]
    with pytest.raises(ValueError, match="built-in"):
        ElementwiseTable.build("x", UniformFormat(4, True, 0.5), UniformFormat(4, False, 0.5), "tanhh")


# ---- §11 MatMul -------------------------------------------------------------------------------------
def test_matmul_worked_example():
    f = UniformFormat(8, True, 1.0)
    mm = MatMul.build("mm", f, f, k_max=2, a_frac_bits=0, b_frac_bits=0)
    r = oracle.run_layer(mm, np.array([[1, 2]]), np.array([[3], [4]]))
    assert r["acc"].tolist() == [[11]] and r["out"].tolist() == [[11]]


def _matmul_direct(layer, a, b):
    """Per output element with Python ints: the products and the accumulator sequence (§4)."""
    bk = np.swapaxes(b, -1, -2) if layer.transpose_b else b
    lead, (M, K), N = a.shape[:-2], a.shape[-2:], bk.shape[-1]
    acc = layer.acc
    ex = np.empty(lead + (M, N), np.int64)
    res = np.empty_like(ex)
    for i in np.ndindex(*lead, M, N):
        ps = []
        for k in range(K):
            qa, qb = int(a[i[:-1] + (k,)]), int(bk[i[:-2] + (k, i[-1])])
            if layer.datapath == "operand":
                ps.append(
                    int(layer.a_table.lut[0, qa - layer.a_range.qmin])
                    * int(layer.b_table.lut[0, qb - layer.b_range.qmin])
                )
            else:
                pt = layer.p_table
                idx = abs(qa) * abs(qb) if pt.by_product else abs(qa) * (pt.mx + 1) + abs(qb)
                ps.append(int(np.sign(qa) * np.sign(qb)) * int(pt.lut[0, idx]))
        e = sum(ps)
        ex[i] = e
        if acc.overflow == "exact":
            res[i] = e
        elif acc.overflow == "wrap":
            res[i] = oracle.wrap(e, acc.width)
        else:
            t = acc.tile or max(K, 1)
            s = 0
            for t0 in range(0, K, t):
                part = 0
                for p in ps[t0 : t0 + t]:
                    part = min(max(part + p, acc.lo), acc.hi)
                s = min(max(s + part, acc.lo), acc.hi) if acc.tile else part
            res[i] = s
    return ex, res


@given(matmul_case())
def test_matmul_matches_direct_computation(case):
    layer, (a, b) = case
    r = oracle.run_layer(layer, a, b)
    ex, res = _matmul_direct(layer, a, b)
    assert (r["acc_exact"] == ex).all() and (r["acc"] == res).all()
    assert r["out"].shape == ex.shape


def test_matmul_refuses_long_k_and_wide_products():
    f = UniformFormat(8, True, 1.0)
    mm = MatMul.build("mm", f, f, k_max=3)
    with pytest.raises(ValueError, match="k_max=3"):
        oracle.run_layer(mm, np.zeros((1, 4), np.int64), np.zeros((4, 1), np.int64))
    with pytest.raises(ValueError, match="int64"):
        MatMul.build("mm", f, f, k_max=2**40, a_frac_bits=12, b_frac_bits=12)


def test_matmul_float_bound_operand():
    """§11 = §9 without bias: |acc·unit - Σ x̂_a x̂_b| within 1/2 Σ(|Ã| + |B|) LSBs."""
    fa, fb = power(8, True, 0.5, 2.0), power(8, True, 1.0, 1.5)
    mm = MatMul.build("mm", fa, fb, k_max=16, a_frac_bits=10, b_frac_bits=12, acc=Accumulator(64, "exact"))
    r = np.random.default_rng(3)
    a, b = r.integers(-127, 128, (3, 4, 16)), r.integers(-127, 128, (3, 16, 5))
    acc = oracle.run_layer(mm, a, b)["acc"]
    ar, br = fa.decode_real(a), fb.decode_real(b)
    ref = (ar @ br) / mm.unit
    At = np.abs(mm.a_table.lut[0, a + 127]).astype(np.float64)
    Bf = np.abs(br) / mm.b_table.unit
    bound = 0.5 * (At[..., :, :, None] + Bf[..., None, :, :]).sum(axis=-2) + 1e-9 * np.abs(ref).max()
    assert (np.abs(acc - ref) <= bound).all()


# ---- §13 Softmax -------------------------------------------------------------------------------------
def test_softmax_worked_example():
    sm = Softmax.build("sm", UniformFormat(4, True, math.log(2)), max_len=3, exp_frac_bits=2, prob_bits=4)
    assert sm.exp_lut[:3].tolist() == [4, 2, 1]
    r = oracle.run_layer(sm, np.array([[3, 2, 2]]))
    assert r["acc"].tolist() == [8] and r["prob"].tolist() == [[8, 4, 4]]


def _softmax_direct(layer, x, mask):
    keep = layer.keep_mask(x, mask)
    words = hash_words(layer.seed, layer.tensor_id, np.arange(x.size)).reshape(x.shape)
    prob = np.zeros(x.shape, np.int64)
    sums = np.zeros(x.shape[:-1], np.int64)
    for row in np.ndindex(*x.shape[:-1]):
        ks = [j for j in range(x.shape[-1]) if keep[row + (j,)]]
        if not ks:
            continue
        qmax = max(int(x[row + (j,)]) for j in ks)
        e = {j: int(layer.exp_lut[qmax - int(x[row + (j,)])]) for j in ks}
        s = sum(e.values())
        sums[row] = s
        for j in ks:
            fr = Fraction(e[j] << layer.prob_bits, s)
            fl, rem = math.floor(fr), fr - math.floor(fr)
            up = {
                P.HALF_EVEN: rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1),
                P.HALF_AWAY: rem >= Fraction(1, 2),
                P.HALF_UP: rem >= Fraction(1, 2),
                P.FLOOR: False,
                P.CEIL: rem > 0,
                P.TOWARD_ZERO: False,
                P.STOCHASTIC: rem > Fraction(int(words[row + (j,)]), 2**32),
            }[layer.prob_rounding]
            prob[row + (j,)] = fl + up
    return sums, prob


@given(softmax_case())
def test_softmax_matches_direct_computation(case):
    layer, inputs = case
    x = inputs[0]
    mask = inputs[1] if len(inputs) > 1 else None
    r = oracle.run_layer(layer, *inputs)
    sums, prob = _softmax_direct(layer, x, mask)
    assert (r["acc_exact"] == sums).all() and (r["acc"] == sums).all() and (r["prob"] == prob).all()
    keep = layer.keep_mask(x, mask)
    zero_code = oracle.requantize(np.zeros(1, np.int64), layer.requant, 0, 0, 0)[0]
    assert (r["out"][~keep] == zero_code).all()  # masked: exactly nothing


def test_softmax_boundaries():
    xf = UniformFormat(8, True, 0.25)
    sm = Softmax.build("sm", xf, max_len=8, exp_frac_bits=12, prob_bits=15, masked=True)
    x = np.zeros((3, 1, 2, 5), np.int64)
    x[1, ..., 2] = 127  # one dominating score: exp(-0.25·254) rounds to 0 for the others
    x[1, ..., [0, 1, 3, 4]] = -127
    mask = np.ones((3, 5), np.int64)
    mask[2] = 0  # a fully masked row
    r = oracle.run_layer(sm, x, mask)
    assert (r["prob"][0] == round(2**15 / 5)).all()  # all equal: round(2^P / n)
    assert (r["prob"][1, ..., 2] == 2**15).all() and (r["prob"][1, ..., [0, 1, 3, 4]] == 0).all()
    assert (r["acc"][2] == 0).all() and (r["prob"][2] == 0).all()
    # a masked position's score does not matter at all
    x2 = x.copy()
    mask2 = mask.copy()
    mask2[0, 4] = 0
    x2[0, ..., 4] = 127
    r2 = oracle.run_layer(sm, x2, mask2)
    r3 = oracle.run_layer(sm, x, mask2)
    assert (r2["prob"] == r3["prob"]).all() and (r2["prob"][0, ..., :4] == 2**13).all()


def test_softmax_sum_reaches_the_accumulator_limit():
    xf = UniformFormat(8, True, 0.5)
    sm = Softmax.build("sm", xf, max_len=127, exp_frac_bits=0, prob_bits=8, acc=Accumulator(8, "saturate"))
    r = oracle.run_layer(sm, np.zeros((1, 127), np.int64))
    assert r["acc"].tolist() == [127] and (r["prob"] == round_div(256, 127, P.HALF_EVEN)).all()
    with pytest.raises(ValueError, match="must provably fit"):
        Softmax.build("sm", xf, max_len=128, exp_frac_bits=0, acc=Accumulator(8, "saturate"))
    with pytest.raises(ValueError, match="max_len=127"):
        oracle.run_layer(sm, np.zeros((1, 128), np.int64))


@given(
    st.integers(2, 8),
    st.sampled_from([0.05, 0.2, 1.0]),
    st.integers(4, 16),
    st.integers(4, 16),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_softmax_float_bound(bits, s, F, Pb, seed, causal):
    xf = UniformFormat(bits, True, s)
    sm = Softmax.build("sm", xf, max_len=9, exp_frac_bits=F, prob_bits=Pb, causal=causal)
    x = np.random.default_rng(seed).integers(xf.range.qmin, xf.range.qmax + 1, (3, 9, 9))
    r = oracle.run_layer(sm, x)
    keep = sm.keep_mask(x)
    xr = np.where(keep, xf.decode_real(x), -np.inf)
    pi = np.exp(xr - xr.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    n = keep.sum(-1, keepdims=True)
    bound = 2.0 ** -(Pb + 1) + (0.5 + n * pi / 2) / r["acc"][..., None] + 1e-12
    assert (np.abs(r["prob"] * 2.0**-Pb - pi) <= bound).all()


# ---- §14 LayerNorm ----------------------------------------------------------------------------------
def _identity_ln(C, R, eps_int=1, gamma=None, beta=None, mean_rounding=0):
    rng = UniformFormat(8, True, 1.0).range
    xt = DecodeTable(rng.all_codes()[None, :], rng.qmin, 1.0, 0)
    g = np.ones(C, np.int64) if gamma is None else gamma
    b = np.zeros(C, np.int64) if beta is None else beta
    return LayerNorm("ln", rng, xt, C, eps_int, R, 0, g, b, mean_rounding)


def test_layernorm_worked_example():
    r = oracle.run_layer(_identity_ln(2, 4), np.array([[3, 5]]))
    assert r["mean"].tolist() == [4] and r["inv"].tolist() == [11] and r["y"].tolist() == [[-11, 11]]


def test_layernorm_mean_rounding_is_named():
    # S/C = 7/2 = 3.5: half_even 4, floor 3, ceil 4, half_up 4, toward_zero 3
    for mode, mu in ((P.HALF_EVEN, 4), (P.FLOOR, 3), (P.CEIL, 4), (P.HALF_UP, 4), (P.TOWARD_ZERO, 3)):
        assert oracle.run_layer(_identity_ln(2, 4, mean_rounding=mode), np.array([[3, 4]]))["mean"][0] == mu


@given(layernorm_case())
def test_layernorm_stages_match_definitions(case):
    layer, (x,) = case
    r = oracle.run_layer(layer, x)
    C, R = layer.channels, layer.inv_frac_bits
    X = layer.x_table.lut[0, x - layer.x_range.qmin].reshape(-1, C)
    words = hash_words(layer.seed, layer.tensor_id, np.arange(X.shape[0]))
    for i, row in enumerate(X):
        xs = [int(v) for v in row]
        mu = int(r["mean"].reshape(-1)[i])
        assert mu == round_div(sum(xs), C, layer.mean_rounding, int(words[i]))
        iv = int(r["inv"].reshape(-1)[i])
        N = sum((v - mu) ** 2 for v in xs) + C * layer.eps_int
        assert iv * iv * N <= C << (2 * R) < (iv + 1) ** 2 * N  # inv = floor(2^R sqrt(C/N)) exactly
        ys = [(v - mu) * iv * int(g) + int(b) for v, g, b in zip(xs, layer.gamma, layer.beta)]
        assert r["y"].reshape(-1, C)[i].tolist() == ys
    assert r["out"].shape == x.shape


def test_layernorm_constant_row_and_width_refusal():
    fmt = power(8, True, 1.0, 4.0)
    beta = np.array([0.5, -1.0, 0.25])
    ln = LayerNorm.build("ln", fmt, fmt, channels=3, beta=beta)
    r = oracle.run_layer(ln, np.full((2, 3), 17, np.int64))
    assert (r["y"] == ln.beta).all() and (r["mean"] == ln.x_table.lut[0, 17 + 127]).all()
    # V = 0: inv = isqrt(C·2^(2R) // (C·E)) = floor(2^R / sqrt(E))
    assert (r["inv"] == math.isqrt((1 << (2 * ln.inv_frac_bits)) // ln.eps_int)).all()
    assert r["out"][0].tolist() == fmt.encode(beta).tolist()
    with pytest.raises(ValueError, match=r"intermediate .* >= 2\^62"):
        LayerNorm.build("ln", fmt, channels=3, x_frac_bits=30, inv_frac_bits=20)
    with pytest.raises(ValueError, match=r"C·2\^\(2R\)"):
        LayerNorm.build("ln", fmt, channels=3, inv_frac_bits=31)


@given(st.integers(0, 2**32 - 1), st.sampled_from([4, 16, 64]), st.sampled_from([1e-5, 1e-12]))
def test_layernorm_float_bound(seed, C, eps):
    fmt = power(8, True, 0.5, 8.0)
    rng = np.random.default_rng(seed)
    g, b = rng.normal(1, 0.3, C), rng.normal(0, 0.3, C)
    ln = LayerNorm.build("ln", fmt, channels=C, gamma=g, beta=b, eps=eps)
    x = rng.integers(-127, 128, (5, C))
    r = oracle.run_layer(ln, x)
    xr = fmt.decode_real(x)
    ux = ln.x_table.unit
    z = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + ln.eps_int * ux * ux)
    X = ln.x_table.lut[0, x + 127]
    D = X - r["mean"][:, None]
    N = (D.astype(np.float64) ** 2).sum(-1, keepdims=True) + C * ln.eps_int
    xm = np.abs(ln.x_table.lut).max()
    zb = 1.5 * (math.sqrt(C) + C) / np.sqrt(N) + 2 * xm * 2.0**-ln.inv_frac_bits
    Zr = D * r["inv"][:, None] * 2.0**-ln.inv_frac_bits
    assert (np.abs(Zr - z) <= zb + 1e-9).all()
    y = r["y"] * ln.unit
    yb = np.abs(g) * zb + np.abs(Zr) * 2.0 ** -(ln.gamma_frac_bits + 1) + ln.unit / 2 + 1e-9
    assert (np.abs(y - (g * z + b)) <= yb).all()


# ---- §16 layout ops and a tiny attention graph ------------------------------------------------------
def test_layout_ops():
    x = np.arange(2 * 3 * 8).reshape(2, 3, 8)
    heads = oracle.run_layer(Reshape("r", (0, 0, 2, 4)), x)["out"]
    assert heads.shape == (2, 3, 2, 4)
    t = oracle.run_layer(Transpose("t", 1, 2), heads)["out"]
    assert t.shape == (2, 2, 3, 4) and t.flags.c_contiguous and (t == heads.transpose(0, 2, 1, 3)).all()
    merged = oracle.run_layer(Reshape("m", (0, 0, -1)), oracle.run_layer(Transpose("t", 1, 2), t)["out"])[
        "out"
    ]
    assert (merged == x).all()
    assert (oracle.run_layer(Slice("s", 2, 4, 8), x)["out"] == x[:, :, 4:8]).all()
    assert oracle.run_layer(PadMask("p", 0), np.array([[5, 0]]))["out"].tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="cannot reshape"):
        oracle.run_layer(Reshape("r", (0, 5, -1)), x)


def attention_graph(C=8, H=2, T=4, masked=False):
    """tok+pos embedding -> LN -> Q,K,V slices of one embedding table -> attention -> add."""
    D = C // H
    pf = power(8, True, 0.5, 2.0)
    r = np.random.default_rng(0)
    tok = Embedding.build("tok", r.normal(0, 0.5, (11, C)), pf)
    pos = Embedding.build("pos", r.normal(0, 0.5, (T, C)), pf, positional=True)
    add = Add.build("emb", pf, pf, frac_bits=12, out_fmt=pf)
    ln = LayerNorm.build("ln", pf, pf, channels=C)
    sc = UniformFormat(8, True, 0.05)
    qk = MatMul.build("qk", pf, pf, k_max=D, transpose_b=True, out_fmt=sc, alpha=1 / math.sqrt(D))
    prob_fmt = power(8, False, 0.5, 1.0)
    sm = Softmax.build("sm", sc, prob_fmt, max_len=T, causal=not masked, masked=masked)
    av = MatMul.build("av", prob_fmt, pf, k_max=T, out_fmt=pf, datapath="product")
    gelu = ElementwiseTable.build("gelu", pf, pf, "gelu")
    res = Add.build("res", pf, pf, frac_bits=12, out_fmt=pf)
    nodes = [
        Node(tok, ("input",)),
        Node(pos, ("input",)),
        Node(add, ("tok", "pos")),
        Node(ln, ("emb",)),
        Node(Reshape("heads", (0, 0, H, D)), ("ln",)),
        Node(Transpose("bh", 1, 2), ("heads",)),
        Node(qk, ("bh", "bh")),
    ]
    if masked:
        nodes += [Node(PadMask("mask", 0), ("input",)), Node(sm, ("qk", "mask"))]
    else:
        nodes += [Node(sm, ("qk",))]
    nodes += [
        Node(av, ("sm", "bh")),
        Node(Transpose("bt", 1, 2), ("av",)),
        Node(Reshape("merge", (0, 0, -1)), ("bt",)),
        Node(gelu, ("merge",)),
        Node(res, ("gelu", "emb")),
    ]
    return Graph(nodes)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_graph_runs_on_the_oracle(masked):
    g = attention_graph(masked=masked)
    ids = np.array([[3, 1, 4, 0], [2, 7, 0, 0]])
    r = g.run(ids, backend="numpy", intermediates=True)
    assert r.output.shape == (2, 4, 8)
    assert r.stages["sm"]["prob"].shape == (2, 2, 4, 4)
    if masked:
        assert (r.stages["sm"]["prob"][1, :, :, 2:] == 0).all()
    else:
        assert (np.triu(np.ones((4, 4)), 1)[None, None] * r.stages["sm"]["prob"] == 0).all()


@pytest.mark.parametrize("mode,rule", [("half_even", round), ("floor", math.floor), ("ceil", math.ceil)])
def test_exp_and_layernorm_tables_follow_their_definition(mode, rule):
    """A one-LSB change of the exp LUT or the γ/β table rounding fails here (host tables §13, §14)."""
    for s, F in ((0.05, 15), (0.3, 7), (1.0, 12)):
        lut = TT.exp_table(UniformFormat(8, True, s), F, mode)
        assert lut.tolist() == [rule(math.exp(-s * d) * 2.0**F) for d in range(256)]
    g, b = np.array([0.7, -1.3, 2.05]), np.array([0.01, -0.4, 0.333])
    G, B = TT.layernorm_tables(g, b, 3, 20, 12, mode)
    assert G.tolist() == [rule(v * 2.0**12) for v in g] and B.tolist() == [rule(v * 2.0**32) for v in b]
