"""`diff` never passes what it did not check: one test per false-pass case of issues #11, #12, #19.

Each case is a dump that an earlier `diff` read as "OK" (exit 0); each must now fail and name
what is wrong, and the intentionally partial forms must pass only when asked for.
"""

import json
import os
import shutil

import h5py
import numpy as np
import pytest
from tiny_models import conv_inputs, conv_net

from nupes_sim.dumps import expected_layout, file_tensor, tensor_file, write_dump
from nupes_sim.golden import export_hex, read_golden, write_golden
from nupes_sim.verify import diff, verify

N_VEC = 16


@pytest.fixture(scope="module")
def gold(tmp_path_factory):
    d = tmp_path_factory.mktemp("strict")
    p = str(d / "g.h5")
    write_golden(conv_net(acc_width=48), conv_inputs(N_VEC, seed=2), p)
    export_hex(p, str(d / "hex"))
    other = str(d / "other.h5")
    write_golden(conv_net(seed=1, acc_width=48), conv_inputs(N_VEC, seed=2), other)
    return {"path": p, "hex": str(d / "hex"), "golden": read_golden(p), "other": other}


def _copy_hex(gold, tmp_path, manifest=True):
    d = tmp_path / "dump"
    shutil.copytree(gold["hex"], d)
    if not manifest:
        os.remove(d / "manifest.json")
    return d


def _edit_word(folder, tensor, k, word):
    fn = os.path.join(folder, tensor_file(tensor))
    lines = open(fn).read().split()
    old = lines[k]
    lines[k] = word
    open(fn, "w").write("\n".join(lines) + "\n")
    return old


def test_full_hex_dump_passes_and_says_how_much(gold):
    rep = diff(gold["path"], gold["hex"])
    assert rep.ok, rep.format_text()
    layout = expected_layout(gold["golden"])
    n_el = sum(e.values.size for e in layout.values() if e.vector is not None)
    assert (
        rep.compared == n_el
        and len(rep.vectors) == N_VEC
        and rep.layers == ["conv", "pool", "avg", "flat", "fc"]
    )
    assert rep.params == sum(1 for e in layout.values() if e.vector is None)
    text = rep.format_text()
    assert text.startswith(f"OK: {n_el} elements in {rep.tensors} tensors (16 vectors, 5 layers")
    assert gold["golden"].attrs["model_hash"] in text


def test_empty_dump_folder_fails(gold, tmp_path):
    (tmp_path / "empty").mkdir()
    rep = diff(gold["path"], tmp_path / "empty")
    assert not rep.ok and rep.compared == 0
    assert any("nothing was compared" in f for f in rep.failures)
    assert any("absent from the dump" in f for f in rep.failures)
    # --partial never makes "nothing" OK
    assert not diff(gold["path"], tmp_path / "empty", partial=True).ok


