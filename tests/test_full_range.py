"""Full-range power formats (docs/ARITHMETIC.md §1, #14 item 1): signed codes
[-2^(b-1), 2^(b-1)-1]. Exhaustive over every code of every width <= 8: the format, the decode
and product tables (the new magnitude 2^(b-1) included) against tests/exact_ref.py, the
thresholds, layers holding every code on the oracle and every CPU path (int8 limbs forced),
validation messages, serialization and golden files. The CUDA simulator runs the same layers
in tests/cuda/test_cuda_full_range.py."""

import json
from fractions import Fraction

import exact_ref
import numpy as np
import pytest
from test_cpu import assert_same

from nupes_sim import cpu, oracle
from nupes_sim.cpu import CpuOptions, intmm
from nupes_sim.formats import CodeRange, PowerFormat, UniformFormat
from nupes_sim.golden import read_golden, unpack_codes, write_golden
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Linear, format_from_meta, format_meta
from nupes_sim.serialize import (
    ModelFormatError,
    graph_from_dict,
    graph_to_dict,
    load_model,
    model_hash,
    save_model,
)
from nupes_sim.tables import decode_table, product_table, threshold_table

BITS = range(2, 9)
DET = ["half_even", "half_away", "half_up", "floor", "ceil", "toward_zero"]


def full(bits, a=0.5, s=0.25, **kw):
    return PowerFormat(bits, True, a, s, full_range=True, **kw)


# ---- the format ------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", BITS)
def test_code_range(bits):
    h = 2 ** (bits - 1)
    r = CodeRange(bits, True, True)
    assert (r.qmin, r.qmax, r.n_codes, r.max_magnitude) == (-h, h - 1, 2**bits, h)
    assert r.all_codes().tolist() == list(range(-h, h))
    r.check_codes("w", np.array([-h, h - 1]))
    with pytest.raises(
        ValueError, match=rf"w contains {-h - 1}, outside the allowed range \[{-h}, {h - 1}\]"
    ):
        r.check_codes("w", np.array([-h - 1]))
    with pytest.raises(ValueError, match=rf"contains {-h}, outside"):  # symmetric: -2^(b-1) is no code
        CodeRange(bits, True).check_codes("w", np.array([-h]))
    assert CodeRange(bits, True) != r and PowerFormat(bits, True, 1.0, 1.0, full_range=True).range == r


def test_bad_full_range_names_field_value_and_allowed():
    for make in (lambda v: CodeRange(4, False, v), lambda v: PowerFormat(4, False, 0.5, 1.0, full_range=v)):
        with pytest.raises(ValueError, match=r"full_range=True is not allowed with signed=False; allowed"):
            make(True)
        for bad in (1, "yes", None):
            with pytest.raises(TypeError, match=rf"full_range must be a bool, got {bad!r}"):
                make(bad)
    assert PowerFormat(4, False, 0.5, 1.0, full_range=np.bool_(False)).full_range is False


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("a", [0.1, 0.5, 0.73, 1.0, 1.9, 4.0])
def test_encode_decode_every_code(bits, a):
    h = 2 ** (bits - 1)
    for s in (1e-3, 0.37, 5.0):
        f = full(bits, a, s)
        q = f.range.all_codes()
        v = f.decode_real(q)
        assert f.encode(v).tolist() == q.tolist()
        assert (np.diff(v) > 0).all()
        assert v[0] == pytest.approx(-((s * h) ** (1 / a)), rel=1e-15)  # same rule, no mirror of a code
        assert f.encode(v * 1.5).tolist()[:: len(q) - 1] == [-h, h - 1]  # clipped to the range


def test_worked_example():
    """ARITHMETIC.md §1: x = -4 -> -7 (symmetric, clipped) or -8 (full range, decodes to -4)."""
    sym, fr = PowerFormat(4, True, 0.5, 0.25), full(4)
    assert sym.encode(np.array([-4.0])).tolist() == [-7] and sym.decode_real(np.array([-7]))[0] == -3.0625
    assert fr.encode(np.array([-4.0])).tolist() == [-8] and fr.decode_real(np.array([-8]))[0] == -4.0


# ---- tables ------------------------------------------------------------------------------------
def _exact_decode(s, q, a, F, mode, r=0):
    return exact_ref.round_real(((Fraction(float(s)) * abs(int(q)), a),), int(np.sign(q)) * 2**F, mode, r)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("a", [0.25, 0.7, 1.0, 3.0])
