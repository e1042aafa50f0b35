"""The nupes-sim CLI run as a user would: a fresh interpreter per command (never fork)."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from tiny_models import add_inputs, add_net, conv_net

from nupes_sim.serialize import save_model

CLI = [sys.executable, "-m", "nupes_sim.cli"]


def run(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_model(conv_net(acc_width=16), d / "conv.h5", input_shape=(3, 8, 8), loss_history={"fc": [1.0, 0.5]})
    save_model(add_net(), d / "add.h5")  # no input shape: inferred from the first linear
    np.save(d / "x.npy", add_inputs(4))
    return d


def test_help_for_every_verb():
    r = run("--help")
    assert r.returncode == 0
    for verb in ("demo", "quantize", "simulate", "golden", "verify", "diff", "audit", "bench", "eval"):
        assert verb in r.stdout
        h = run(verb, "--help")
        assert h.returncode == 0 and "example" in h.stdout, verb


def test_golden_verify_diff_flow(models, tmp_path):
    g = tmp_path / "g.h5"
    r = run(
        "golden", models / "conv.h5", "--random", 2, "--seed", 5, "--out", g, "--hex", tmp_path / "hex", "-q"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hex" / "manifest.json").exists()
    r = run("verify", g, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"]
    # same model + seed -> identical checksums
    g2 = tmp_path / "g2.h5"
    assert run("golden", models / "conv.h5", "--random", 2, "--seed", 5, "--out", g2, "-q").returncode == 0
    with h5py.File(g) as a, h5py.File(g2) as b:
        assert (
            a["vectors/000001/004_fc/out"].attrs["sha256"] == b["vectors/000001/004_fc/out"].attrs["sha256"]
        )
    # planted flip in a dump
    dump = tmp_path / "dump.h5"
    shutil.copy(g, dump)
    with h5py.File(dump, "r+") as f:
        a = f["vectors/000001/000_conv/acc"][()]
        a[0, 1, 2, 3] ^= 4
        f["vectors/000001/000_conv/acc"][...] = a
    r = run("diff", g, dump, "--json")
    assert r.returncode == 1
    first = json.loads(r.stdout)["first_divergence"]
    assert (first["vector"], first["layer"], first["stage"], first["multi_index"]) == (
        1,
        "conv",
        "acc",
        [0, 1, 2, 3],
    )
    r = run("diff", g, dump)
    assert r.returncode == 1 and "first divergence: vector 1, layer 'conv', stage acc" in r.stdout
    # hex dump without changes
    assert run("diff", g, tmp_path / "hex", "-q").returncode == 0


def test_simulate_and_golden_from_input_file(models, tmp_path):
    r = run("simulate", models / "add.h5", "--input", models / "x.npy", "--out", tmp_path / "y.npy")
    assert r.returncode == 0, r.stderr
    y = np.load(tmp_path / "y.npy")
    assert np.array_equal(y, add_net().run(add_inputs(4), backend="numpy").output)
    r = run(
        "simulate",
        models / "add.h5",
        "--input",
        models / "x.npy",
        "--out",
        tmp_path / "y.h5",
        "--intermediates",
    )
    assert r.returncode == 0, r.stderr
    r = run("golden", models / "add.h5", "--input", models / "x.npy", "--out", tmp_path / "g.h5", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["vectors"] == 4
    r = run("golden", models / "add.h5", "--random", 3, "--out", tmp_path / "g3.h5", "-q")
    assert r.returncode == 0, r.stderr


def test_audit_cli(models, tmp_path):
    r = run("audit", models / "conv.h5", "--random", 2, "--out", tmp_path / "a", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "report.md").exists()
    r = run(
        "audit", models / "conv.h5", "--random", 2, "--out", tmp_path / "b", "--fail-on", "overflow", "-q"
    )
    assert r.returncode == 1


def test_bad_input_exit_2_one_line(models, tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    cases = [
        ("verify", bad),
        ("verify", tmp_path / "missing.h5"),
        ("diff", bad, bad),
        ("golden", bad, "--random", 1, "--out", tmp_path / "o.h5"),
        ("simulate", models / "add.h5", "--input", tmp_path / "none.npy", "--out", tmp_path / "y.npy"),
        ("golden", models / "conv.h5", "--out", tmp_path / "o.h5"),
    ]
    for c in cases:
        r = run(*c)
        assert r.returncode == 2, (c, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (c, r.stderr)
    np.save(tmp_path / "wrong.npy", np.full((2, 6), 100))
    r = run("simulate", models / "add.h5", "--input", tmp_path / "wrong.npy", "--out", tmp_path / "y.npy")
    assert r.returncode == 2 and "outside" in r.stderr
    assert run("golden").returncode == 2  # usage
    assert run("nonsense").returncode == 2


def test_quantize_simulate_golden_verify_on_the_shipped_model(tmp_path):
    """A user's path: quantize the shipped Fashion ResNet with their calibration file, then
    simulate, write golden vectors and verify them (tiny inputs; RTN keeps it fast)."""
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npy"
    np.save(calib, rng.normal(size=(8, 1, 28, 28)).astype(np.float32))
    model = tmp_path / "m.h5"
    r = run(
        "quantize", "fashion-resnet", "--calib", str(calib), "--method", "rtn", "--out", str(model), "--quiet"
    )
    assert r.returncode == 0, r.stderr
    golden = tmp_path / "g.h5"
    r = run(
        "golden",
        str(model),
        "--random",
        "1",
        "--seed",
        "1",
        "--out",
        str(golden),
        "--backend",
        "cpu",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    r = run("verify", str(golden), "--backend", "numpy", "--quiet")
    assert r.returncode == 0, r.stderr


def test_quantize_bad_inputs_are_clear_errors(tmp_path):
    r = run(
        "quantize",
        str(tmp_path / "missing.pt"),
        "--arch",
        "fashion-resnet",
        "--calib",
        str(tmp_path / "c.npy"),
        "--out",
        str(tmp_path / "m.h5"),
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    np.save(tmp_path / "c.npy", np.zeros((2, 1, 28, 28), np.float32))
    torch_state = tmp_path / "w.pt"
    import torch

    torch.save({"nope": torch.zeros(1)}, torch_state)
    r = run("quantize", str(torch_state), "--calib", str(tmp_path / "c.npy"), "--out", str(tmp_path / "m.h5"))
    assert r.returncode == 2 and "--arch" in r.stderr
    r = run(
        "quantize",
        str(torch_state),
        "--arch",
        "fashion-resnet",
        "--calib",
        str(tmp_path / "c.npy"),
        "--out",
        str(tmp_path / "m.h5"),
    )
    assert r.returncode == 2 and "does not fit" in r.stderr


def test_demo_and_eval_pass_their_options_through():
    r = run("demo", "--help")
    assert r.returncode == 0 and "--n-test" in r.stdout
    r = run("eval", "--help")
    assert r.returncode == 0 and "--quick" in r.stdout
