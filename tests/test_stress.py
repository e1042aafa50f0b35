"""Stress stimulus reaches thresholds and saturation that random vectors miss; coverage counts it."""

import json
import subprocess
import sys

import numpy as np
from tiny_models import add_net

from nupes_sim.golden import read_golden, write_golden
from nupes_sim.serialize import save_model
from nupes_sim.stress import coverage, coverage_lines, stress_inputs

sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/hdl")
from configs import graph  # noqa: E402


def test_stress_beats_random_and_coverage_is_exact(tmp_path):
    g = graph("operand_sat")
    xs = stress_inputs(g, (16,), seed=0)
    lo, hi = 0, 15
    assert xs.min() >= lo and xs.max() <= hi and xs.dtype == np.int64
    xr = np.random.default_rng(0).integers(lo, hi + 1, xs.shape)
    covs = []
    for name, x in (("s", xs), ("r", xr)):
        p = tmp_path / f"{name}.h5"
        write_golden(g, x, p)
        covs.append(coverage(read_golden(p))[0])
    s, r = covs
    assert s["thresholds_hit"] == s["thresholds"] > r["thresholds_hit"]
    assert s["changed_by_overflow"] > r["changed_by_overflow"]
    # the counts are what the vectors hold
    gold = read_golden(tmp_path / "s.h5")
    acc = np.stack([v["stages"]["fc"]["acc"][0] for v in gold.vectors])
    ex = np.stack([v["stages"]["fc"]["acc_exact"][0] for v in gold.vectors])
    thr = g.nodes[0].layer.requant.thr[0]
    inside = [t for t in thr if -1024 <= t <= 1023]
    assert s["thresholds"] == len(inside) and s["thresholds_hit"] == sum(
        t in set(acc.ravel()) for t in inside
    )
    assert s["changed_by_overflow"] == int((acc != ex).sum())
    assert coverage_lines([s])[0].startswith(f"coverage fc: thresholds hit exactly {s['thresholds']}/")


def test_golden_stress_cli(tmp_path):
    save_model(add_net(), tmp_path / "m.h5")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nupes_sim.cli",
            "golden",
            tmp_path / "m.h5",
            "--stress",
            "--random",
            "3",
            "--out",
            tmp_path / "g.h5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["vectors"] > 3 and [c["layer"] for c in res["coverage"]] == ["a", "b", "add"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nupes_sim.cli",
            "golden",
            tmp_path / "m.h5",
            "--stress",
            "--out",
            tmp_path / "g2.h5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "coverage a: thresholds hit exactly" in r.stdout, r.stderr
