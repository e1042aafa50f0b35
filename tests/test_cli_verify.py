"""The `verify`/`diff` verbs as a user runs them: strict exit codes, model pinning, selections."""

import json
import os
import subprocess
import sys

import pytest
from tiny_models import conv_net

from nupes_sim.serialize import save_model

CLI = [sys.executable, "-m", "nupes_sim.cli"]


def run(*args):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("cliv")
    save_model(conv_net(acc_width=16), d / "conv.h5", input_shape=(3, 8, 8))
    save_model(conv_net(seed=3, acc_width=16), d / "other.h5", input_shape=(3, 8, 8))
    r = run("golden", d / "conv.h5", "--random", 4, "--out", d / "g.h5", "--hex", d / "hex", "-q")
    assert r.returncode == 0, r.stderr
    return d


def test_verify_prints_and_pins_the_model(made):
    r = run("verify", made / "g.h5")
    assert r.returncode == 0, r.stderr
    mh = json.loads(run("verify", made / "g.h5", "--json").stdout)["model_hash"]
    assert f"model: {mh}" in r.stdout and r.stdout.startswith("OK: ")
    assert run("verify", made / "g.h5", "--model", made / "conv.h5").returncode == 0
    r = run("verify", made / "g.h5", "--model", made / "other.h5")
    assert r.returncode == 1 and "expected model" in r.stdout
    assert run("verify", made / "g.h5", "--model-hash", mh[:16]).returncode == 0
    assert run("verify", made / "g.h5", "--model-hash", "f" * 64).returncode == 1
    r = run("verify", made / "g.h5", "--model-hash", "xyz")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_diff_strict_exit_codes(made, tmp_path):
    assert run("diff", made / "g.h5", made / "hex", "--model", made / "conv.h5").returncode == 0
    assert run("diff", made / "g.h5", made / "hex", "--model", made / "other.h5").returncode == 1
    (tmp_path / "empty").mkdir()
    r = run("diff", made / "g.h5", tmp_path / "empty")
    assert r.returncode == 1 and "nothing was compared" in r.stdout
    r = run("diff", made / "g.h5", tmp_path / "empty", "--partial")
    assert r.returncode == 1
    # only vector 0, only the final layer's outputs: an intentionally partial dump
    d = tmp_path / "part"
    d.mkdir()
    name = "vectors__000000__004_fc__out.hex"
    (d / name).write_bytes((made / "hex" / name).read_bytes())
    assert run("diff", made / "g.h5", d).returncode == 1
    r = run("diff", made / "g.h5", d, "--vectors", "0", "--layers", "fc", "--stages", "out")
    assert r.returncode == 0, r.stdout
    assert r.stdout.startswith("OK: 5 elements in 1 tensors (1 vectors, 1 layers: fc; stages out)")
    r = run("diff", made / "g.h5", d, "--vectors", "0-2", "--layers", "fc", "--stages", "out", "--json")
    assert r.returncode == 1 and not json.loads(r.stdout)["ok"]
    assert run("diff", made / "g.h5", d, "--vectors", "a-b").returncode == 2
    assert run("diff", made / "g.h5", d, "--layers", "nope").returncode == 2
    assert os.path.exists(made / "hex" / "manifest.json")
