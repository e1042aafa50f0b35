"""verify recomputes golden files; diff finds planted single bit flips as the first divergence."""

import copy
import os
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import add_inputs, add_net, conv_inputs, conv_net

from nupes_sim.golden import export_hex, layer_key, read_golden, vector_key, write_golden
from nupes_sim.verify import compare, diff, verify


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    out = {}
    for name, g, x in (
        ("conv", conv_net(acc_width=16), conv_inputs(2, seed=1)),
        ("add", add_net(), add_inputs(3)),
    ):
        p = str(d / f"{name}.h5")
        write_golden(g, x, p)
        out[name] = (p, read_golden(p))
    return out


def test_verify_ok(files):
    for p, _ in files.values():
        rep = verify(p, backend="numpy")
        assert rep.ok and rep.compared > 0 and rep.n_mismatches == 0


def test_verify_cpu_backend_if_present(files):
    pytest.importorskip("nupes_sim.cpu")
    for p, _ in files.values():
        assert verify(p, backend="cpu").ok


def test_golden_from_other_backend_verifies_with_oracle(tmp_path):
    pytest.importorskip("nupes_sim.cpu")
    p = str(tmp_path / "g.h5")
    write_golden(conv_net(acc_width=16), conv_inputs(2), p, backend="cpu")
    assert verify(p, backend="numpy").ok


def _tensors(golden):
    """(vector, layer, stage, node index or None) in execution order."""
    out = []
    for v, vec in enumerate(golden.vectors):
        out.append((v, "input", "codes", None))
        for i, n in enumerate(golden.graph.nodes):
            for s in ("acc_exact", "acc", "out"):
                if s in vec["stages"][n.name]:
                    out.append((v, n.name, s, i))
    return out


def _get(vecs, v, layer, stage):
    return vecs[v]["input"] if layer == "input" else vecs[v]["stages"][layer][stage]


@settings(max_examples=60)
@given(st.sampled_from(["conv", "add"]), st.data())
def test_planted_flip_is_first_divergence(files, which, data):
    _, golden = files[which]
    v, layer, stage, ni = data.draw(st.sampled_from(_tensors(golden)))
    obs = copy.deepcopy(golden.vectors)
    a = _get(obs, v, layer, stage)
    k = data.draw(st.integers(0, a.size - 1))
    bit = data.draw(st.integers(0, 62))
    a.reshape(-1)[k] ^= np.int64(1) << np.int64(bit)
    rep = compare(golden, obs)
    f = rep.first
    assert (f.vector, f.layer, f.stage, f.index) == (v, layer, stage, k)
    assert f.multi_index == tuple(int(i) for i in np.unravel_index(k, a.shape))
    assert f.expected ^ f.observed == 1 << bit
    assert rep.n_mismatches == 1 and rep.counts[f"{layer}/{stage}"] == 1
    if ni is not None:
        L = golden.graph.nodes[ni].layer
        kind = type(L).__name__
        want = {
            "Linear": "input_row",
            "Conv2d": "window_codes",
            "Add": "a",
            "MaxPool2d": "window_codes",
            "AvgPool2d": "window_codes",
            "Flatten": "source_index",
        }[kind]
        assert want in f.inputs


@settings(max_examples=10)
@given(st.data())
def test_planted_flip_in_files(tmp_path_factory, files, data):
    p, golden = files["conv"]
    d = tmp_path_factory.mktemp("flip")
    v, layer, stage, ni = data.draw(st.sampled_from(_tensors(golden)))
    a = _get(golden.vectors, v, layer, stage)
    k = data.draw(st.integers(0, a.size - 1))
    # HDF5 dump (checksum left stale: a dump is read without checksum checks)
    dump = str(d / "dump.h5")
    shutil.copy(p, dump)
    ds = f"vectors/{vector_key(v)}/" + ("input" if ni is None else f"{layer_key(ni, layer)}/{stage}")
    with h5py.File(dump, "r+") as f:
        x = f[ds][()]
        x.reshape(-1)[k] ^= 1
        f[ds][...] = x
    f1 = diff(p, dump).first
    assert (f1.vector, f1.layer, f1.stage, f1.index) == (v, layer, stage, k)
    # hex dump
    hexdir = str(d / "hex")
    man = export_hex(p, hexdir)
    e = next(t for t in man["tensors"] if t["tensor"] == ds)
    fn = os.path.join(hexdir, e["file"])
    lines = open(fn).read().split()
    lines[k] = format(int(lines[k], 16) ^ 1, f"0{len(lines[k])}x")
    open(fn, "w").write("\n".join(lines) + "\n")
    f2 = diff(p, hexdir).first
    assert (f2.vector, f2.layer, f2.stage, f2.index) == (v, layer, stage, k)


def test_diff_identical_and_report(files):
    p, _ = files["add"]
    rep = diff(p, p)
    assert rep.ok and "OK" in rep.format_text()
    assert rep.to_dict()["first_divergence"] is None
