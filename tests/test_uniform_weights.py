"""Uniform weights with a zero point per channel on the operand datapath (docs/ARITHMETIC.md
§1-§2, #14 item 2): the decode LUT absorbs the zero point exactly, the scale moves into the
per-channel accumulator unit. Known answers, every code of every width <= 8 on the oracle and
every CPU path, the derived error bound against float64, validation and serialization."""

import json

import numpy as np
import pytest
from test_cpu import assert_same

from nupes_sim import cpu, oracle
from nupes_sim.cpu import CpuOptions, intmm
from nupes_sim.formats import PowerFormat, UniformFormat, UniformWeightFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Linear, format_from_meta, format_meta
from nupes_sim.serialize import graph_from_dict, graph_to_dict, model_hash
from nupes_sim.tables import decode_table


def test_known_answer_lut_and_layer():
    """ARITHMETIC.md §2 worked example: 2-bit unsigned, s = 1, z = 1: codes [0, 1, 3] decode to
    [-1, 0, 2]; with int8 activations x = [2, 4, 6]·0.5 the output is -1 + 0 + 6 = 5."""
    f = UniformWeightFormat(2, False, np.array([1.0]), np.array([1]), "tensor")
    t = decode_table(f, 3)
    assert t.lut.tolist() == [[-8, 0, 8, 16]] and t.qmin == 0 and t.unit == 2.0**-3
    layer = Linear.build("u", np.array([[0, 1, 3]]), f, UniformFormat(8, True, 0.5, 0), w_frac_bits=3)
    r = oracle.run_layer(layer, np.array([[2, 4, 6]]))
    assert layer.unit == 2.0**-3 * 0.5 * 2.0**-8
    assert r["acc_exact"].tolist() == [[20480]] and r["acc"][0, 0] * layer.unit == 5.0


def _every_code_layer(bits, signed, xkind, overflow="wrap", width=48):
    rng = np.random.default_rng(bits)
    C = 2**bits
    proto = UniformWeightFormat(
        bits, signed, np.ones(1), np.zeros(1, np.int64) + (0 if signed else 1), "tensor"
    )
    lo, hi = proto.range.qmin, proto.range.qmax
    wf = UniformWeightFormat(bits, signed, rng.uniform(0.01, 0.05, C), rng.integers(lo, hi + 1, C), "channel")
    q = wf.range.all_codes()
    w = np.stack([q, q[::-1]], 1)  # channel o holds every code: (q, z_o) pairs cover every LUT entry
    xf = {"power": PowerFormat(bits, False, 0.7, 0.02), "uniform": UniformFormat(bits, True, 0.03, 1)}[xkind]
    xq = xf.range.all_codes()
    x = np.stack([xq, xq[::-1]], 1)
    layer = Linear.build(
        "uw",
        w,
        wf,
        xf,
        w_frac_bits=2,
        x_frac_bits=10,
        acc=Accumulator(width, overflow),
        bias=np.linspace(-0.5, 0.5, C) * (1 if width == 48 else 2.0**-8),
        out_fmt=UniformFormat(8, True, 0.01, 3),
        mult_bits=15 if width == 48 else 31,
        tensor_id=11,
    )
    return layer, x, wf, xf


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("xkind", ["power", "uniform"])
def test_every_code_every_cpu_path_and_the_derived_bound(bits, signed, xkind):
    layer, x, wf, xf = _every_code_layer(bits, signed, xkind)
    q = layer.w_codes.astype(np.int64)
    assert (layer.w_table.lut == (wf.range.all_codes()[None, :] - wf.zero_point[:, None]) * 4).all()
    want = oracle.run_layer(layer, x)
    Wt = layer.w_table.lut[layer.w_table_index, q - layer.w_range.qmin]  # (O, K)
    Xt = layer.x_table.lut[0, x - xf.range.qmin]  # (B, K)
    assert (want["acc_exact"] == Xt @ Wt.T + layer.bias).all()
    assert_same(want, cpu.run_layer(layer, x), "fast")
    assert_same(want, cpu.run_layer(layer, x, fast=False), "integer-only")
    if intmm.available() is not None:
        assert_same(want, cpu.run_layer(layer, x, options=CpuOptions(int8=True, int8_chunk_k=1)), "int8")
    sat = _every_code_layer(bits, signed, xkind, "saturate", 20)[0]
    assert_same(oracle.run_layer(sat, x), cpu.run_layer(sat, x), "saturate")
    # §9: W̃ = W exactly, so |acc - Σ ŵx̂/unit - B| <= 1/2 + Σ|W̃|/2 (power) or 1/2 (uniform)
    w_real = wf.decode_real(q, wf.scale_index(q.shape))
    ref = xf.decode_real(x) @ w_real.T / layer.unit[None, :]
    B = np.asarray(layer.meta["bias_real"]) / layer.unit
    err = np.abs(want["acc_exact"] - ref - B[None, :])
    bound = 0.5 + (0.5 * np.abs(Wt).sum(1)[None, :] if xkind == "power" else 0.0)
    gamma = 1e-12 * (np.abs(xf.decode_real(x)) @ np.abs(w_real).T / layer.unit[None, :] + np.abs(B))
    assert (err <= bound + gamma).all()


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (
            dict(zero_point=np.array([4])),
            ValueError,
            r"zero_point contains 4, outside the allowed range \[0, 3\]",
        ),
        (dict(zero_point=np.array([0.5])), TypeError, r"zero_point must hold integers"),
        (dict(zero_point=np.array([0, 1])), ValueError, r"zero_point has 2 entries and scale 1"),
        (dict(granularity="group"), ValueError, r"granularity='group' is not allowed"),
        (dict(scale=np.array([0.0])), ValueError, r"scale must be finite and > 0"),
    ],
)
def test_bad_format_names_the_field(kw, exc, match):
    args = dict(bits=2, signed=False, scale=np.array([1.0]), zero_point=np.array([1]), granularity="channel")
    args.update(kw)
    with pytest.raises(exc, match=match):
        UniformWeightFormat(**args)


