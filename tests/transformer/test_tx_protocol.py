"""The transformer layer types speak the layer protocol (nupes_sim/layers/base.py): their
self-description agrees with the oracle, and model files, golden files, verify, diff (HDF5
and hex dumps) and the audit work on transformer graphs."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from test_layer_protocol import _check_layer
from test_tx_oracle import attention_graph, power
from tx_strategies import ALL_CASES

from nupes_sim.audit import audit
from nupes_sim.dumps import tensor_file
from nupes_sim.golden import export_hex, read_golden, write_golden
from nupes_sim.graph import Graph, Node
from nupes_sim.serialize import graph_from_dict, graph_to_dict, load_model, model_hash, save_model
from nupes_sim.transformer.layers import ElementwiseTable, Embedding, Slice
from nupes_sim.verify import compare, diff, verify

IDS = np.array([[3, 1, 4, 0], [2, 7, 0, 0], [0, 0, 0, 0]])  # the last row is all padding


def slice_graph():
    pf = power(6, True, 0.5, 2.0)
    tok = Embedding.build("tok", np.random.default_rng(1).normal(0, 1, (11, 8)), pf)
    gelu = ElementwiseTable.build("gelu", pf, power(4, True, 0.7, 1.5), "gelu")
    return Graph([Node(tok, ("input",)), Node(Slice("mid", -1, 2, 6), ("tok",)), Node(gelu, ("mid",))])


GRAPHS = {
    "causal": lambda: attention_graph(masked=False),
    "masked": lambda: attention_graph(masked=True),
    "slice": slice_graph,
}


@pytest.mark.parametrize("op", sorted(ALL_CASES))
def test_self_description_agrees_with_the_oracle(op):
    @settings(max_examples=25)
    @given(ALL_CASES[op]())
    def run(case):
        _check_layer(*case)

    run()


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_every_node_describes_itself(name):
    g = GRAPHS[name]()
    r = g.run(IDS, backend="numpy", intermediates=True)
    values = {"input": IDS}
    shapes = g.stage_shapes(IDS.shape)
    for n in g.nodes:
        assert {s: a.shape for s, a in r.stages[n.name].items()} == shapes[n.name]
        _check_layer(n.layer, [values[i] for i in n.inputs])
        values[n.name] = r.stages[n.name]["out"]


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_model_file_round_trip(name, tmp_path):
    g = GRAPHS[name]()
    save_model(g, tmp_path / "m.h5", input_shape=(4,))
    m = load_model(tmp_path / "m.h5", full=True)
    assert m.model_hash == model_hash(g) and tuple(m.input_shape) == (4,)
    assert [type(n.layer) for n in m.graph.nodes] == [type(n.layer) for n in g.nodes]
    a = g.run(IDS, backend="numpy", intermediates=True)
    b = m.graph.run(IDS, backend="cpu", intermediates=True)
    for k, st in a.stages.items():
        for s, v in st.items():
            assert np.array_equal(b.stages[k][s], v), (k, s)
    arrays, attrs = graph_to_dict(g)
    assert model_hash(graph_from_dict(arrays, attrs)) == model_hash(g)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    d = tmp_path_factory.mktemp("txg")
    paths = {}
    for name, make in GRAPHS.items():
        p = str(d / f"{name}.h5")
        write_golden(make(), IDS, p, backend="numpy")
        paths[name] = p
    return paths


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_golden_then_verify_is_ok(golden, name, backend):
    g = read_golden(golden[name])
    assert len(g.vectors) == 3
    rep = verify(golden[name], backend=backend)
    assert rep.ok, rep.format_text()
    want = sum(a.size for v in g.vectors for st in v["stages"].values() for a in st.values())
    assert rep.compared == want + sum(v["input"].size for v in g.vectors)
    if name != "slice":
        assert {"prob", "mean", "inv", "y"} <= rep.stages


@pytest.mark.parametrize("layer,stage", [("sm", "prob"), ("sm", "acc"), ("ln", "inv"), ("qk", "out")])
def test_planted_change_fails_at_its_layer_and_stage(golden, layer, stage):
    g = read_golden(golden["masked"])
    observed = [
        {
            "input": v["input"],
            "stages": {k: {s: a.copy() for s, a in st.items()} for k, st in v["stages"].items()},
        }
        for v in g.vectors
    ]
    a = observed[1]["stages"][layer][stage]
    a.reshape(-1)[-1] += 1
    rep = compare(g, observed)
    assert not rep.ok and rep.n_mismatches == 1
    f = rep.first
    assert (f.vector, f.layer, f.stage, f.index) == (1, layer, stage, a.size - 1)
    assert f.observed == f.expected + 1


def test_hex_export_and_dump_diff(golden, tmp_path):
    out = tmp_path / "hex"
    man = export_hex(golden["masked"], out)
    widths = {e["tensor"]: (e["width"], e["signed"]) for e in man["tensors"]}
    assert widths["vectors/000000/006_qk/acc"] == (32, True)
    assert widths["vectors/000000/008_sm/prob"] == (16, False)  # 0..2^15: the stage's range, not out's
    assert widths["vectors/000000/008_sm/out"] == (8, False)
    assert diff(golden["masked"], str(out)).ok
    # one word of vector 2's LayerNorm inv changed: the diff names that layer, stage and index
    f = out / tensor_file("vectors/000002/003_ln/inv")
    words = f.read_text().split()
    words[0] = format(int(words[0], 16) ^ 1, f"0{len(words[0])}x")
    f.write_text("\n".join(words) + "\n")
    rep = diff(golden["masked"], str(out))
    assert not rep.ok and (rep.first.vector, rep.first.layer, rep.first.stage, rep.first.index) == (
        2,
        "ln",
        "inv",
        0,
    )
    assert "input_row" in rep.first.inputs and "mean" in rep.first.inputs  # what feeds a row statistic


@pytest.mark.parametrize("name", ["causal", "masked"])
def test_audit_runs_on_a_transformer(name, tmp_path):
    rep = audit(GRAPHS[name](), IDS, tmp_path / "a", plots=False)
    by = {r["name"]: r for r in rep["layers"]}
    assert by["qk"]["reference"] == "real formats" and by["qk"]["bound"] > 0
    assert by["sm"]["overflow_count"] == 0 and by["sm"]["err_lsb_max_abs"] < 8  # exp LUT rounding only
    assert by["ln"]["type"] == "LayerNorm" and "acc_width" not in by["ln"]
    assert os.path.isfile(tmp_path / "a" / "report.md")


def test_schema_version_1_files_are_read_unless_they_hold_new_types(golden, tmp_path):
    import shutil

    from golden_old import downgrade
    from tiny_models import add_inputs, add_net

    from nupes_sim.golden import GoldenFormatError

    old = str(tmp_path / "v1.h5")
    write_golden(add_net(), add_inputs(2), old)
    downgrade(old, 1)  # a CNN file as version 1 wrote it
    assert read_golden(old).attrs["schema_version"] == 1 and verify(old).ok
    tx = str(tmp_path / "tx_v1.h5")
    shutil.copy(golden["masked"], tx)
    downgrade(tx, 1)
    with pytest.raises(GoldenFormatError, match="version 1 files hold no .*LayerNorm.*Softmax"):
        read_golden(tx)


def test_transformer_layers_are_frozen_with_read_only_arrays():
    import dataclasses

    from nupes_sim.transformer.layers import TRANSFORMER_TYPES

    seen = set()
    for make in GRAPHS.values():
        for n in make().nodes:
            L = n.layer
            seen.add(type(L))
            assert type(L).__dataclass_params__.frozen, type(L)
            with pytest.raises(dataclasses.FrozenInstanceError):
                L.name = "other"
            arrays = [v for v in vars(L).values() if isinstance(v, np.ndarray)]
            for t in (getattr(L, k, None) for k in ("x_table", "a_table", "b_table", "p_table", "requant")):
                if t is not None:
                    arrays += [v for v in vars(t).values() if isinstance(v, np.ndarray)]
            for a in arrays:
                with pytest.raises(ValueError, match="read-only"):
                    a.reshape(-1)[:1] = 0
    assert set(TRANSFORMER_TYPES) <= seen
