"""Codebook weights on the operand datapath (docs/ARITHMETIC.md §1-§2, §9; #14 item 3): each
code indexes a per-tensor, per-channel or per-(channel, group) table of reals, and the decode
LUT row t(o,k) holds R(v_t[q]·2^F). Known answer, every code of every width on the oracle
and every CPU path, correct rounding of every entry in every host mode, the derived bound
against float64, validation, serialization and golden files."""

import json
from fractions import Fraction

import numpy as np
import pytest
from test_cpu import assert_same

from nupes_sim import cpu, oracle
from nupes_sim.cpu import CpuOptions, intmm
from nupes_sim.exactreal import round_fraction
from nupes_sim.formats import CodebookFormat, CodeRange, PowerFormat, UniformFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Linear, format_from_meta, format_meta
from nupes_sim.rounding import HOST_MODES, mode_id, random_words
from nupes_sim.serialize import graph_from_dict, graph_to_dict, model_hash
from nupes_sim.tables import decode_table


def test_known_answer_lut_and_layer():
    """ARITHMETIC.md §2 worked example: v = [-0.75, -0.1, 0.3, 1.0], F = 2, half_even:
    w_lut = [-3, 0, 1, 4]; with int8 activations x = [2, 4, 6, 8]·0.5 the integer output is
    (-3·1 + 0·2 + 1·3 + 4·4)/4 = 4 (float64: -0.75 - 0.2 + 0.9 + 4 = 3.95)."""
    f = CodebookFormat(2, np.array([-0.75, -0.1, 0.3, 1.0]), "tensor")
    assert f.range == CodeRange(2, False) and f.decode_real(np.array([0, 3])).tolist() == [-0.75, 1.0]
    t = decode_table(f, 2)
    assert t.lut.tolist() == [[-3, 0, 1, 4]] and t.qmin == 0 and t.unit == 0.25
    layer = Linear.build("c", np.array([[0, 1, 2, 3]]), f, UniformFormat(8, True, 0.5, 0), w_frac_bits=2)
    r = oracle.run_layer(layer, np.array([[2, 4, 6, 8]]))
    assert layer.unit == 2.0**-2 * 0.5 * 2.0**-8
    assert r["acc_exact"].tolist() == [[8192]] and r["acc"][0, 0] * layer.unit == 4.0
    assert f.encode(np.array([[-2.0, -0.43, -0.42, 0.2, 0.64, 0.66, 5.0]])).tolist() == [
        [0, 0, 1, 2, 2, 3, 3]
    ]
    tie = CodebookFormat(2, np.array([-1.0, 0.0, 0.5, 1.0]), "tensor")
    assert tie.encode(np.array([[-0.5, 0.25, 0.75]])).tolist() == [[0, 1, 2]]  # ties: lower code


def _tables(rng, n, T):
    """T tables of n reals: random, with an exact 0, a repeated value and half-way entries."""
    v = rng.normal(0.0, 0.4, (T, n))
    v[:, 0] = 0.0
    v[:, -1] = v[:, -2]
    v[:, 1] = (rng.integers(-40, 40, T) + 0.5) / 4  # ties at F = 2
    return v


def _every_code_layer(bits, gran, xkind, overflow="wrap", width=48, rounding="half_even"):
    rng = np.random.default_rng(bits + 7 * len(gran))
    n = 2**bits
    O, K = 3, 2 * n
    if gran == "group":
        f = CodebookFormat(bits, _tables(rng, n, O * 2).reshape(O, 2, n), "group", n)
    elif gran == "channel":
        f = CodebookFormat(bits, _tables(rng, n, O), "channel")
    else:
        f = CodebookFormat(bits, _tables(rng, n, 1), "tensor")
    q = np.arange(n)
    w = np.stack([np.concatenate([q, q[::-1]]), np.concatenate([q[::-1], q]), np.roll(np.tile(q, 2), 3)])
    xf = {"power": PowerFormat(bits, False, 0.7, 0.02), "uniform": UniformFormat(bits, True, 0.03, 1)}[xkind]
    xq = xf.range.all_codes()
    x = np.stack([np.resize(xq, K), np.resize(xq[::-1], K)])
    layer = Linear.build(
        "cb",
        w,
        f,
        xf,
        w_frac_bits=2,
        x_frac_bits=10,
        acc=Accumulator(width, overflow),
        bias=np.linspace(-0.5, 0.5, O) * (1 if width == 48 else 2.0**-8),
        out_fmt=UniformFormat(8, True, 0.01, 3),
        mult_bits=15 if width == 48 else 31,
        rounding=rounding,
        tensor_id=11,
    )
    return layer, x, f, xf


