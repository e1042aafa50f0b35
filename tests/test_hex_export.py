"""Self-contained hex export: fresh folder only, selections, full layer description, headers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import conv_inputs, conv_net

from nupes_sim.golden import GoldenFormatError, export_hex, read_golden, read_hex_dir, write_golden

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "hdl"))
from configs import graph  # noqa: E402


@pytest.fixture(scope="module")
def gfile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hexexp")
    p = d / "g.h5"
    write_golden(conv_net(acc_width=16), conv_inputs(3), p)
    q = d / "sat.h5"
    write_golden(graph("operand_sat"), np.random.default_rng(0).integers(0, 16, (2, 16)), q)
    return p, q


def test_refuses_non_empty_folder_and_leaves_no_temp(gfile, tmp_path):
    p, _ = gfile
    d = tmp_path / "hex"
    d.mkdir()
    export_hex(p, d)  # an empty folder is fine
    before = sorted(os.listdir(d))
    (d / "stale.hex").write_text("00\n")
    with pytest.raises(ValueError, match="not empty"):
        export_hex(p, d)
    assert sorted(os.listdir(d)) == sorted(before + ["stale.hex"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".hex.")]


def test_manifest_is_self_contained(gfile, tmp_path):
    p, q = gfile
    gold = read_golden(p)
    man = export_hex(p, tmp_path / "hex")
    assert list(man["layers"]) == ["000_conv", "001_pool", "002_avg", "003_flat", "004_fc"]
    for key, d in man["layers"].items():
        assert d["info"] == gold.layers[key.split("_", 1)[1]]["info"]
        assert os.path.exists(tmp_path / "hex" / d["header"])
    assert all({"width", "signed", "shape", "file"} <= set(e) for e in man["tensors"])
    # thresholds holding 'never reached' state their N+1-bit width
    man2 = export_hex(q, tmp_path / "sat")
    e = next(e for e in man2["tensors"] if e["tensor"] == "layers/000_fc/thresholds")
    assert e["width"] == 12 and "never reached" in e["note"]
    hdr = (tmp_path / "sat" / "layers__000_fc__params.vh").read_text()
    assert "localparam integer THR_W = 12;" in hdr and "localparam integer THR_NEVER = 1;" in hdr
    assert "localparam integer ACC_W = 11;" in hdr and "localparam integer SATURATE = 1;" in hdr
    # requantizer table: code at t and t-1 for every in-range threshold
    thr = read_golden(q).layers["fc"]["datasets"]["thresholds"][0]
    rt = man2["layers"]["000_fc"]["requant_table"][0]
    assert [r["threshold"] for r in rt] == [int(t) for t in thr if -1024 <= t <= 1023]
    for r in rt:
        t = r["threshold"]
        assert r["code_at_t"] == -7 + int((thr <= t).sum()) and r["code_at_t_minus_1"] == -7 + int(
            (thr < t).sum()
        )
        assert r["code_at_t"] > r["code_at_t_minus_1"]
    # the header names the table's hex file (M rows of 4 words) so a bench needs nothing else
    tab = read_golden(q).layers["fc"]["datasets"]["requant_table"]
    assert f"localparam integer RQ_TABLE_ROWS = {tab.shape[0]};" in hdr
    assert 'RQ_TABLE_FILE = {`NUPES_HEX_DIR, "layers__000_fc__requant_table.hex"};' in hdr
    words = (tmp_path / "sat" / "layers__000_fc__requant_table.hex").read_text().split()
    assert len(words) == 4 * tab.shape[0]
    pool = (tmp_path / "hex" / "layers__001_pool__params.vh").read_text()
    assert 'localparam RQ_TABLE_FILE = "none";' in pool and "RQ_TABLE_ROWS" not in pool


def test_selection_and_reader_never_masks(gfile, tmp_path):
    p, _ = gfile
    man = export_hex(p, tmp_path / "fc", layers=["fc"], vectors=[1])
    names = [e["tensor"] for e in man["tensors"]]
    assert names and all("004_fc" in n or n == "vectors/000001/input" for n in names)
    assert not any(n.startswith("vectors/000000") for n in names)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        export_hex(p, tmp_path / "x", layers=["nope"])
    d = tmp_path / "full"
    export_hex(p, d)
    f = d / "vectors__000000__004_fc__out.hex"
    words = f.read_text().split()
    words[0] = "1" + words[0]
    f.write_text("\n".join(words) + "\n")
    with pytest.raises(GoldenFormatError, match="does not fit 8 bits"):
        read_hex_dir(d)


def test_hex_verb_and_golden_hex_layers(gfile, tmp_path):
    p, _ = gfile
    cli = [sys.executable, "-m", "nupes_sim.cli"]
    r = subprocess.run(
        cli + ["hex", str(p), "--out", str(tmp_path / "h"), "--layers", "conv", "--vectors", "0-1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == ["000_conv"] and json.loads(r.stdout)["vectors"] == [0, 1]
    r = subprocess.run(
        cli + ["hex", str(p), "--out", str(tmp_path / "h")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "not empty" in r.stderr