def test_product_datapath_is_refused():
    f = UniformWeightFormat(4, False, np.array([0.1]), np.array([7]), "tensor")
    with pytest.raises(TypeError, match="needs power formats; weight format is UniformWeightFormat"):
        Linear.build("p", np.array([[1, 2]]), f, PowerFormat(4, False, 1.0, 0.1), datapath="product")


def test_serialization_and_meta_round_trip():
    layer, x, wf, _ = _every_code_layer(4, False, "power")
    g = Graph([layer])
    arrays, attrs = graph_to_dict(g)
    g2 = graph_from_dict(arrays, attrs)
    assert model_hash(g2) == model_hash(g)
    assert_same(oracle.run_layer(layer, x), oracle.run_layer(g2.nodes[0].layer, x), "round trip")
    m = json.loads(json.dumps(format_meta(wf)))
    assert m["kind"] == "uniform_weight"
    back = format_from_meta(m)
    assert (back.scale == wf.scale).all() and (back.zero_point == wf.zero_point).all()
    ref = layer.float_reference((x,))  # the audit's float64 reference reads the real format
    assert ref is not None


def test_golden_file_and_hex_export(tmp_path):
    from nupes_sim.golden import export_hex, read_golden, write_golden

    layer, x, wf, _ = _every_code_layer(3, False, "power")
    p = str(tmp_path / "g.h5")
    write_golden(Graph([layer]), x, p)
    g = read_golden(p)
    lay = g.layers["uw"]
    assert lay["info"]["weight_range"]["kind"] == "UniformRange" and lay["info"]["formats"]["w_format"][
        "kind"
    ] == ("uniform_weight")
    assert (lay["datasets"]["w_lut"] == layer.w_table.lut).all() and lay["datasets"]["w_lut"].shape == (8, 8)
    assert (g.vectors[3]["stages"]["uw"]["out"] == oracle.run_layer(layer, x[3:4])["out"]).all()
    export_hex(p, tmp_path / "hex")
    assert (tmp_path / "hex" / "manifest.json").is_file()