@pytest.mark.parametrize("mode", HOST_MODES)
def test_every_entry_is_the_exact_real_rounded(mode):
    """Every LUT entry equals the named rounding of the exact v·2^F (Fractions), ties included;
    stochastic words are the flat C-order index (§3)."""
    rng = np.random.default_rng(5)
    v = _tables(rng, 16, 6).reshape(3, 2, 16)
    f = CodebookFormat(4, v, "group", 8)
    t = decode_table(f, 2, mode, seed=3, tensor_id=9)
    words = random_words(3, 9, v.size)
    want = [
        round_fraction(Fraction(float(x)) * 4, mode_id(mode), int(r)) for x, r in zip(v.reshape(-1), words)
    ]
    assert t.lut.reshape(-1).tolist() == want and t.lut.shape == (6, 16)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
@pytest.mark.parametrize("xkind", ["power", "uniform"])
def test_every_code_every_cpu_path_and_the_derived_bound(bits, gran, xkind):
    layer, x, f, xf = _every_code_layer(bits, gran, xkind)
    q = layer.w_codes.astype(np.int64)
    idx = f.scale_index(q.shape)
    assert (layer.w_table_index == idx).all() and layer.w_table.lut.shape == (f.tables.shape[0], 2**bits)
    want = oracle.run_layer(layer, x)
    Wt = layer.w_table.lut[idx, q]  # (O, K)
    Xt = layer.x_table.lut[0, x - xf.range.qmin]  # (B, K)
    assert (want["acc_exact"] == Xt @ Wt.T + layer.bias).all()
    assert_same(want, cpu.run_layer(layer, x), "fast")
    assert_same(want, cpu.run_layer(layer, x, fast=False), "integer-only")
    if intmm.available() is not None:
        assert_same(want, cpu.run_layer(layer, x, options=CpuOptions(int8=True, int8_chunk_k=1)), "int8")
    sat = _every_code_layer(bits, gran, xkind, "saturate", 20)[0]
    assert_same(oracle.run_layer(sat, x), cpu.run_layer(sat, x), "saturate")
    # §9: |acc - Σ ŵx̂/unit - B| <= 1/2 + Σ(|W̃| + |X|)/2 (power), 1/2 + Σ|X|/2 (uniform: X̃ = X)
    w_real = f.decode_real(q, idx)
    xr = xf.decode_real(x)
    ref = xr @ w_real.T / layer.unit
    B = np.asarray(layer.meta["bias_real"]) / layer.unit
    err = np.abs(want["acc_exact"] - ref - B[None, :])
    Xs = np.abs(xr) * 2.0**10 * (1 if xkind == "power" else 1 / xf.scale)
    bound = 0.5 + 0.5 * Xs.sum(1)[:, None] + (0.5 * np.abs(Wt).sum(1)[None, :] if xkind == "power" else 0.0)
    gamma = 1e-12 * (np.abs(xr) @ np.abs(w_real).T / layer.unit + np.abs(B))
    assert (err <= bound + gamma).all()
    assert err.max() > 0  # the tables do round (ties at F = 2): the bound is not vacuous


