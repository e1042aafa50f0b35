"""Golden schema 3 (#11 items 5c, 7b): each threshold layer's `requant_table`, input_shape
without the batch axis (as save_model's), and files of schema 1 and 2 still read."""

import os
import shutil
import sys

import h5py
import numpy as np
import pytest
from golden_old import downgrade
from tiny_models import add_inputs, add_net, conv_inputs, conv_net

from nupes_sim.golden import GoldenFormatError, export_hex, read_golden, read_hex_dir, write_golden
from nupes_sim.oracle import requantize
from nupes_sim.serialize import load_model, save_model, sha256_array
from nupes_sim.tables import Thresholds
from nupes_sim.verify import verify
from nupes_sim.versions import GOLDEN_SCHEMA_VERSION

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")
sys.path.insert(0, os.path.join(HERE, "hdl"))
sys.path.insert(0, os.path.join(HERE, "transformer"))
from configs import graph as hdl_graph  # noqa: E402

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _attention():
    from test_tx_oracle import attention_graph

    return attention_graph(masked=True), np.array([[3, 1, 4, 0], [2, 7, 0, 0]])


CONFIGS = {  # name: (graph, inputs); with thresholds out of range (never reached) where noted
    "conv_operand_20": lambda: (conv_net(), conv_inputs(2)),
    "conv_operand_16": lambda: (conv_net(acc_width=16), conv_inputs(2)),  # never-reached thresholds
    "conv_product_18": lambda: (conv_net(datapath="product", acc_width=18), conv_inputs(2)),
    "add": lambda: (add_net(), add_inputs(2)),
    "hdl_operand_sat_11": lambda: (hdl_graph("operand_sat"), np.arange(32).reshape(2, 16) % 16),
    "hdl_product_tile_9": lambda: (hdl_graph("product_tile"), np.arange(32).reshape(2, 16) % 16),
    "attention": _attention,  # LayerNorm y, Softmax prob, MatMul/Add on 64-bit accumulators
}


def _value_range(L):
    """What the requantizer reads, derived here from the layer type (not from schema.py)."""
    t = type(L).__name__
    if t == "Softmax":
        return 0, 2**L.prob_bits
    if t == "LayerNorm":
        return -L.y_bound, L.y_bound
    n = L.acc.width
    return -(2 ** (n - 1)), min(2 ** (n - 1) - 1, I64_MAX - 1)  # 64 bits: INT64_MAX = never reached


def _code(L, r, value):
    """The oracle's code for one value in threshold row r (all rows filled with the value)."""
    rows = L.requant.thr.shape[0]
    return int(requantize(np.full((1, rows), value, np.int64), L.requant, 1, L.seed, L.tensor_id)[0, r])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("s3")
    out = {}
    for name, make in CONFIGS.items():
        g, x = make()
        p = str(d / f"{name}.h5")
        write_golden(g, x, p)
        out[name] = (g, p)
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_requant_table_is_the_oracle_at_every_reachable_threshold(files, name):
    g, p = files[name]
    gold = read_golden(p)
    checked = left_out = 0
    for n in g.nodes:
        L = n.layer
        ds = gold.layers[n.name]["datasets"]
        if not isinstance(getattr(L, "requant", None), Thresholds):
            assert "requant_table" not in ds  # rescale or none: no boundary list (docs/GOLDEN.md)
            continue
        tab = ds["requant_table"]
        assert tab.dtype == np.int64 and tab.ndim == 2 and tab.shape[1] == 4
        lo, hi = _value_range(L)
        thr = L.requant.thr
        want = [(r, int(t)) for r in range(thr.shape[0]) for t in thr[r] if lo <= int(t) <= hi]
        assert [(int(r), int(t)) for r, t in tab[:, :2]] == want  # every one, in row then column order
        for r in range(thr.shape[0]):  # what is left out is never reached by the requantizer's input
            for t in thr[r]:
                if not lo <= int(t) <= hi:
                    assert int(t) > hi or int(t) < lo
                    assert int(t) in (hi + 1, I64_MAX) or int(t) < lo
                    left_out += 1
        for r, t, at_t, below in tab.tolist():
            row = [int(v) for v in thr[r]]
            assert at_t == L.requant.qmin + sum(t >= v for v in row) == _code(L, r, t)
            assert below == L.requant.qmin + sum(t - 1 >= v for v in row)
            if t > I64_MIN:
                assert below == _code(L, r, t - 1)
            checked += 1
    assert checked > 0
    if name in ("conv_operand_16", "hdl_operand_sat_11", "attention"):
        assert left_out > 0, "this configuration is meant to hold never-reached thresholds"


def test_hex_export_carries_the_table(files, tmp_path):
    g, p = files["hdl_operand_sat_11"]
    gold = read_golden(p)
    man = export_hex(p, tmp_path / "hex")
    _, tensors = read_hex_dir(tmp_path / "hex")
    tab = gold.layers["fc"]["datasets"]["requant_table"]
    assert np.array_equal(tensors["layers/000_fc/requant_table"], tab)
    rows = man["layers"]["000_fc"]["requant_table"]
    flat = [
        [r, e["threshold"], e["code_at_t"], e["code_at_t_minus_1"]] for r, es in enumerate(rows) for e in es
    ]
    assert flat == tab.tolist() and len(rows) == g.nodes[0].layer.requant.thr.shape[0]
    g2, p2 = files["conv_operand_20"]  # rescale layers: no table in the manifest either
    man2 = export_hex(p2, tmp_path / "hex2")
    assert "requant_table" not in man2["layers"]["004_fc"] and "requant_table" in man2["layers"]["000_conv"]


