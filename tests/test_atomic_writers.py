"""Writers killed with SIGKILL at random moments (issue #18): never a partial file under the
final name, the pre-existing output intact (complete and valid), and no stale temporary
after the next run. Plus the atomic module's own failure paths."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nupes_sim import atomic
from nupes_sim.golden import read_golden, read_hex_dir
from nupes_sim.serialize import load_model

HERE = os.path.dirname(__file__)
TRIALS = 4


def _temps(folder):
    return [n for n in os.listdir(folder) if atomic.TAG in n]


def _check_valid(kind, final, work):
    """The final output is complete and valid (raises otherwise)."""
    if kind == "model":
        load_model(final)
    elif kind == "golden":
        assert read_golden(final).attrs["n_vectors"] in (2, 3)
    elif kind == "hex":
        if not os.path.exists(final):  # killed between removing the old export and the rename
            return
        manifest, tensors = read_hex_dir(final)
        files = {e["file"] for e in manifest["tensors"]} | {"manifest.json"}
        files |= {d["header"] for d in manifest["layers"].values() if "header" in d}  # params.vh
        assert set(os.listdir(final)) == files  # nothing stale next to the manifest
        src = read_golden(os.path.join(work, f"src{manifest['n_vectors'] - 2}.h5"))
        assert len(src.vectors) == manifest["n_vectors"]
    elif kind == "simulate_npy":
        y = np.load(final)
        assert y.shape[0] in (40, 60)
    elif kind == "simulate_h5":
        import h5py

        with h5py.File(final, "r") as f:
            assert f["output"].shape[0] in (40, 60) and "stages" in f
    elif kind == "audit":
        rep = json.load(open(os.path.join(final, "report.json")))
        assert rep["n_vectors"] in (1, 2)
        assert open(os.path.join(final, "report.md")).read().endswith("\n")
        for p in rep["plots"]:
            assert os.path.isfile(os.path.join(final, p))


KINDS = {
    "model": "m.h5",
    "golden": "g.h5",
    "hex": "hexdir",
    "simulate_npy": "y.npy",
    "simulate_h5": "y.h5",
    "audit": "audit",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_writer_leaves_old_or_new_and_next_run_cleans(tmp_path, kind):
    work = tmp_path / "work"
    out = tmp_path / "out"
    work.mkdir()
    out.mkdir()
    final = str(out / KINDS[kind])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "kill_driver.py"),
            kind,
            final,
            str(work),
            str(TRIALS),
            str(sum(map(ord, kind))),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = p.stdout.readline()
        assert line.startswith("span"), line
        left = 0
        for t in range(TRIALS):
            assert p.stdout.readline().strip() == f"killed {t}"
            _check_valid(kind, final, str(work))  # pre-existing output intact (old or complete new)
            left += len(_temps(out))
            p.stdin.write("\n")
            p.stdin.flush()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
    # the next run removes what the killed writers left: only the final output remains
    atomic.clean_stale(final)
    left_now = os.listdir(out)
    # hex: the driver removes the previous export first (export_hex takes a fresh folder)
    assert left_now == [KINDS[kind]] or (kind == "hex" and left_now == [])
    print(f"{kind}: {left} temporaries left by {TRIALS} killed writers, all removed")


def test_next_write_removes_stale_temps_of_dead_writers_only(tmp_path):
    final = tmp_path / "a.bin"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".a.bin{atomic.TAG}{dead.pid}.abcd1234"
    stale.write_bytes(b"partial")
    live = tmp_path / f".a.bin{atomic.TAG}{os.getppid()}.abcd1234"  # a running process
    live.write_bytes(b"in progress")
    other = tmp_path / f".b.bin{atomic.TAG}{dead.pid}.abcd1234"  # another output's temp
    other.write_bytes(b"x")
    atomic.write_bytes(final, b"done")
    assert final.read_bytes() == b"done"
    assert not stale.exists() and live.exists() and other.exists()


def test_failure_removes_temp_and_keeps_old(tmp_path):
    final = tmp_path / "y.npy"
    atomic.save_npy(final, np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(final, "wb") as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert np.array_equal(np.load(final), np.arange(3)) and os.listdir(tmp_path) == ["y.npy"]


def test_atomic_dir_refuses_foreign_folder_and_replaces_own(tmp_path):
    d = tmp_path / "o"
    d.mkdir()
    (d / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(d) as t:
            open(os.path.join(t, "x"), "w").write("new")
    assert os.listdir(d) == ["mine.txt"] and os.listdir(tmp_path) == ["o"]
    with atomic.atomic_dir(d, may_replace=lambda p: os.path.exists(os.path.join(p, "mine.txt"))) as t:
        open(os.path.join(t, "x"), "w").write("new")
    assert os.listdir(d) == ["x"] and os.listdir(tmp_path) == ["o"]
    with pytest.raises(ValueError):
        with atomic.atomic_dir(d, may_replace=lambda p: True) as t:
            raise ValueError("fail while writing")
    assert os.listdir(d) == ["x"] and os.listdir(tmp_path) == ["o"]


def test_hex_export_refuses_a_non_empty_folder(tmp_path):
    from tiny_models import conv_inputs, conv_net

    from nupes_sim.golden import export_hex, write_golden

    write_golden(conv_net(), conv_inputs(1), tmp_path / "g1.h5", compression=None)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError):
        export_hex(tmp_path / "g1.h5", tmp_path / "user")
    assert os.listdir(tmp_path / "user") == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["g1.h5", "user"]
