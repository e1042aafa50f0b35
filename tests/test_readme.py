"""The README's Python snippets run as written (each in a fresh interpreter, in a temp folder)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)


def test_readme_has_python_snippets():
    assert len(BLOCKS) >= 2, "README.md lost its ```python snippets (or this test's pattern broke)"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_snippet_runs(i, tmp_path):
    code = BLOCKS[i]
    if "torch" in code and importlib.util.find_spec("torch") is None:
        pytest.skip("snippet needs torch (the [reference] extra)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, f"README snippet {i} failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
