"""verify.compare / diff with several planted divergences across vectors, layers and stages
(issue #16): the reported first divergence is the first in execution order (vector, input
codes, layers in graph order, acc_exact -> acc -> out, flat index) and every per-layer/stage
count is exact. verify.py is verify-hw's; these tests only use it."""

import copy
import shutil

import h5py
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import conv_inputs, conv_net

from nupes_sim.golden import layer_key, read_golden, vector_key, write_golden
from nupes_sim.verify import STAGE_ORDER, compare, diff


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("order") / "conv.h5")
    write_golden(conv_net(acc_width=16), conv_inputs(3, seed=2), p)
    return p, read_golden(p)


def _slots(g):
    """Every (vector, layer, stage) in execution order."""
    out = []
    for v, vec in enumerate(g.vectors):
        out.append((v, "input", "codes"))
        for n in g.graph.nodes:
            out += [(v, n.name, s) for s in STAGE_ORDER if s in vec["stages"][n.name]]
    return out


def _arr(vecs, v, layer, stage):
    return vecs[v]["input"] if layer == "input" else vecs[v]["stages"][layer][stage]


def _plant(g, plants):
    """Observed vectors = golden with bit 0 flipped at each (slot, flat index) of `plants`."""
    obs = copy.deepcopy(g.vectors)
    for (v, layer, stage), k in set(plants):
        a = _arr(obs, v, layer, stage)
        a.reshape(-1)[k] ^= 1
    return obs


def _check(g, plants, rep):
    order = {s: i for i, s in enumerate(_slots(g))}
    first_slot, first_k = min(plants, key=lambda p: (order[p[0]], p[1]))
    f = rep.first
    assert (f.vector, f.layer, f.stage, f.index) == (*first_slot, first_k)
    e = _arr(g.vectors, *first_slot).reshape(-1)[first_k]
    assert (f.expected, f.observed) == (int(e), int(e) ^ 1)
    want = {}
    for (v, layer, stage), k in set(plants):
        want[f"{layer}/{stage}"] = want.get(f"{layer}/{stage}", 0) + 1
    assert {k: c for k, c in rep.counts.items() if c} == want
    assert rep.n_mismatches == len(set(plants))
    assert rep.compared == sum(_arr(g.vectors, *s).size for s in _slots(g))


def test_later_stage_planted_first_in_the_list(golden):
    """Plants listed in reverse execution order: the earliest still wins."""
    p, g = golden
    slots = _slots(g)
    plants = [(slots[-1], 0), (slots[len(slots) // 2], 3), (slots[2], 1), (slots[2], 0)]
    _check(g, plants, compare(g, _plant(g, plants)))


def test_stage_order_within_a_layer(golden):
    """acc_exact before acc before out of the same layer, whatever the flat indices."""
    p, g = golden
    conv = g.graph.nodes[0].name
    plants = [((0, conv, "out"), 0), ((0, conv, "acc"), 5), ((0, conv, "acc_exact"), 40)]
    rep = compare(g, _plant(g, plants))
    _check(g, plants, rep)
    assert rep.first.stage == "acc_exact"


def test_vector_before_layer(golden):
    """An early layer of a later vector comes after the last layer of an earlier vector."""
    p, g = golden
    last = g.graph.nodes[-1].name
    plants = [((1, "input", "codes"), 0), ((0, last, "out"), 2), ((2, g.graph.nodes[0].name, "acc"), 0)]
    rep = compare(g, _plant(g, plants))
    _check(g, plants, rep)
    assert (rep.first.vector, rep.first.layer) == (0, last)


def test_input_codes_before_the_first_layer(golden):
    p, g = golden
    plants = [((0, g.graph.nodes[0].name, "acc_exact"), 0), ((0, "input", "codes"), 7)]
    rep = compare(g, _plant(g, plants))
    _check(g, plants, rep)
    assert rep.first.layer == "input"


@settings(max_examples=25)
@given(st.data())
def test_random_plants_first_and_counts(golden, data):
    p, g = golden
    slots = _slots(g)
    n = data.draw(st.integers(2, 8))
    plants = []
    for _ in range(n):
        s = data.draw(st.sampled_from(slots))
        k = data.draw(st.integers(0, _arr(g.vectors, *s).size - 1))
        plants.append((s, k))
    _check(g, plants, compare(g, _plant(g, plants)))


def test_diff_of_a_file_dump_reports_the_same(golden, tmp_path):
    """The same planted divergences read back from an HDF5 dump (diff) as from memory."""
    p, g = golden
    slots = _slots(g)
    plants = [(slots[7], 1), (slots[3], 2), (slots[-2], 0), (slots[3], 0)]
    dump = str(tmp_path / "dump.h5")
    shutil.copy(p, dump)
    names = {n.name: i for i, n in enumerate(g.graph.nodes)}
    with h5py.File(dump, "r+") as f:
        for (v, layer, stage), k in plants:
            ds = f"vectors/{vector_key(v)}/" + (
                "input" if layer == "input" else f"{layer_key(names[layer], layer)}/{stage}"
            )
            x = f[ds][()]
            x.reshape(-1)[k] ^= 1
            f[ds][...] = x
    _check(g, plants, diff(p, dump))


def test_identical_reports_ok_with_the_count(golden):
    p, g = golden
    rep = compare(g, copy.deepcopy(g.vectors))
    assert rep.ok and rep.n_mismatches == 0
    assert rep.compared == sum(_arr(g.vectors, *s).size for s in _slots(g))
    assert rep.format_text().startswith(f"OK: {rep.compared} elements")
