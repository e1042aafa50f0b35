"""The transformer kernels compile to PTX for sm_90 without a GPU and use no floating point
(a normal, non-simulator process, as tests/cuda/test_ptx.py)."""

import pytest
from cuda_gate import FLOAT_PTX, compile_ptx_or_skip


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_or_skip("transformer")


def test_every_transformer_kernel_compiles_without_floats(ptx):
    from nupes_sim.cuda import transformer

    assert sorted(ptx) == sorted(n for n, _, _ in transformer.ptx_cases())
    for name, text in ptx.items():
        assert ".target sm_90" in text and ".entry" in text, name
        assert not FLOAT_PTX.findall(text), f"{name}: float instructions {FLOAT_PTX.findall(text)[:5]}"