def test_names_matching_nothing_fail(gold, tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    layout = expected_layout(gold["golden"])
    for t, e in layout.items():  # wrong values under names the golden file does not hold
        bogus = t.replace("vectors/", "vector/").replace("layers/", "layer/")
        (d / tensor_file(bogus)).write_text("ff\n" * e.values.size)
    rep = diff(gold["path"], d)
    assert not rep.ok and rep.compared == 0
    assert any("names no tensor of the golden file" in f for f in rep.failures)
    assert not diff(gold["path"], d, partial=True).ok
    # one unknown file next to a complete dump still fails, and says which
    d2 = _copy_hex(gold, tmp_path, manifest=False)
    (d2 / "vectors__000000__005_extra__out.hex").write_text("00\n")
    rep = diff(gold["path"], d2)
    assert not rep.ok and any("vectors__000000__005_extra__out.hex" in f for f in rep.failures)


@pytest.mark.parametrize("manifest", [True, False])
def test_12_of_16_vectors_missing_fails(gold, tmp_path, manifest):
    d = _copy_hex(gold, tmp_path, manifest)
    for f in os.listdir(d):
        t = file_tensor(f)
        if t and t.startswith("vectors/") and int(t.split("/")[1]) >= 4:
            os.remove(d / f)
    rep = diff(gold["path"], d)
    assert not rep.ok and rep.first is None
    text = rep.format_text()
    if manifest:
        assert "listed in the manifest but absent" in text and "holds 16 vectors" not in text
    assert "absent from the dump (vectors 4-15)" in text
    # intentionally partial: say which vectors, or --partial (which lists what was not compared)
    if not manifest:
        ok = diff(gold["path"], d, vectors=range(4))
        assert ok.ok and len(ok.vectors) == 4, ok.format_text()
        p = diff(gold["path"], d, partial=True)
        assert p.ok and len(p.not_compared) == 12 * (1 + 2 + 1 + 2 + 1 + 2) and len(p.vectors) == 4


def test_manifest_vector_count_must_match(gold, tmp_path):
    d = _copy_hex(gold, tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    man["n_vectors"] = 20
    (d / "manifest.json").write_text(json.dumps(man))
    rep = diff(gold["path"], d)
    assert not rep.ok and any("holds 20 vectors" in f for f in rep.failures)


@pytest.mark.parametrize("word", ["100", "1ff", "x", "zz", "0g"])
def test_word_wider_than_8_bits_is_a_mismatch(gold, tmp_path, word):
    t = "vectors/000003/004_fc/out"
    layout = expected_layout(gold["golden"])
    assert layout[t].width == 8
    k = 2
    d = _copy_hex(gold, tmp_path)
    if word == "100":  # the low 8 bits equal the expected word: masking would read it as identical
        word = "1" + open(d / tensor_file(t)).read().split()[k]
    _edit_word(d, t, k, word)
    rep = diff(gold["path"], d)
    assert not rep.ok
    f = rep.first
    assert (f.vector, f.layer, f.stage, f.index, f.observed) == (3, "fc", "out", k, word)
    assert "never masked" in f.inputs["word"] and rep.n_mismatches == 1


def test_garbage_in_upper_bits_of_48_bit_word(gold, tmp_path):
    t = "vectors/000001/000_conv/acc"
    layout = expected_layout(gold["golden"])
    assert layout[t].width == 48
    d = _copy_hex(gold, tmp_path)
    k = 5
    old = open(d / tensor_file(t)).read().split()[k]
    assert len(old) == 12
    _edit_word(d, t, k, "a" + old)  # bit 51 set: a 64-bit register written as-is
    rep = diff(gold["path"], d)
    assert not rep.ok and (rep.first.vector, rep.first.layer, rep.first.stage, rep.first.index) == (
        1,
        "conv",
        "acc",
        k,
    )
    # a sign-extended negative 48-bit value in a 64-bit word is also wider than declared
    d2 = tmp_path / "d2"
    shutil.copytree(gold["hex"], d2)
    _edit_word(d2, t, k, "ffff" + old)
    assert not diff(gold["path"], d2).ok


def test_wrong_word_count_and_declared_width_fail(gold, tmp_path):
    d = _copy_hex(gold, tmp_path)
    t = "vectors/000000/004_fc/out"
    fn = d / tensor_file(t)
    fn.write_text("\n".join(fn.read_text().split()[:-1]) + "\n")
    rep = diff(gold["path"], d)
    assert not rep.ok and any("4 words; the tensor has 5 elements" in f for f in rep.failures)
    d2 = tmp_path / "d2"
    shutil.copytree(gold["hex"], d2)
    man = json.loads((d2 / "manifest.json").read_text())
    e = next(e for e in man["tensors"] if e["tensor"] == t)
    e["width"] = 16
    (d2 / "manifest.json").write_text(json.dumps(man))
    rep = diff(gold["path"], d2)
    assert not rep.ok and any("manifest declares 16-bit" in f for f in rep.failures)


def test_flipped_threshold_fails_h5_and_hex(gold, tmp_path):
    dump = tmp_path / "dump.h5"
    shutil.copy(gold["path"], dump)
    with h5py.File(dump, "r+") as f:
        thr = f["layers/000_conv/thresholds"][()]
        thr[0, 3] ^= 1
        f["layers/000_conv/thresholds"][...] = thr
    rep = diff(gold["path"], dump)
    assert not rep.ok and rep.first is None and rep.counts["layers/000_conv/thresholds"] == 1
    pm = rep.param_mismatches[0]
    assert (pm.layer, pm.stage, pm.multi_index) == ("conv", "thresholds", (0, 3))
    assert "parameter mismatch" in rep.format_text()
    d = _copy_hex(gold, tmp_path)
    t = "layers/000_conv/thresholds"
    k = 3
    w = open(d / tensor_file(t)).read().split()[k]
    _edit_word(d, t, k, format(int(w, 16) ^ 1, f"0{len(w)}x"))
    rep = diff(gold["path"], d)
    assert not rep.ok and rep.param_mismatches[0].index == k


def test_layer_info_difference_fails(gold, tmp_path):
    dump = tmp_path / "dump.h5"
    shutil.copy(gold["path"], dump)
    with h5py.File(dump, "r+") as f:
        info = json.loads(f["layers/004_fc"].attrs["info"])
        info["overflow"] = "saturate"
        f["layers/004_fc"].attrs["info"] = json.dumps(info)
    rep = diff(gold["path"], dump)
    assert not rep.ok and rep.param_mismatches[0].stage == "info"
    assert "overflow" in rep.param_mismatches[0].inputs["differing keys"]


def test_dump_of_another_model_fails(gold, tmp_path):
    rep = diff(gold["path"], gold["other"])
    assert not rep.ok and any("made from model" in f for f in rep.failures)
    rep = diff(gold["path"], gold["other"], allow_other_model=True)
    assert not any("made from model" in f for f in rep.failures)
    assert any("allowed by --allow-other-model" in n for n in rep.notes)
    # a hex manifest naming another model
    d = _copy_hex(gold, tmp_path)
    man = json.loads((d / "manifest.json").read_text())
    man["model_hash"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(man))
    assert not diff(gold["path"], d).ok
    assert diff(gold["path"], d, allow_other_model=True).ok


def test_expected_model_hash_pins_verify_and_diff(gold):
    mh = gold["golden"].attrs["model_hash"]
    other = read_golden(gold["other"]).attrs["model_hash"]
    assert verify(gold["path"], expect_model_hash=mh).ok
    assert verify(gold["path"], expect_model_hash=mh[:12]).ok
    rep = verify(gold["path"], expect_model_hash=other)
    assert not rep.ok and any(other in f for f in rep.failures)
    assert not diff(gold["path"], gold["hex"], expect_model_hash=other).ok
    with pytest.raises(ValueError, match="at least 12 hex digits"):
        verify(gold["path"], expect_model_hash="abc")


def test_dump_without_manifest_by_stage_selection(gold, tmp_path):
    g = gold["golden"]
    layout = expected_layout(g)
    outs = {t: e.values for t, e in layout.items() if e.stage == "out"}
    d = tmp_path / "outs"
    write_dump(d, outs, g)
    rep = diff(gold["path"], d)  # input and acc are required by default
    assert not rep.ok and any("absent from the dump" in f for f in rep.failures)
    rep = diff(gold["path"], d, stages=("out",))
    assert rep.ok and rep.stages == {"out"} and "names no model" in rep.format_text()
    rep = diff(gold["path"], d, stages=("out",), layers=["fc"])
    assert rep.ok and rep.layers == ["fc"] and any("outside the selection" in n for n in rep.notes)
    bad = dict(outs)
    t = "vectors/000007/001_pool/out"
    bad[t] = bad[t].copy()
    bad[t].reshape(-1)[9] += 1
    write_dump(d, bad, g)
    f = diff(gold["path"], d, stages=("out",)).first
    assert (f.vector, f.layer, f.stage, f.index) == (7, "pool", "out", 9)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        diff(gold["path"], d, layers=["nope"])
    with pytest.raises(ValueError, match="vector 16"):
        diff(gold["path"], d, vectors=[16])
    with pytest.raises(ValueError, match="does not fit"):
        write_dump(d, {t: np.full((1, 4, 4, 4), 99)}, g)


def test_h5_dump_with_fewer_vectors_fails(gold, tmp_path):
    g = gold["golden"]
    short = tmp_path / "short.h5"
    write_golden(g.graph, np.stack([v["input"][0] for v in g.vectors[:4]]), short)
    rep = diff(gold["path"], short)
    assert not rep.ok and any("absent from the dump (vectors 4-15)" in f for f in rep.failures)
    assert any("holds 4 vectors" in f for f in rep.failures)
    assert diff(gold["path"], short, vectors=range(4)).ok


def test_tb_helper_round_trip(gold, tmp_path):
    from nupes_sim.tb import DumpWriter, GoldenVectors

    gv = GoldenVectors(gold["path"])
    dw = DumpWriter(tmp_path / "tb", gv)
    assert gv.input_shape == conv_inputs(1).shape[1:] and gv.input(0).shape == (1, *gv.input_shape)
    for v in range(gv.n_vectors):
        dw.put_input(v, gv.input(v).reshape(-1).tolist())
        for layer in gv.layers:
            for s in ("acc", "out"):
                if s in gv.golden.vectors[v]["stages"][layer]:
                    dw.put(v, layer, s, gv.stage(v, layer, s).reshape(-1))
    files = dw.close()
    assert gv.file_name(0, "fc", "out") in files and gv.word(0, "fc", "out") == (8, True)
    assert np.array_equal(gv.layer_input(0, "pool"), gv.stage(0, "conv", "out"))
    rep = diff(gold["path"], tmp_path / "tb")
    assert rep.ok and rep.stages == {"input", "acc", "out"}, rep.format_text()


def test_divergence_context_thresholds_and_clamp(tmp_path):
    import sys as _s

    _s.path.insert(0, os.path.join(os.path.dirname(__file__), "hdl"))
    from configs import graph

    from nupes_sim.stress import stress_inputs

    g = graph("operand_sat")
    p = tmp_path / "g.h5"
    write_golden(g, stress_inputs(g, (16,), seed=0)[:8], p)
    gold = read_golden(p)
    L = g.nodes[0].layer
    sat_v = next(
        v
        for v, vec in enumerate(gold.vectors)
        if (vec["stages"]["fc"]["acc"] != vec["stages"]["fc"]["acc_exact"]).any()
    )
    d = tmp_path / "d"
    layout = expected_layout(gold)
    t = {
        n: e.values.copy()
        for n, e in layout.items()
        if e.vector is not None and e.stage in ("acc", "out", "codes")
    }
    o = int(
        np.flatnonzero(
            gold.vectors[sat_v]["stages"]["fc"]["acc"][0]
            != gold.vectors[sat_v]["stages"]["fc"]["acc_exact"][0]
        )[0]
    )
    delta = -1 if t[f"vectors/{sat_v:06d}/000_fc/acc"][0, o] == L.acc.hi else 1
    t[f"vectors/{sat_v:06d}/000_fc/acc"][0, o] += delta
    write_dump(d, t, gold)
    f = diff(p, d).first
    assert (f.vector, f.stage, f.index) == (sat_v, "acc", o)
    assert f.inputs["first step where the reference clamped"].startswith("k=")
    assert len(f.inputs["decoded weights W_k (w_lut)"]) == 16 == len(f.inputs["products p_k (k ascending)"])
    t[f"vectors/{sat_v:06d}/000_fc/acc"][0, o] -= delta
    e = t["vectors/000000/000_fc/out"]
    e[0, 0] = e[0, 0] + 1 if e[0, 0] < L.requant.qmax else e[0, 0] - 1
    write_dump(d, t, gold)
    f = diff(p, d).first
    lo, hi = f.inputs["acc interval of the expected code [thr_lo, thr_hi)"]
    acc = int(gold.vectors[0]["stages"]["fc"]["acc"][0, 0])
    assert (lo is None or lo <= acc) and (hi is None or acc < hi)
    assert "acc interval of the observed code [thr_lo, thr_hi)" in f.inputs


@pytest.mark.parametrize("datapath", ["operand", "product"])
def test_divergence_context_conv_replays_the_clamp(tmp_path, datapath):
    """#11.6 for Conv2d: a saturating conv's first divergence at `acc` names the first step k
    where the reference clamped. All 27 window products of channel 0 at an interior position
    equal c > 0 (weights +7, inputs qmax), so the running sum bias + (k+1)c first exceeds
    acc_max at k = floor((acc_max - bias) / c): derived here without the replay."""
    from nupes_sim.formats import PowerFormat
    from nupes_sim.graph import Graph
    from nupes_sim.layers import Accumulator, Conv2d

    xf = PowerFormat(4, False, 0.7, 0.05)
    wf = PowerFormat(4, True, 0.7, 0.08)
    w = np.full((2, 3, 3, 3), 7)
    w[1] = -3
    probe = Conv2d.build("c", w, wf, xf, datapath=datapath, padding=1, acc=Accumulator(40, "saturate"))
    x = np.full((1, 3, 5, 5), xf.range.qmax)
    from nupes_sim.oracle import conv2d

    c = int(conv2d(probe, x)["acc_exact"][0, 0, 2, 2]) // 27  # 27 equal products
    width = int(10 * c).bit_length() + 1  # acc_max = 2^(width-1) - 1 >= 10c: clamps after >= 10 steps
    L = Conv2d.build("c", w, wf, xf, datapath=datapath, padding=1, acc=Accumulator(width, "saturate"))
    k_want = (L.acc.hi - int(L.bias[0])) // c
    assert 10 <= k_want < 26
    p = tmp_path / "g.h5"
    write_golden(Graph([L]), x, p)
    gold = read_golden(p)
    t = {n: e.values.copy() for n, e in expected_layout(gold).items() if e.vector is not None}
    acc = t["vectors/000000/000_c/acc"]
    assert acc[0, 0, 2, 2] == L.acc.hi  # it saturated
    acc[0, 0, 2, 2] -= 1
    d = tmp_path / "d"
    write_dump(d, t, gold)
    f = diff(p, d).first
    assert f.stage == "acc" and tuple(np.unravel_index(f.index, acc.shape)) == (0, 0, 2, 2)
    ctx = f.inputs
    assert ctx["products p_k (k ascending)"] == [c] * 27
    assert ctx["first step where the reference clamped"] == f"k={k_want}"
    if datapath == "operand":
        assert len(ctx["decoded weights W_k (w_lut)"]) == 27 and None not in ctx["decoded inputs X_k (x_lut)"]
    # a border element: padding taps are products 0 and decoded inputs None
    acc[0, 0, 2, 2] += 1
    acc[0, 1, 0, 0] += 1
    write_dump(d, t, gold)
    ctx = diff(p, d).first.inputs
    assert ctx["products p_k (k ascending)"].count(0) == 27 - 12  # a corner sees 2x2 taps of 3 channels
    if datapath == "operand":
        assert ctx["decoded inputs X_k (x_lut)"].count(None) == 15
