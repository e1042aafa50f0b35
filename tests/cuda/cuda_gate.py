"""Gate of the cuda tests (a plain module: tests/cuda must not be a package named `cuda`,
which would shadow NVIDIA's cuda namespace package).

tests/cuda runs in its own pytest process (``make test``): under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, set by the Makefile for test_cuda_backend.py) or on a real GPU. Without
numba-cuda, or without a GPU outside the simulator, the backend tests skip with the reason;
NUPES_REQUIRE_CUDA=1 turns those skips into failures (the GPU machine check sets it).
"""

import os

import pytest

REQUIRE = os.environ.get("NUPES_REQUIRE_CUDA", "0") not in ("", "0")
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_unavailable_reason():
    """None when the cuda backend can run here, else why not."""
    try:
        from nupes_sim.cuda import backend

        backend.ensure_available()
    except RuntimeError as e:
        return str(e)
    return None


def require_or_skip(reason):
    if REQUIRE:
        pytest.fail(f"NUPES_REQUIRE_CUDA=1 but: {reason}")
    pytest.skip(reason)
