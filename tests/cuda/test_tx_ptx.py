"""The transformer kernels compile to PTX for sm_90 without a GPU and use no floating point
(a normal, non-simulator process, as tests/cuda/test_ptx.py)."""

import re

import pytest
from cuda_gate import SIMULATOR, require_or_skip


@pytest.fixture(scope="module")
def ptx():
    if SIMULATOR:
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator cannot compile PTX (run this file without it)")
    try:
        from nupes_sim.cuda import transformer
    except RuntimeError as e:
        require_or_skip(str(e))
    try:
        return transformer.compile_all_ptx(cc=(9, 0))
    except Exception as e:  # noqa: BLE001
        if "NVVM" in str(e) or "libnvvm" in str(e).lower():
            require_or_skip(f"NVVM is not available: {e}")
        raise


def test_every_transformer_kernel_compiles_without_floats(ptx):
    from nupes_sim.cuda import transformer

    assert sorted(ptx) == sorted(n for n, _, _ in transformer.ptx_cases())
    pat = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.(?:f16|f32|f64|bf16)\b", re.M)
    for name, text in ptx.items():
        assert ".target sm_90" in text and ".entry" in text, name
        assert not pat.findall(text), f"{name}: float instructions {pat.findall(text)[:5]}"
