"""Gate of the cuda tests (a plain module: tests/cuda must not be a package named `cuda`,
which would shadow NVIDIA's cuda namespace package).

tests/cuda runs in its own pytest process (``make test``): under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, set by the Makefile for test_cuda_backend.py) or on a real GPU. Without
numba-cuda, or without a GPU outside the simulator, the backend tests skip with the reason;
NUPES_REQUIRE_CUDA=1 turns those skips into failures (the GPU machine check sets it).
"""

import importlib
import os
import re

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


# A PTX instruction on a floating-point type (ARITHMETIC.md: floats stay on the host).
FLOAT_PTX = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.(?:f16|f32|f64|bf16)\b", re.M)


def compile_ptx_or_skip(module, cc=(9, 0)):
    """{kernel name: PTX} of ``nupes_sim.cuda.<module>.compile_all_ptx(cc)``, compiled by NVVM
    without a GPU. Skips (fails under NUPES_REQUIRE_CUDA=1) under the simulator, which has no
    compiler, and where numba-cuda or NVVM is absent; any other compile error fails."""
    if SIMULATOR:
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator cannot compile PTX (run this file without it)")
    try:
        mod = importlib.import_module(f"nupes_sim.cuda.{module}")
    except RuntimeError as e:
        require_or_skip(str(e))
    try:
        return mod.compile_all_ptx(cc=cc)
    except Exception as e:  # noqa: BLE001
        if "NVVM" in str(e) or "libnvvm" in str(e).lower():
            require_or_skip(f"NVVM is not available: {e}")
        raise
