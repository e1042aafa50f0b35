"""Hypothesis profiles: deadline off (numba compiles on first call); CI is derandomized.

NUPES_HYPOTHESIS_PROFILE selects one: 'dev' (default), 'ci' (derandomized, what .ci/run
uses), 'thorough' (many more examples, for local runs).
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=1000, **_common)
settings.load_profile(os.environ.get("NUPES_HYPOTHESIS_PROFILE", "dev"))


_CUDA_DIR = Path(__file__).parent / "cuda"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/cuda/ carries the `cuda` marker (README: running a subset)."""
    for item in items:
        if _CUDA_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cuda)