def test_input_shape_agrees_with_the_model_file(files, tmp_path):
    g, p = files["conv_operand_20"]
    save_model(g, tmp_path / "m.h5", input_shape=(3, 8, 8))
    m = load_model(tmp_path / "m.h5", full=True)
    gold = read_golden(p)
    assert gold.attrs["schema_version"] == GOLDEN_SCHEMA_VERSION == 3
    assert gold.attrs["input_shape"] == list(m.input_shape) == [3, 8, 8]
    assert gold.vectors[0]["input"].shape == (1, 3, 8, 8)  # each vector keeps its batch axis 1
    with h5py.File(p) as f:
        assert list(f.attrs["input_shape"]) == [3, 8, 8]
    q = str(tmp_path / "batched.h5")
    shutil.copy(p, q)
    with h5py.File(q, "r+") as f:
        f.attrs["input_shape"] = np.array([1, 3, 8, 8])  # the version-2 convention in a v3 file
    with pytest.raises(GoldenFormatError, match=r"input_shape.*\[1, 3, 8, 8\].*cannot be run"):
        read_golden(q)


@pytest.mark.parametrize("version", [1, 2])
def test_committed_old_fixtures_still_read(version):
    """Real files of schema 1 and 2 (tests/fixtures/old/, written by the code of their time)
    read as today's conv.h5 fixture: same vectors, input_shape without the batch axis, and
    the requant_table derived from the stored model (strict reading, the expected side)."""
    old = read_golden(os.path.join(FIX, "old", f"conv_schema{version}.h5"))
    new = read_golden(os.path.join(FIX, "conv.h5"))
    assert old.attrs["schema_version"] == version and new.attrs["schema_version"] == 3
    assert old.attrs["input_shape"] == new.attrs["input_shape"] == [2, 4, 4]
    for name, lay in new.layers.items():
        assert lay["info"] == old.layers[name]["info"]
        assert lay["datasets"].keys() == old.layers[name]["datasets"].keys()
        for k, a in lay["datasets"].items():
            assert np.array_equal(a, old.layers[name]["datasets"][k]), (name, k)
    for a, b in zip(old.vectors, new.vectors):
        assert np.array_equal(a["input"], b["input"]) and a["stages"].keys() == b["stages"].keys()
        for name, st in a["stages"].items():
            assert all(np.array_equal(st[s], b["stages"][name][s]) for s in st)
    dump = read_golden(os.path.join(FIX, "old", f"conv_schema{version}.h5"), strict=False)
    assert "requant_table" not in dump.layers["conv"]["datasets"]  # a dump: only what it holds
    rep = verify(os.path.join(FIX, "old", f"conv_schema{version}.h5"))
    assert rep.ok and rep.compared > 0


def _copy(src, tmp_path, name):
    q = str(tmp_path / name)
    shutil.copy(src, q)
    return q


def test_version_rules_are_enforced(files, tmp_path):
    _, p = files["add"]
    v2 = downgrade(_copy(p, tmp_path, "v2.h5"), 2)
    g2 = read_golden(v2)
    assert g2.attrs["schema_version"] == 2 and g2.attrs["input_shape"] == read_golden(p).attrs["input_shape"]
    assert verify(v2).ok
    q = _copy(p, tmp_path, "v3_missing.h5")  # version 3 without its table
    with h5py.File(q, "r+") as f:
        del f["layers/002_add/requant_table"]
    with pytest.raises(GoldenFormatError, match="002_add/requant_table: missing: schema version 3 requires"):
        read_golden(q)
    q = _copy(v2, tmp_path, "v2_with_table.h5")  # version 2 with one
    with h5py.File(p) as src, h5py.File(q, "r+") as f:
        src.copy("layers/000_a/requant_table", f["layers/000_a"])
    with pytest.raises(GoldenFormatError, match="000_a/requant_table: present in a version-2 file"):
        read_golden(q)
    q = _copy(p, tmp_path, "v2_unbatched.h5")  # version 2 storing the version-3 input_shape
    downgrade(q, 2)
    with h5py.File(q, "r+") as f:
        f.attrs["input_shape"] = f.attrs["input_shape"][1:]
    with pytest.raises(GoldenFormatError, match="input_shape.*version-2 file stores the batch axis 1"):
        read_golden(q)


def _rewrite(f, name, data, sha=True):
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=data)
    for k, v in attrs.items():
        f[name].attrs[k] = v
    if sha:
        f[name].attrs["sha256"] = sha256_array(np.asarray(data))


