"""Every kernel of the cuda backend compiles to PTX for sm_90 (H100) with the dtypes it is
launched with, without a GPU: NVVM only. Runs in a normal (non-simulator) process, because
the CUDA simulator has no compiler. Skips with the reason only if numba-cuda or NVVM is absent
(NUPES_REQUIRE_CUDA=1: fails instead)."""

import re

import pytest
from cuda_gate import FLOAT_PTX, compile_ptx_or_skip


@pytest.fixture(scope="module")
def ptx():
    return compile_ptx_or_skip("kernels")


def test_every_kernel_compiles(ptx):
    from nupes_sim.cuda import kernels

    names = [n for n, _, _ in kernels.ptx_cases()]
    assert sorted(ptx) == sorted(names)
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert ".entry" in text, name


def test_no_floating_point_in_kernels(ptx):
    """No float arithmetic or conversion anywhere (ARITHMETIC.md: floats stay on the host)."""
    for name, text in ptx.items():
        bad = FLOAT_PTX.findall(text)
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