def test_decode_table_every_entry(bits, a):
    """Columns = the 2^b codes from qmin = -2^(b-1). The entry of -2^(b-1) is the correctly
    rounded real (exact_ref); the others equal the symmetric table's (tested entry by entry in
    test_tables.py), so every entry is checked for every deterministic mode."""
    h, scales = 2 ** (bits - 1), np.array([0.05, 1.3])
    for mode in DET:
        t = decode_table(full(bits, a, scales, granularity="channel"), 10, mode)
        sym = decode_table(PowerFormat(bits, True, a, scales, "channel"), 10, mode)
        assert t.lut.shape == (2, 2**bits) and t.qmin == -h
        assert (t.lut[:, 1:] == sym.lut).all()
        assert t.lut[:, 0].tolist() == [_exact_decode(s, -h, a, 10, mode) for s in scales]
        if mode in ("half_even", "half_away", "toward_zero"):
            assert (t.lut[:, 1:] == -t.lut[:, 1:][:, ::-1]).all()  # sign symmetric except -2^(b-1)


@pytest.mark.parametrize("bits", BITS)
def test_decode_table_stochastic_every_entry(bits):
    """Stochastic words follow the flat C-order index, which the extra column shifts: every
    entry against exact_ref with its own word."""
    from nupes_sim.rounding import random_words

    seed, tid, scales = 77, 5, np.array([0.05, 1.3])
    t = decode_table(full(bits, 0.7, scales, granularity="channel"), 10, "stochastic", seed, tid)
    words = random_words(seed, tid, t.lut.size).reshape(t.lut.shape)
    for row, s in enumerate(scales):
        want = [
            _exact_decode(s, q, 0.7, 10, "stochastic", int(words[row, i]))
            for i, q in enumerate(range(-(2 ** (bits - 1)), 2 ** (bits - 1)))
        ]
        assert t.lut[row].tolist() == want


