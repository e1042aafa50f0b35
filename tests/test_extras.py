"""Optional extras and backends that cannot run: one line on stderr, exit 2, naming what to
install (issue #9, #12 item 8); the benchmark runs from an installed package."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_models import conv_net

from nupes_sim.serialize import save_model

ROOT = Path(__file__).resolve().parents[1]


def cli(args, block=(), env=None, cwd=None, path=None, timeout=300):
    """`nupes-sim ARGS` in a fresh interpreter with the modules in `block` made unimportable
    (sys.modules[name] = None: `import name` raises ModuleNotFoundError, as when not installed)."""
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
        + (f"sys.path.insert(0, {str(path)!r})\n" if path else "")
        + "from nupes_sim.cli import main\n"
        + f"sys.exit(main({[str(a) for a in args]!r}))\n"
    )
    e = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout
    )


def one_line_exit_2(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("extras")
    save_model(conv_net(acc_width=16), d / "conv.h5", input_shape=(3, 8, 8))
    np.save(d / "x.npy", np.zeros((1, 3, 8, 8), np.int64))
    return d


def test_cuda_backend_without_gpu_is_one_line(model):
    """No GPU here (the simulator is off): simulate --backend cuda says why, exit 2."""
    r = cli(
        [
            "simulate",
            model / "conv.h5",
            "--input",
            model / "x.npy",
            "--out",
            model / "y.npy",
            "--backend",
            "cuda",
        ]
    )
    one_line_exit_2(r, "cuda backend")


def test_cuda_backend_without_numba_cuda_names_the_extra(model):
    r = cli(
        [
            "simulate",
            model / "conv.h5",
            "--input",
            model / "x.npy",
            "--out",
            model / "y.npy",
            "--backend",
            "cuda",
        ],
        block=["numba_cuda"],
    )
    one_line_exit_2(r, "numba-cuda", "nupes-sim[cuda]")
    r = cli(["bench", "--backend", "cuda"], block=["numba_cuda"])
    one_line_exit_2(r, "nupes-sim[cuda]")


def test_missing_torch_names_the_reference_extra(model):
    r = cli(
        ["quantize", "fashion-resnet", "--calib", model / "x.npy", "--out", model / "m.h5"], block=["torch"]
    )
    one_line_exit_2(r, "torch", "nupes-sim[reference]")
    r = cli(["bench", "--backend", "cpu"], block=["torch"])
    one_line_exit_2(r, "torch", "nupes-sim[reference]")


def test_missing_matplotlib_names_the_audit_extra(model):
    r = cli(["audit", model / "conv.h5", "--random", "1", "--out", model / "audit"], block=["matplotlib"])
    one_line_exit_2(r, "matplotlib", "nupes-sim[audit]")


def test_every_subpackage_is_installed():
    """pyproject lists its packages explicitly: every package folder must be in the list."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {
        "nupes_sim." + ".".join(p.parent.relative_to(ROOT / "nupes_sim").parts)
        for p in (ROOT / "nupes_sim").rglob("__init__.py")
        if p.parent != ROOT / "nupes_sim"
    }
    assert found <= listed, found - listed
    assert {"nupes_sim", "nupes_sim.cpu", "nupes_sim.bench"} <= listed


@pytest.mark.slow
def test_bench_runs_from_an_installed_layout(tmp_path):
    """The package as installed (package-dir mapping of pyproject, no repository around it):
    `nupes-sim bench --backend cpu` imports its benchmark and runs it (tiny layers)."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "nupes_sim", site / "nupes_sim", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "reference", site / "nupes_sim" / "reference", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "cuda", site / "nupes_sim" / "cuda", ignore=shutil.ignore_patterns("__pycache__"))
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    env = {"PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    r = cli(
        ["bench", "--backend", "cpu", "--", "--tiny", "--quick", "--repeats", "1"],
        env=env,
        cwd=run_dir,
        path=site,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cpu/torch" in r.stdout and "OMP_WAIT_POLICY=PASSIVE" in r.stdout
    code = "import nupes_sim.bench.cpu as b, sys; print(b.__file__)"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=run_dir, env={**os.environ, **env}
    )
    assert p.stdout.strip().startswith(str(site)), p.stdout + p.stderr
