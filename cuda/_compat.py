"""Import numba.cuda (numba-cuda) through one place, with a narrowly scoped NumPy shim.

numba-cuda 0.30.4 registers an overload for ``np.row_stack`` at import time
(numba/cuda/np/arrayobj.py). NumPy 2.5 removed ``row_stack`` (deprecated alias of
``vstack`` since 2.0), so the import fails with ``module 'numpy' has no attribute
'row_stack'``. When (and only when) the attribute is missing, we add a distinct function
of that name that calls ``np.vstack``: numba-cuda then registers its vstack implementation
for it, and nothing else in NumPy changes. The shim is applied before any import of
numba.cuda in this package (see cuda/README.md).
"""

import importlib.util
import os

import numpy as np

from nupes_sim.extras import MissingExtra, Unavailable

ROW_STACK_SHIM = False
if not hasattr(np, "row_stack"):

    def row_stack(tup, *, dtype=None, casting="same_kind"):
        """Alias of np.vstack, re-added for numba-cuda 0.30.4 on NumPy >= 2.5."""
        return np.vstack(tup, dtype=dtype, casting=casting)

    np.row_stack = row_stack
    ROW_STACK_SHIM = True

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def numba_cuda_installed():
    """numba-cuda (the maintained numba.cuda target) rather than numba's deprecated built-in one."""
    return importlib.util.find_spec("numba_cuda") is not None


def import_cuda():
    """numba.cuda, or Unavailable (a RuntimeError) naming the cause: MissingExtra when
    numba-cuda is not installed. Never falls back to anything else."""
    if not numba_cuda_installed():
        raise MissingExtra("numba_cuda", "the cuda backend", "cuda", package="numba-cuda")
    try:
        from numba import cuda
    except Exception as e:  # an import failure of numba-cuda itself (version mismatch, ...)
        raise Unavailable(
            f"the cuda backend could not import numba.cuda (numba-cuda): {type(e).__name__}: {e}"
        ) from e
    return cuda
