"""The on-disk cache of the CPU kernels (nupes_sim/cpu/jit.py): a second process loads the
compiled kernels instead of compiling them, and an edited primitive is never served stale."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import numpy as np
from nupes_sim import primitives as P
from nupes_sim.cpu import jit, kernels
ex, acc = kernels.accumulate_rows(np.array([[100, 100]], np.int64), np.zeros(1, np.int64), P.SATURATE, 8, 0,
                                  -128, 127)
st = kernels.accumulate_rows.stats
print(int(acc[0]), sum(st.cache_hits.values()), sum(st.cache_misses.values()),
      jit.CACHE_DIR.name if jit.CACHE_DIR else None, st.cache_path)
"""


def child(site, cache, **env):
    e = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1", "NUPES_CACHE_DIR": str(cache), **env}
    r = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=e, cwd=site, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    acc, hits, misses, name, _ = r.stdout.split(maxsplit=4)
    return int(acc), int(hits), int(misses), name


def test_source_hash_covers_primitives_and_every_kernel_module():
    from nupes_sim.cpu import jit

    names = {p.name for p in jit.SOURCES}
    assert "primitives.py" in names
    assert {p.name for p in (ROOT / "nupes_sim" / "cpu").glob("*.py")} <= names


def test_source_hash_covers_every_module_with_cached_kernels():
    """A module whose kernels jit.kernel caches (the transformer's too) is in the key, with the
    scalar sources they compile in, so editing any of them never serves a stale kernel."""
    from nupes_sim.cpu import jit

    sources = {p.resolve() for p in jit.SOURCES}
    assert all(p.is_file() for p in sources)
    users = {p.resolve() for p in (ROOT / "nupes_sim").rglob("*.py") if "jit import kernel" in p.read_text()}
    assert users and {p.parent.name for p in users} >= {"cpu", "transformer"}
    assert users <= sources, sorted(str(p) for p in users - sources)
    tx = ROOT / "nupes_sim" / "transformer"
    assert {(tx / "bodies.py").resolve(), (tx / "prims.py").resolve()} <= sources


@pytest.mark.slow
def test_cache_hits_and_an_edited_primitive_is_recompiled(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(ROOT / "nupes_sim", site / "nupes_sim", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    acc, hits, misses, first = child(site, cache)
    assert (acc, hits, misses) == (127, 0, 1)  # compiled and saved
    acc, hits, misses, name = child(site, cache)
    assert (acc, hits, misses, name) == (127, 1, 0, first)  # loaded from disk
    # edit a primitive the kernel inlines (its own file, kernels.py, is unchanged): a plain numba
    # cache would load the stale kernel and print 127 again
    prim = site / "nupes_sim" / "primitives.py"
    src = prim.read_text()
    old = "    if b > 0 and a > hi - b:\n        return hi\n"
    assert old in src
    prim.write_text(src.replace(old, "    if b > 0 and a > hi - b:\n        return hi - 1\n"))
    acc, hits, misses, name = child(site, cache)
    assert (acc, hits, misses) == (126, 0, 1) and name != first
    # off switch: nothing loaded, nothing written
    acc, hits, misses, _ = child(site, tmp_path / "unused", NUPES_NUMBA_CACHE="0")
    assert (acc, hits, misses, _) == (126, 0, 1, "None") and not (tmp_path / "unused").exists()
