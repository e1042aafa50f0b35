"""Known answers: today's code must reproduce the committed fixtures bit for bit.

tests/fixtures/ holds golden files and hex folders of frozen models (known_models.py: a conv
net, a residual add, a chain per rescale rounding mode, a chain per threshold rounding mode
on exact ties, a transformer block), their model hashes and a hash32 table. A change of any
table rule, rounding rule, hash constant, accumulator or requantization rule, or stage
changes some bit here and fails this test (on the oracle, and on every CPU MAC path). Fixtures change only with a version bump (nupes_sim/versions.py) and a CHANGELOG.md
entry (regenerate with tests/fixtures/make_fixtures.py).
"""

import json
import os
import sys

import numpy as np
import pytest

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
sys.path.insert(0, FIX)

from known_models import MODELS  # noqa: E402

from nupes_sim import primitives as P  # noqa: E402
from nupes_sim.golden import export_hex, read_golden, write_golden  # noqa: E402
from nupes_sim.rounding import hash_words  # noqa: E402
from nupes_sim.serialize import graph_to_dict, model_hash  # noqa: E402
from nupes_sim.verify import compare, verify  # noqa: E402
from nupes_sim.versions import CONTRACT_VERSION, GOLDEN_SCHEMA_VERSION, MODEL_FORMAT_VERSION  # noqa: E402


def _json(name):
    with open(os.path.join(FIX, name)) as fh:
        return json.load(fh)


def test_versions_match_the_fixtures_and_the_changelog():
    v = _json("versions.json")
    assert v == {
        "contract_version": CONTRACT_VERSION,
        "golden_schema_version": GOLDEN_SCHEMA_VERSION,
        "model_format_version": MODEL_FORMAT_VERSION,
    }, "versions bumped: regenerate the fixtures"
    with open(os.path.join(FIX, "..", "..", "CHANGELOG.md")) as fh:
        log = fh.read()
    assert (
        f"contract {CONTRACT_VERSION}, golden schema {GOLDEN_SCHEMA_VERSION}, "
        f"model format {MODEL_FORMAT_VERSION}" in log
    ), "CHANGELOG.md needs an entry for these versions"


def test_hash32_known_answers():
    table = _json("hash32.json")
    assert len(table) == 64
    s, t, i, want = (
        np.array([r[k] for r in table], dtype=object) for k in ("seed", "tensor_id", "index", "hash32")
    )
    assert [P.hash32(*a) for a in zip(s, t, i)] == list(want)  # the primitive (compiled for both backends)
    for seed in sorted(set(s)):  # the NumPy twin used by the oracle and host tables
        sel = s == seed
        for tid in sorted(set(t[sel])):
            k = sel & (t == tid)
            got = hash_words(int(seed), int(tid), np.array(list(i[k]), dtype=np.int64))
            assert [int(v) for v in got] == list(want[k])
    numba = pytest.importorskip("numba")
    h = P.compile_all(numba.njit).hash32
    assert [h(int(a), int(b), int(c)) for a, b, c in zip(s, t, i)] == list(want)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_hash_known_answer(name):
    assert model_hash(MODELS[name][0]()) == _json("model_hashes.json")[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_file_known_answer(name, tmp_path):
    make, inputs = MODELS[name]
    ref = read_golden(os.path.join(FIX, f"{name}.h5"))  # strict: checksums, ranges, shapes
    g = make()
    assert ref.attrs["model_hash"] == model_hash(g) == _json("model_hashes.json")[name]
    arrays, attrs = graph_to_dict(g)
    ref_arrays, ref_attrs = graph_to_dict(ref.graph)
    assert attrs == ref_attrs and sorted(arrays) == sorted(ref_arrays)
    for k in arrays:  # every integer table of the model, as the builders make it today
        assert arrays[k].dtype == ref_arrays[k].dtype and np.array_equal(arrays[k], ref_arrays[k]), k
    write_golden(g, inputs(), tmp_path / "new.h5", backend="numpy", seeds={"fixture": name})
    new = read_golden(tmp_path / "new.h5")
    skip = {"created", "package_version"}
    assert {k: v for k, v in new.attrs.items() if k not in skip} == {
        k: v for k, v in ref.attrs.items() if k not in skip
    }
    assert new.layers.keys() == ref.layers.keys()
    for layer in ref.layers:
        assert new.layers[layer]["info"] == ref.layers[layer]["info"], layer
        for k, a in ref.layers[layer]["datasets"].items():
            b = new.layers[layer]["datasets"][k]
            assert a.dtype == b.dtype and np.array_equal(a, b), (layer, k)
    assert len(new.vectors) == len(ref.vectors)
    for v, (a, b) in enumerate(zip(ref.vectors, new.vectors)):
        assert np.array_equal(a["input"], b["input"])
        for layer, st in a["stages"].items():
            assert st.keys() == b["stages"][layer].keys()
            for s in st:
                assert np.array_equal(st[s], b["stages"][layer][s]), (v, layer, s)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_backends_reproduce_the_fixture(name, backend):
    rep = verify(os.path.join(FIX, f"{name}.h5"), backend=backend)
    assert rep.ok and rep.compared > 0, rep.format_text()


# every CPU MAC path (the default picks one per layer): (options, the cpu.STATS key it shows)
CPU_PATHS = {
    "int_kernels": (dict(fast=False), "int_sum"),
    "fused_float": (dict(int8=False), "gemm_float"),
    "int8": (dict(int8=True), "gemm_int8"),
    "unfused_gemm": (dict(fused=False), "gemm_f32"),
}


@pytest.mark.parametrize("path", sorted(CPU_PATHS))
@pytest.mark.parametrize("name", ["rescale", "thresholds"])
def test_cpu_paths_reproduce_the_fixture(name, path):
    from nupes_sim import cpu
    from nupes_sim.cpu.intmm import available as int8_available

    if path == "int8" and not int8_available():
        pytest.skip("the int8 GEMM (torch) is not available here")
    opts, stat = CPU_PATHS[path]
    ref = read_golden(os.path.join(FIX, f"{name}.h5"))
    cpu.STATS.clear()
    observed = []
    for v in ref.vectors:
        r = ref.graph.run(v["input"], backend="cpu", intermediates=True, options=cpu.CpuOptions(**opts))
        observed.append({"input": v["input"], "stages": r.stages})
    assert any(k.startswith(stat) for k in cpu.STATS), (path, dict(cpu.STATS))
    rep = compare(ref, observed)
    assert rep.ok and rep.compared > 0, rep.format_text()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hex_export_known_answer(name, tmp_path):
    ref_dir = os.path.join(FIX, f"{name}_hex")
    export_hex(os.path.join(FIX, f"{name}.h5"), tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(ref_dir))
    for f in os.listdir(ref_dir):
        with open(os.path.join(ref_dir, f), "rb") as a, open(tmp_path / f, "rb") as b:
            assert a.read() == b.read(), f
