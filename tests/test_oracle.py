"""The oracle against hand-computed cases and against direct definitions of each op."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d


def test_saturate_sequence_worked_example():
    # ARITHMETIC.md §4: N = 8, products [100, 100, -100]
    p = np.array([[100, 100, -100]])
    assert oracle.accumulate(p, 0, Accumulator(8, "saturate"))[1].tolist() == [27]
    assert oracle.accumulate(p, 0, Accumulator(8, "wrap"))[1].tolist() == [100]
    e, r = oracle.accumulate(p, 0, Accumulator(8, "exact"))
    assert e.tolist() == r.tolist() == [100]
    # tiles of 2: partial (100+100 -> 127), acc = 127; partial -100, acc = 27
    assert oracle.accumulate(p, 0, Accumulator(8, "saturate", 2)).__getitem__(1).tolist() == [27]
    # tiles change the result: [-100, -100, 100, 100] untiled: -100, -128, -28, 72;
    # tiles of 2: partials clamp(-200) = -128 and clamp(200) = 127, acc = -128 + 127 = -1
    q = np.array([[-100, -100, 100, 100]])
    assert oracle.accumulate(q, 0, Accumulator(8, "saturate"))[1].tolist() == [72]
    assert oracle.accumulate(q, 0, Accumulator(8, "saturate", 2))[1].tolist() == [-1]


def test_saturate_with_bias_and_tiles_by_hand():
    # bias 50, tiles of 2 over [-100, -100, 100, 100]: part1 = clamp(-200) = -128,
    # acc = 50 - 128 = -78; part2 = clamp(200) = 127, acc = -78 + 127 = 49.
    q = np.array([[-100, -100, 100, 100]])
    assert oracle.accumulate(q, 50, Accumulator(8, "saturate", 2))[1].tolist() == [49]


@given(
    p=st.lists(st.integers(-(2**40), 2**40), min_size=0, max_size=20),
    bias=st.integers(-(2**7), 2**7 - 1),
    width=st.integers(8, 48),
    tile=st.integers(0, 5),
)
def test_accumulator_modes_against_definitions(p, bias, width, tile):
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    arr = np.array([p], dtype=np.int64).reshape(1, len(p))
    exact = bias + sum(p)
    e, w = oracle.accumulate(arr, bias, Accumulator(width, "wrap", tile))
    assert e[0] == exact
    assert w[0] == (exact - lo) % 2**width + lo
    acc = bias
    if tile:
        for t0 in range(0, len(p), tile):
            part = 0
            for v in p[t0 : t0 + tile]:
                part = min(max(part + v, lo), hi)
            acc = min(max(acc + part, lo), hi)
    else:
        for v in p:
            acc = min(max(acc + v, lo), hi)
    assert oracle.accumulate(arr, bias, Accumulator(width, "saturate", tile))[1][0] == acc


def _tiny_linear(datapath="operand", **kw):
    wf = PowerFormat(4, True, 0.5, 1.0)
    xf = PowerFormat(4, False, 0.5, 1.0)
    w = np.array([[-3, 1, 0], [7, 7, -7]])
    return Linear.build(
        "fc", w, wf, xf, datapath=datapath, w_frac_bits=2, x_frac_bits=2, product_frac_bits=4, **kw
    ), w


def test_linear_by_hand_both_datapaths():
    # a = 0.5, s = 1: decode q -> q^2. Operand: W = q_w^2·sign·4, X = q_x^2·4, unit 1/16.
    L, w = _tiny_linear()
    x = np.array([[2, 5, 15]])
    out = oracle.run_layer(L, x)
    want = [(-9 * 4 + 25) * 16, (49 * 4 + 49 * 25 - 49 * 225) * 16]
    assert out["acc"].tolist() == [want]
    # product domain: p_lut[|qw||qx|] = (|qw||qx|)^2 · 16; same values here (all exact)
    Lp, _ = _tiny_linear("product")
    assert Lp.p_table.by_product
    assert oracle.run_layer(Lp, x)["acc"].tolist() == [want]
    # worked example of ARITHMETIC.md §2: q_w = -3, q_x = 2 -> p_lut[6] = 576, p = -576
    assert Lp.p_table.lut[0, 6] == 576


def test_conv_equals_direct_definition():
    rng = np.random.default_rng(3)
    wf = PowerFormat(3, True, 0.8, rng.uniform(0.05, 0.2, 6), "channel")
    xf = PowerFormat(4, True, 0.8, 0.03)
    w = rng.integers(-3, 4, (6, 2, 2, 3))
    x = rng.integers(-7, 8, (2, 4, 5, 6))
    L = Conv2d.build(
        "c", w, wf, xf, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, acc=Accumulator(40, "exact")
    )
    got = oracle.run_layer(L, x)["acc"]
    W = L.w_table.lut[L.w_table_index, (w.reshape(6, -1) + 3)].reshape(w.shape)
    X = L.x_table.lut[0, x + 7]
    B, C, H, Wd = x.shape
    ho, wo = L.out_hw(H, Wd)
    want = np.zeros((B, 6, ho, wo), np.int64)
    for b in range(B):
        for o in range(6):
            g = o // 3
            for oh in range(ho):
                for ow in range(wo):
                    s = 0
                    for c in range(2):
                        for i in range(2):
                            for j in range(3):
                                h, ww = oh * 2 - 1 + i, ow - 2 + 2 * j
                                if 0 <= h < H and 0 <= ww < Wd:
                                    s += int(W[o, c, i, j]) * int(X[b, g * 2 + c, h, ww])
                    want[b, o, oh, ow] = s
    assert (got == want).all()


def test_requant_thresholds_and_relu():
    L, _ = _tiny_linear(
        out_fmt=PowerFormat(4, False, 1.0, 8.0), relu=True, acc=Accumulator(32), requant_rounding="half_up"
    )
    x = np.array([[2, 5, 15]])
    acc = oracle.run_layer(L, x)["acc"][0]
    out = oracle.run_layer(L, x)["out"][0]
    y = acc / 16.0
    assert out.tolist() == [min(max(int(np.floor(v / 8.0 + 0.5)), 0), 15) for v in y]


def test_rescale_requant_matches_definition():
    L, _ = _tiny_linear(out_fmt=UniformFormat(8, True, 3.0, 5), acc=Accumulator(32))
    x = np.array([[2, 5, 15], [0, 0, 0], [15, 15, 15]])
    r = oracle.run_layer(L, x)
    m, sh = int(L.requant.multiplier[0]), int(L.requant.shift[0])
    for v, c in zip(r["acc"].ravel(), r["out"].ravel()):
        y = round(Fraction(int(v) * m, 2**sh))  # Fraction rounds half to even, exactly
        assert c == min(max(y + 5, -128), 127)


def test_add_and_pools():
    f = PowerFormat(4, False, 0.5, 1.0)
    a = np.array([[[[1, 2], [3, 4]]]])
    b = np.array([[[[4, 3], [2, 1]]]])
    A = Add.build("add", f, f, frac_bits=0, acc=Accumulator(8, "saturate"))
    r = oracle.run_layer(A, a, b)
    assert r["acc"].tolist() == [[[[17, 13], [13, 17]]]]
    mp = oracle.run_layer(MaxPool2d("mp", 2), a)["out"]
    assert mp.tolist() == [[[[4]]]]
    gap = AvgPool2d.build("gap", f, frac_bits=0, window=4)
    assert oracle.run_layer(gap, a)["acc"].tolist() == [[[[1 + 4 + 9 + 16]]]]
    assert oracle.run_layer(Flatten("f"), a)["out"].tolist() == [[1, 2, 3, 4]]


def test_maxpool_ignores_padding():
    x = np.full((1, 1, 3, 3), -5)
    out = oracle.run_layer(MaxPool2d("mp", 3, 1, 1), x)["out"]
    assert (out == -5).all()


def test_graph_residual_block():
    rng = np.random.default_rng(0)
    xf = PowerFormat(8, False, 0.6, 0.01)
    wf = PowerFormat(4, True, 0.6, np.full(3, 0.1), "channel")
    c1 = Conv2d.build("c1", rng.integers(-7, 8, (3, 3, 3, 3)), wf, xf, padding=1, out_fmt=xf, relu=True)
    add = Add.build("add", xf, xf, out_fmt=xf, relu=True)
    g = Graph([c1, (add, ("c1", "input"))])
    x = rng.integers(0, 256, (2, 3, 4, 4))
    r = g.run(x, backend="numpy", intermediates=True)
    assert r.output.shape == (2, 3, 4, 4)
    assert set(r.stages) == {"c1", "add"}
    with pytest.raises(ValueError, match="earlier layer"):
        Graph([(add, ("nope", "input"))])