def _swap_first_different(a):
    """Row order with row 0 and the first row unlike it swapped (equal rows swap to nothing)."""
    j = next(i for i in range(len(a)) if not np.array_equal(a[i], a[0]))
    order = list(range(len(a)))
    order[0], order[j] = j, 0
    return order


MUTATIONS = {  # each on /layers/000_fc/requant_table; the table is fixed by the model: all refused
    "threshold+1 (checksum recomputed)": lambda a: a + (np.arange(a.size).reshape(a.shape) == 1),
    "code column off by one": lambda a: a + np.array([0, 0, 0, 1]),
    "row dropped": lambda a: a[:-1],
    "rows swapped": lambda a: a[_swap_first_different(a)],
    "int32": lambda a: a.astype(np.int32),
    "big-endian": lambda a: a.astype(">i8"),
    "flattened": lambda a: a.reshape(-1),
}


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_mutated_requant_table_is_refused(files, tmp_path, kind):
    _, p = files["hdl_operand_sat_11"]
    q = _copy(p, tmp_path, "m.h5")
    with h5py.File(q, "r+") as f:
        a = f["layers/000_fc/requant_table"][()]
        _rewrite(f, "layers/000_fc/requant_table", MUTATIONS[kind](a))
    with pytest.raises(GoldenFormatError, match="000_fc/requant_table"):
        read_golden(q)


def test_requant_table_checksum_and_attributes_are_checked(files, tmp_path):
    _, p = files["hdl_operand_sat_11"]
    q = _copy(p, tmp_path, "sha.h5")
    with h5py.File(q, "r+") as f:
        a = f["layers/000_fc/requant_table"][()]
        a[0, 2] += 1
        _rewrite(f, "layers/000_fc/requant_table", a, sha=False)
    with pytest.raises(GoldenFormatError, match="000_fc/requant_table: SHA-256 checksum mismatch"):
        read_golden(q)
    q = _copy(p, tmp_path, "attr.h5")
    with h5py.File(q, "r+") as f:
        f["layers/000_fc/requant_table"].attrs["extra"] = 1
    with pytest.raises(GoldenFormatError, match="000_fc/requant_table: attributes"):
        read_golden(q)


@pytest.mark.parametrize("name", ["conv.h5", "old/conv_schema2.h5"])
def test_verify_counts_the_layer_tables_it_checked(name):
    """verify's OK line states the layer tables the strict reader compared with the stored
    model: every /layers dataset the file holds (an older file's derived requant_table is not
    one of them), never '0 entries in 0 tensors' for a file that has tables."""
    path = os.path.join(FIX, name)
    with h5py.File(path) as f:
        held = [f["layers"][k][d] for k in f["layers"] for d in f["layers"][k]]
        want = (len(held), sum(int(d.size) for d in held))
    rep = verify(path)
    assert rep.ok and (rep.params, rep.param_elements) == want and want[0] > 0
    assert (
        f"and {want[1]} entries in {want[0]} layer parameter tensors (read from the file" in rep.format_text()
    )


def test_coverage_counts_the_requant_table_against_the_requantized_value(files):
    """`golden`'s coverage line counts the requant_table's thresholds, hit by the value the
    requantizer reads: Softmax's prob (not its row sums), the accumulator elsewhere; a 64-bit
    MatMul's never-reached INT64_MAX is not counted."""
    from nupes_sim.stress import coverage

    g, p = files["attention"]
    gold = read_golden(p)
    rows = {r["layer"]: r for r in coverage(gold)}
    assert {"sm", "av", "emb", "res"} <= set(rows)
    assert "thresholds" not in rows["qk"]  # a rescale MatMul: no table, nothing counted
    for name, r in rows.items():
        if name == "qk":
            continue
        L = g.nodes[[n.name for n in g.nodes].index(name)].layer
        tab = gold.layers[name]["datasets"]["requant_table"]
        assert L.requant.thr.shape[0] == 1  # per tensor: every value meets the one row
        src = "prob" if type(L).__name__ == "Softmax" else "acc"
        seen = {int(x) for v in gold.vectors for x in v["stages"][name][src].reshape(-1)}
        assert r["thresholds"] == len(tab) and I64_MAX not in tab[:, 1].tolist()
        assert r["thresholds_hit"] == sum(int(t) in seen for t in tab[:, 1])
        assert r["thresholds_minus_1_hit"] == sum(int(t) - 1 in seen for t in tab[:, 1])
    assert rows["sm"]["thresholds_hit"] > 0  # prob values do meet prob thresholds


def test_hex_export_of_an_old_file_is_in_todays_layout(tmp_path):
    """Exporting a schema-2 file gives today's folder: the same files and tensors as the
    schema-3 conv.h5 fixture's export (the requant_table derived from the stored model)."""
    old = export_hex(os.path.join(FIX, "old", "conv_schema2.h5"), tmp_path / "old")
    new = export_hex(os.path.join(FIX, "conv.h5"), tmp_path / "new")
    assert old["schema_version"] == new["schema_version"] == 3 and old["input_shape"] == [2, 4, 4]
    assert old["tensors"] == new["tensors"] and old["layers"] == new["layers"]
    assert sorted(os.listdir(tmp_path / "old")) == sorted(os.listdir(tmp_path / "new"))