def test_stochastic_and_floor_luts_run_on_every_path():
    for mode in ("stochastic", "floor"):
        layer, x, _, _ = _every_code_layer(4, "group", "power", rounding=mode)
        want = oracle.run_layer(layer, x)
        assert_same(want, cpu.run_layer(layer, x), mode)
        assert_same(want, cpu.run_layer(layer, x, fast=False), mode)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(values=np.zeros(3)), ValueError, r"values has 3 entries per table .*allowed: 2\^bits = 4"),
        (dict(values=np.zeros((2, 5))), ValueError, r"values has 5 entries per table"),
        (dict(values=np.array([0.0, np.nan, 1, 2])), ValueError, r"values contains nan; allowed: finite"),
        (dict(values=np.array([0.0, 1, np.inf, 2])), ValueError, r"values contains inf; allowed: finite"),
        (dict(values=np.array([0.0, 1, 2, -np.inf])), ValueError, r"values contains -inf"),
        (dict(values=np.array(["a", "b", "c", "d"])), TypeError, r"values must hold real numbers"),
        (dict(values=np.zeros((2, 4))), ValueError, r"shape \(2, 4\); allowed for granularity='tensor'"),
        (
            dict(values=np.zeros(4), granularity="channel"),
            ValueError,
            r"shape \(4,\); allowed for granularity='channel': \(C, 4\)",
        ),
        (
            dict(values=np.zeros((2, 4)), granularity="group", group_size=2),
            ValueError,
            r"allowed for granularity='group': \(C, K/g, 4\)",
        ),
        (dict(values=np.zeros((2, 1, 4)), granularity="group"), ValueError, r"group_size"),
        (dict(granularity="row"), ValueError, r"granularity"),
        (dict(bits=9, values=np.zeros(512)), ValueError, r"bits"),
    ],
)
def test_bad_format_names_the_field(kw, exc, match):
    args = dict(bits=2, values=np.zeros(4), granularity="tensor")
    args.update(kw)
    with pytest.raises(exc, match=match):
        CodebookFormat(**args)


def test_bad_shapes_and_limits_in_a_layer():
    f = CodebookFormat(2, np.zeros((2, 4)), "channel")
    with pytest.raises(ValueError, match="values has 2 channel tables but the tensor has 3 channels"):
        Linear.build("c", np.zeros((3, 2), np.int64), f, PowerFormat(4, False, 1.0, 0.1))
    g = CodebookFormat(2, np.zeros((3, 2, 4)), "group", 3)
    with pytest.raises(ValueError, match="do not fit K=4"):
        Linear.build("c", np.zeros((3, 4), np.int64), g, PowerFormat(4, False, 1.0, 0.1))
    big = CodebookFormat(2, np.array([0.0, 1, 2, 2.0**20]), "tensor")
    with pytest.raises(ValueError, match=r"exceed the table limit 2\^52.*lower w_frac_bits"):
        decode_table(big, 32)
    with pytest.raises(ValueError, match="contains 4, outside the allowed range"):
        Linear.build("c", np.array([[4, 0]]), big, PowerFormat(4, False, 1.0, 0.1))
    with pytest.raises(TypeError, match="needs power formats; weight format is CodebookFormat"):
        Linear.build("p", np.array([[1, 2]]), big, PowerFormat(4, False, 1.0, 0.1), datapath="product")


def test_serialization_and_meta_round_trip():
    layer, x, f, _ = _every_code_layer(4, "group", "power")
    g = Graph([layer])
    arrays, attrs = graph_to_dict(g)
    g2 = graph_from_dict(arrays, attrs)
    assert model_hash(g2) == model_hash(g)
    assert_same(oracle.run_layer(layer, x), oracle.run_layer(g2.nodes[0].layer, x), "round trip")
    m = json.loads(json.dumps(format_meta(f)))
    assert m["kind"] == "codebook" and m["group_size"] == 16
    back = format_from_meta(m)
    assert back.granularity == "group" and np.array_equal(back.values, f.values)  # bit for bit
    assert layer.float_reference((x,)) is not None  # the audit's float64 reference reads it


def test_golden_file_and_hex_export(tmp_path):
    from nupes_sim.golden import export_hex, read_golden, write_golden

    layer, x, f, _ = _every_code_layer(3, "group", "power")
    p = str(tmp_path / "g.h5")
    write_golden(Graph([layer]), x, p)
    g = read_golden(p)
    lay = g.layers["cb"]
    assert lay["info"]["weight_range"]["kind"] == "CodeRange"
    assert lay["info"]["formats"]["w_format"]["kind"] == "codebook"
    assert (lay["datasets"]["w_lut"] == layer.w_table.lut).all() and lay["datasets"]["w_lut"].shape == (6, 8)
    assert (g.vectors[1]["stages"]["cb"]["out"] == oracle.run_layer(layer, x[1:2])["out"]).all()
    export_hex(p, tmp_path / "hex")
    assert (tmp_path / "hex" / "manifest.json").is_file()
