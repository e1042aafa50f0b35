"""Every kernel of the cuda backend compiles to PTX for sm_90 (H100) with the dtypes it is
launched with, without a GPU: NVVM only. Runs in a normal (non-simulator) process, because
the CUDA simulator has no compiler. Skips with the reason only if numba-cuda or NVVM is absent
(NUPES_REQUIRE_CUDA=1: fails instead)."""

import re

import pytest
from cuda_gate import SIMULATOR, require_or_skip


@pytest.fixture(scope="module")
def ptx():
    if SIMULATOR:
        pytest.skip("NUMBA_ENABLE_CUDASIM=1: the simulator cannot compile PTX (run this file without it)")
    try:
        from nupes_sim.cuda import kernels
    except RuntimeError as e:
        require_or_skip(str(e))
    try:
        return kernels.compile_all_ptx(cc=(9, 0))
    except Exception as e:  # noqa: BLE001
        if "NVVM" in str(e) or "libnvvm" in str(e).lower():
            require_or_skip(f"NVVM is not available: {e}")
        raise


def test_every_kernel_compiles(ptx):
    from nupes_sim.cuda import kernels

    names = [n for n, _, _ in kernels.ptx_cases()]
    assert sorted(ptx) == sorted(names)
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert ".entry" in text, name


def test_no_floating_point_in_kernels(ptx):
    """No float arithmetic or conversion anywhere (ARITHMETIC.md: floats stay on the host)."""
    pat = re.compile(r"^\s*(?:@%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.(?:f16|f32|f64|bf16)\b", re.M)
    for name, text in ptx.items():
        bad = pat.findall(text)
        assert not bad, f"{name}: float instructions {bad[:5]}"


def test_int32_gemm_inner_loop_is_32_bit(ptx):
    """The int32 operand GEMM multiplies-adds in 32 bits (TM*TN mad.lo.s32 per k step)."""
    text = ptx["gemm[int32,dp=0,lut_shared=0]"]
    assert len(re.findall(r"\bmad\.lo\.s32\b", text)) >= 64


def test_int32_gemm_fragments_are_vector_loads(ptx):
    """The operand GEMM reads its shared-memory fragments as aligned 128-bit vectors (4 per k
    step: two runs of 4 rows, two of 4 columns) and no index fixups break that up."""
    text = ptx["gemm[int32,dp=0,lut_shared=0]"]
    assert len(re.findall(r"\bld\.shared\.v4\.u32\b", text)) >= 4
    assert not re.findall(r"\bld\.shared\.u32\b", text)
    assert ".shared .align 16" in text
