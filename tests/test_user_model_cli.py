"""A user's own model through `nupes-sim quantize` (issue #12 items 1-2): torch.export programs
with static and dynamic batch, and a state dict with --arch package.module:ClassName, on a
residual CNN that is not built in; unsupported ops listed together before any work."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from user_models import ViewNet, trained  # noqa: E402

HERE = os.path.dirname(__file__)


def run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "nupes_sim.cli"] + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    d = tmp_path_factory.mktemp("user")
    m = trained()
    x = torch.randn(2, 1, 8, 8)
    torch.export.save(torch.export.export(m, (x,)), d / "static.pt2")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(m, (x,), dynamic_shapes={"x": {0: batch}}), d / "dynamic.pt2")
    torch.save(m.state_dict(), d / "w.pt")
    np.save(d / "calib.npy", np.random.default_rng(0).normal(size=(6, 1, 8, 8)))  # float64, batch != 2
    v = trained(ViewNet)
    torch.save(v.state_dict(), d / "v.pt")
    return d


@pytest.mark.parametrize(
    "model,arch", [("static.pt2", None), ("dynamic.pt2", None), ("w.pt", "user_models:TinyResNet")]
)
def test_quantize_users_model_then_golden_verify(user, tmp_path, model, arch):
    out = tmp_path / "m.h5"
    r = run(
        "quantize",
        user / model,
        *(["--arch", arch] if arch else []),
        "--calib",
        user / "calib.npy",
        "--method",
        "rtn",
        "--out",
        out,
        "-q",
    )
    assert r.returncode == 0, r.stderr
    g = tmp_path / "g.h5"
    assert run("golden", out, "--random", 1, "--out", g, "-q").returncode == 0
    r = run("verify", g, "-q")
    assert r.returncode == 0, r.stderr


def test_quantize_full_range_flag(user, tmp_path):
    """--full-range: every MAC layer's weight codes are [-2^(b-1), 2^(b-1)-1] (ARITHMETIC.md §1),
    and GPTQ uses the extra code somewhere (the default range is symmetric: the test above)."""
    from nupes_sim.formats import CodeRange
    from nupes_sim.serialize import load_model

    out = tmp_path / "m.h5"
    argv = ["quantize", user / "w.pt", "--arch", "user_models:TinyResNet", "--calib", user / "calib.npy"]
    r = run(*argv, "--method", "gptq", "--wbits", 3, "--full-range", "--out", out, "-q")
    assert r.returncode == 0, r.stderr
    macs = [n.layer for n in load_model(out).nodes if getattr(n.layer, "w_codes", None) is not None]
    assert macs and {L.w_range for L in macs} == {CodeRange(3, True, True)}
    assert any(int(L.w_codes.min()) == -4 for L in macs)


def test_programs_and_state_dict_give_the_same_float_module(user):
    from nupes_sim.reference.pipeline import load_user_model

    x = torch.randn(5, 1, 8, 8)  # another batch size than the static export's
    want = trained()(x)
    for name, arch in (("static.pt2", None), ("dynamic.pt2", None), ("w.pt", "user_models:TinyResNet")):
        got = load_user_model(str(user / name), arch)(x)
        assert torch.equal(got, want), name


def test_every_unsupported_op_in_one_error_before_any_work(user):
    r = run(
        "quantize",
        user / "v.pt",
        "--arch",
        "user_models:ViewNet",
        "--calib",
        user / "calib.npy",
        "--out",
        user / "never.h5",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    err = r.stderr
    assert "cannot export 3 op(s)" in err and "GELU" in err and "LayerNorm" in err, err
    assert "torch.flatten(x, 1)" in err and "user_models.py:" in err
    assert not (user / "never.h5").exists()