@pytest.mark.parametrize(
    "wbits, xbits, xfull, granularity",
    [(2, 2, True, "group"), (4, 4, True, "group"), (3, 8, False, "group")]
    + [(8, 8, xfull, "tensor") for xfull in (True, False)],
)
@pytest.mark.parametrize("ax", [0.6, 0.75])  # equal exponents: by product; else a pair table
def test_product_table_extreme_magnitude(wbits, xbits, xfull, granularity, ax):
    """Magnitudes up to 2^(b-1): the table's length, mx and index; every entry with
    |qw| = 2^(b-1) or |qx| = Mx against exact_ref; every other entry equals the symmetric
    format's (checked in test_tables.py)."""
    aw, F = 0.6, 14
    sw = 0.11 if granularity == "tensor" else np.array([[0.11, 0.7], [0.3, 0.05]])
    kw = dict(granularity=granularity, group_size=2 if granularity == "group" else 0)
    wf, wsym = full(wbits, aw, sw, **kw), PowerFormat(wbits, True, aw, sw, **kw)
    xf = PowerFormat(xbits, xfull, ax, 0.02, full_range=xfull)
    xsym = PowerFormat(xbits, xfull, ax, 0.02)
    pt, ps = product_table(wf, xf, F), product_table(wsym, xsym, F)
    mw, mx = wf.range.max_magnitude, xf.range.max_magnitude
    assert mw == 2 ** (wbits - 1) and mx == (2 ** (xbits - 1) if xfull else 2**xbits - 1)
    assert pt.mx == mx and pt.lut.shape[1] == pt.length(mw) and pt.by_product == (ax == aw)
    rows = [1.0] if granularity == "tensor" else list(wf.scale.reshape(-1))
    m, n = np.meshgrid(np.arange(mw), np.arange(ps.mx + 1), indexing="ij")
    assert (pt.lut[:, pt.index(m, n)] == ps.lut[:, ps.index(m, n)]).all()
    checked = 0
    for r, s in enumerate(rows):
        sx = Fraction(0.02)
        for mm, nn in [(mw, k) for k in range(mx + 1)] + [(k, mx) for k in range(mw)]:
            if pt.by_product:
                want = exact_ref.round_real(((Fraction(float(s)) * sx * (mm * nn), aw),), 2**F, "half_even")
            else:
                want = exact_ref.round_real(((Fraction(float(s)) * mm, aw), (sx * nn, ax)), 2**F, "half_even")
            assert pt.lut[r, pt.index(mm, nn)] == want, (r, mm, nn)
            checked += 1
    assert checked == len(rows) * (mw + mx + 1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("rounding", DET)
def test_thresholds_of_a_full_range_output(bits, rounding):
    """2^b - 1 thresholds from qmin = -2^(b-1): the first opens -2^(b-1)+1 (checked against the
    exact boundary, exact_ref), the rest are the symmetric format's; ReLU folds to [0, qmax]."""
    h, a, s, unit = 2 ** (bits - 1), 0.6, 0.05, 1e-4
    t, ts = (
        threshold_table(unit, full(bits, a, s), 32, rounding),
        threshold_table(unit, PowerFormat(bits, True, a, s), 32, rounding),
    )
    assert (t.qmin, t.qmax, t.thr.shape) == (-h, h - 1, (1, 2**bits - 1))
    assert (t.thr[0, 1:] == ts.thr[0]).all()
    c = -h + 1  # the code the first threshold opens; its boundary beta (ARITHMETIC.md §6)
    beta, inclusive = {
        "floor": (Fraction(c), True),
        "ceil": (Fraction(c - 1), False),
        "toward_zero": (Fraction(c - 1), False),
    }.get(
        rounding, (Fraction(2 * c - 1, 2), rounding != "half_away" and (rounding == "half_up" or c % 2 == 0))
    )
    want = exact_ref.first_acc(((Fraction(s) * abs(beta), a),), -1 / Fraction(unit), inclusive)
    assert int(t.thr[0, 0]) == want
    tr = threshold_table(unit, full(bits, a, s), 32, rounding, relu=True)
    assert (tr.qmin, tr.qmax) == (0, h - 1) and (tr.thr == ts.thr[:, h - 1 :]).all()


# ---- layers holding every code, on every backend ----------------------------------------------
def every_code_layer(bits, datapath, xkind, overflow="wrap", width=64):
    """Linear whose weights hold every full-range code (rows: qw, and -1 - qw reversed) against
    inputs holding every input code in both columns: all (qw, qx) pairs, the extremes included."""
    h = 2 ** (bits - 1)
    wf = full(bits, 0.6, np.linspace(0.02, 0.05, 2**bits), granularity="channel")
    qw = wf.range.all_codes()
    w = np.stack([qw, qw[::-1]], axis=1)
    xa = 0.6 if datapath == "product" else 0.8
    xf = {
        "full": PowerFormat(bits, True, xa, 0.03, full_range=True),
        "unsigned": PowerFormat(bits, False, xa, 0.03),
        "uniform": UniformFormat(bits, True, 0.03, 1),
    }[xkind]
    q = xf.range.all_codes()
    x = np.stack([q, q[::-1]], axis=1)
    layer = Linear.build(
        "fr",
        w,
        wf,
        xf,
        datapath=datapath,
        w_frac_bits=10,
        x_frac_bits=8,
        product_frac_bits=12,
        acc=Accumulator(width, overflow),
        bias=np.linspace(-1, 1, 2**bits) * (1 if width == 64 else 2.0**-12),
        out_fmt=full(bits, 0.6, 0.02),
        tensor_id=3,
    )
    assert int(layer.w_codes.min()) == -h and layer.x_range.qmin == xf.range.qmin
    return layer, x


def direct_products(layer, x):
    """(B, O, K) products formed from the tables as ARITHMETIC.md §2 states them."""
    qw = layer.w_codes.astype(np.int64)[None]
    qx = x.astype(np.int64)[:, None, :]
    t = layer.w_table_index[None]
    if layer.datapath == "operand":
        return layer.w_table.lut[t, qw - layer.w_range.qmin] * layer.x_table.lut[0, qx - layer.x_range.qmin]
    pt = layer.p_table
    return (
        np.sign(qw)
        * np.sign(qx)
        * pt.lut[np.broadcast_to(t, (x.shape[0],) + t.shape[1:]), pt.index(abs(qw), abs(qx))]
    )


CASES = [(b, "operand", k) for b in (2, 5, 8) for k in ("full", "unsigned", "uniform")] + [
    (b, "product", k) for b in (2, 5, 8) for k in ("full", "unsigned")
]


@pytest.mark.parametrize("bits, datapath, xkind", CASES)
def test_every_code_oracle_and_cpu_paths(bits, datapath, xkind):
    layer, x = every_code_layer(bits, datapath, xkind)
    want = oracle.run_layer(layer, x)
    assert (want["acc_exact"] == direct_products(layer, x).sum(axis=-1) + layer.bias).all()
    assert want["out"].min() == -(2 ** (bits - 1))  # the requantizer reaches the new code
    for xin in (x, x.astype(np.int8) if bits < 8 or xkind != "unsigned" else x.astype(np.int16)):
        assert_same(want, cpu.run_layer(layer, xin), "fast")
    assert_same(want, cpu.run_layer(layer, x, fast=False), "integer-only")
    if intmm.available() is not None:
        for side in ("weights", "activations"):
            got = cpu.run_layer(layer, x, options=CpuOptions(int8=True, one_hot=side, int8_chunk_k=1))
            assert_same(want, got, f"int8 {side}")
    sat, _ = every_code_layer(bits, datapath, xkind, "saturate", 20)  # clamps: the sequential kernels
    assert_same(oracle.run_layer(sat, x), cpu.run_layer(sat, x), "saturate")


def test_layer_refuses_codes_and_tables_outside_the_range():
    layer, x = every_code_layer(4, "operand", "full")
    with pytest.raises(ValueError, match=r"fr input contains -9, outside the allowed range \[-8, 7\]"):
        oracle.run_layer(layer, x - 1)
    sym_table = decode_table(PowerFormat(4, True, 0.6, 0.03), 8)
    with pytest.raises(ValueError, match=r"covers 15 codes from -7; allowed: the 16 codes -8..7"):
        Linear(**{**_fields(layer), "x_table": sym_table})
    pl, _ = every_code_layer(4, "product", "full")
    short = product_table(PowerFormat(4, True, 0.6, 1.0), PowerFormat(4, True, 0.6, 0.03), 12)
    with pytest.raises(ValueError, match=r"p_table has mx=7 and 50 entries per row; allowed: mx=8 and 65"):
        Linear(**{**_fields(pl), "p_table": short})


def _fields(layer):
    import dataclasses

    return {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer) if f.init}


