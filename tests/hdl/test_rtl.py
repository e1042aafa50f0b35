"""Reference RTL (hdl/) under cocotb on Icarus: bit-exact against golden stress vectors, and
each planted RTL bug caught by `diff` at the right layer, stage and element (issue #11.4).

Verilator is not used: cocotb 2.1 needs Verilator >= 5.036 and Debian 12 ships 5.006, whose
C++ the cocotb runner fails to compile (it does not check the version itself).
"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from nupes_sim.dumps import expected_layout
from nupes_sim.golden import export_hex, read_golden, write_golden
from nupes_sim.hdl_params import header_params
from nupes_sim.oracle import _mac_products, accumulate
from nupes_sim.stress import coverage, stress_inputs
from nupes_sim.verify import diff

HERE = Path(__file__).resolve().parent
HDL = HERE.parent.parent / "hdl"
sys.path.insert(0, str(HERE))
from configs import CONFIGS, graph  # noqa: E402

if shutil.which("iverilog") is None or shutil.which("vvp") is None:
    pytest.skip("Icarus Verilog (Debian package iverilog) is not installed; `make test` installs it",
                allow_module_level=True)
runner_mod = pytest.importorskip("cocotb_tools.runner", reason="cocotb is not installed; `make venv` installs it")

BUGS = ("BUG_CLAMP_AT_END", "BUG_LUT_ROW", "BUG_GT", "BUG_THR_TRUNC")


@pytest.fixture(scope="module")
def goldens(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtl")
    out = {}
    for name in CONFIGS:
        g = graph(name)
        x = np.concatenate([stress_inputs(g, (16,), seed=1),
                            np.random.default_rng(0).integers(0, 16, (8, 16))])
        d = root / name
        d.mkdir()
        gp = d / "golden.h5"
        write_golden(g, x, gp)
        export_hex(gp, d / "hex")
        gold = read_golden(gp)
        inc = d / "inc"
        inc.mkdir()
        # the export's generated header, as a bench would use it
        shutil.copy(d / "hex" / "layers__000_fc__params.vh", inc / "params.vh")
        out[name] = dict(dir=d, golden=gp, gold=gold, inc=inc)
    return out


def run_rtl(cfg, tag, defines=()):
    """Build and run the bench; returns the dump folder."""
    work = cfg["dir"] / tag
    dump = work / "dump"
    r = runner_mod.get_runner("icarus")
    defs = {"NUPES_HEX_DIR": f'"{cfg["dir"] / "hex"}/"'}
    defs.update({d: 1 for d in defines})
    r.build(sources=[HDL / "nupes_linear.v", HDL / "nupes_linear_top.v"], hdl_toplevel="nupes_linear_top",
            includes=[cfg["inc"]], defines=defs, build_dir=work / "build", timescale=("1ns", "1ps"), always=True)
    xml = r.test(test_module="linear_bench", hdl_toplevel="nupes_linear_top", test_dir=work,
                 extra_env={"NUPES_GOLDEN": str(cfg["golden"]), "NUPES_LAYER": "fc", "NUPES_DUMP": str(dump),
                            "PYTHONPATH": os.pathsep.join([str(HERE)] + sys.path)})
    from cocotb_tools.check_results import get_results

    _, failed = get_results(xml)
    assert failed == 0, f"the cocotb bench itself failed ({xml})"
    return dump


def test_headers_state_widths(goldens):
    p = dict((k, v) for k, v, _ in header_params(goldens["operand_sat"]["gold"], 0,
                                                 expected_layout(goldens["operand_sat"]["gold"])))
    assert p["THR_NEVER"] == 1 and p["THR_W"] == p["ACC_W"] + 1 and p["W_LUT_ROWS"] == 6
    assert p["SATURATE"] == 1 and p["TILE"] == 0 and p["K"] == 16 and p["O"] == 6


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rtl_matches_golden(goldens, name):
    cfg = goldens[name]
    rep = diff(cfg["golden"], run_rtl(cfg, "clean"), stages=("acc", "out"))
    assert rep.ok, rep.format_text()
    assert rep.compared == 2 * sum(v["stages"]["fc"]["out"].size for v in cfg["gold"].vectors)


def _first(gold, stage, buggy):
    """(vector, flat index) of the first element where buggy(v) differs from the golden stage."""
    for v, vec in enumerate(gold.vectors):
        bad = np.flatnonzero(buggy(v).reshape(-1) != vec["stages"]["fc"][stage].reshape(-1))
        if bad.size:
            return v, int(bad[0])
    return None


def _expected_first(gold, bug):
    L = gold.graph.nodes[0].layer
    st = [v["stages"]["fc"] for v in gold.vectors]
    thr = L.requant.thr[0]  # one row in these configurations' requantizers except product_tile
    rows = L.requant.thr

    def codes(acc, t, strict=False):
        r = rows if rows.shape[0] > 1 else np.broadcast_to(rows, (acc.shape[-1], rows.shape[1]))
        cmp = acc[..., None] > r if strict else acc[..., None] >= r
        return L.requant.qmin + cmp.sum(-1)

    del thr
    if bug == "BUG_CLAMP_AT_END":
        return "acc", _first(gold, "acc", lambda v: np.clip(st[v]["acc_exact"], L.acc.lo, L.acc.hi))
    if bug == "BUG_LUT_ROW":
        class Row0:
            pass

        r0 = Row0()
        for a in ("w_codes", "out_channels", "datapath", "w_table", "x_table", "p_table", "w_range", "x_range"):
            setattr(r0, a, getattr(L, a))
        r0.w_table_index = np.zeros_like(L.w_table_index)

        def buggy(v):
            x = gold.vectors[v]["input"]
            return accumulate(_mac_products(r0, x, np.ones(x.shape, bool)), L.bias[None, :], L.acc)[1]
        return "acc", _first(gold, "acc", buggy)
    if bug == "BUG_GT":
        return "out", _first(gold, "out", lambda v: codes(st[v]["acc"], rows, strict=True))
    n = L.acc.width
    trunc = ((rows + 2 ** (n - 1)) % 2**n) - 2 ** (n - 1)
    r = trunc if trunc.shape[0] > 1 else np.broadcast_to(trunc, (L.out_channels, trunc.shape[1]))
    return "out", _first(gold, "out", lambda v: L.requant.qmin + (st[v]["acc"][..., None] >= r).sum(-1))


@pytest.mark.parametrize("bug", BUGS)
def test_planted_bug_caught(goldens, bug):
    cfg = goldens["operand_sat"]
    stage, where = _expected_first(cfg["gold"], bug)
    assert where is not None, f"{bug}: the shipped vectors cannot show this bug"
    rep = diff(cfg["golden"], run_rtl(cfg, bug.lower(), [bug]), stages=("acc", "out"))
    assert not rep.ok
    f = rep.first
    assert (f.layer, f.stage, f.vector, f.index) == ("fc", stage, *where), rep.format_text()


def test_stress_vectors_cover_the_bench_layers(goldens):
    for name, cfg in goldens.items():
        (c,) = coverage(cfg["gold"])
        assert c["thresholds_hit"] >= 0.8 * c["thresholds"], (name, c)
        assert c["changed_by_overflow"] > 0, (name, c)