# ---- serialization and golden files ------------------------------------------------------------
def _graph():
    return Graph([every_code_layer(4, "product", "full")[0]])


def test_serialization_round_trip_and_tags(tmp_path):
    g = _graph()
    arrays, attrs = graph_to_dict(g)
    f = attrs["nodes"][0]["fields"]
    assert f["w_range"] == {"t": "CodeRange", "bits": 4, "signed": True, "full_range": True}
    assert attrs["nodes"][0]["fields"]["meta"]["v"]["w_format"]["full_range"] is True
    g2 = graph_from_dict(arrays, attrs)
    assert model_hash(g2) == model_hash(g) and g2.nodes[0].layer.w_range == CodeRange(4, True, True)
    x = every_code_layer(4, "product", "full")[1]
    save_model(g, tmp_path / "m.h5")
    m = load_model(tmp_path / "m.h5", full=True)
    assert m.version == 3 and m.model_hash == model_hash(g)
    assert_same(oracle.run_layer(g.nodes[0].layer, x), oracle.run_layer(m.graph.nodes[0].layer, x), "loaded")
    # a symmetric range is written as before (no key): old graphs keep their model_hash
    sym = Linear.build(
        "s", np.array([[1, -7]]), PowerFormat(4, True, 0.5, 1.0), PowerFormat(4, False, 0.5, 1.0)
    )
    a2 = graph_to_dict(Graph([sym]))[1]["nodes"][0]["fields"]
    assert "full_range" not in json.dumps(a2)


@pytest.mark.parametrize(
    "tag, match",
    [
        ({"full_range": False}, r"full_range=False; allowed: true, or the key absent"),
        ({"full_range": 1}, r"full_range=1; allowed: true, or the key absent"),
        ({"wide": True}, r"unknown code range keys \['wide'\]"),
        ({"signed": False}, r"full_range=True is not allowed with signed=False"),
    ],
)
def test_bad_range_tags_are_refused(tag, match):
    arrays, attrs = graph_to_dict(_graph())
    attrs["nodes"][0]["fields"]["w_range"].update(tag)
    with pytest.raises(ModelFormatError, match=match):
        graph_from_dict(arrays, attrs)


def test_format_meta_round_trip():
    f = full(5, 0.7, np.array([0.1, 0.2]), granularity="channel")
    d = format_meta(f)
    g = format_from_meta(json.loads(json.dumps(d)))
    assert g.full_range and g.range == f.range and (g.scale == f.scale).all()
    assert "full_range" not in format_meta(PowerFormat(5, True, 0.7, 0.1))
    assert format_from_meta(format_meta(PowerFormat(5, True, 0.7, 0.1))).full_range is False


def test_golden_file(tmp_path):
    g = _graph()
    x = every_code_layer(4, "product", "full")[1]
    p = str(tmp_path / "g.h5")
    write_golden(g, x, p)
    gd = read_golden(p)
    lay = gd.layers["fr"]
    assert lay["info"]["weight_range"] == {
        "bits": 4,
        "signed": True,
        "qmin": -8,
        "qmax": 7,
        "kind": "CodeRange",
    }
    w = lay["datasets"]["weight_codes"]
    assert (
        w.min() == -8
        and (unpack_codes(lay["datasets"]["weight_codes_packed"], 4, True, w.size) == w.reshape(-1)).all()
    )
    want = oracle.run_layer(g.nodes[0].layer, x[5:6])
    assert (gd.vectors[5]["stages"]["fr"]["out"] == want["out"]).all()


def test_version_2_files_are_still_read(tmp_path):
    import h5py

    g = Graph(
        [
            Linear.build(
                "s", np.array([[1, -7]]), PowerFormat(4, True, 0.5, 1.0), PowerFormat(4, False, 0.5, 1.0)
            )
        ]
    )
    save_model(g, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        f.attrs["version"] = 2
    m = load_model(tmp_path / "m.h5", full=True)
    assert m.version == 2 and m.model_hash == model_hash(g)
