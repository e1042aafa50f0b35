"""Threshold search known answers (tests/threshold_cases.py: literal values and codes) through
every threshold search of the oracle and the CPU backend: the primitive count_ge (Python and
compiled), oracle.requantize, the CPU requantizer, the CPU Linear paths that apply thresholds
in their own epilogue (integer kernels + requantizer, fused float GEMM, int8 GEMM) and the
transformer kernels' requant (bodies.requant_one). The CUDA twins: tests/cuda/test_cuda_thresholds.py.
"""

import numpy as np
import pytest
import threshold_cases as T

from nupes_sim import cpu, oracle
from nupes_sim import primitives as P
from nupes_sim.cpu import requant as cpu_requant
from nupes_sim.cpu.intmm import available as int8_available


@pytest.mark.parametrize("count_ge", [P.count_ge, cpu.prim.count_ge], ids=["python", "njit"])
def test_count_ge_known_answers(count_ge):
    thr = np.array([T.ROW7], np.int64)
    assert [count_ge(v, thr, 0, len(T.ROW7)) for v in T.V7] == T.COUNT7
    two = np.array(T.ROWS, np.int64)
    for c in range(2):
        assert [T.QMIN + count_ge(v, two, c, 4) for v in T.ACC] == [r[c] for r in T.CODES]


@pytest.mark.parametrize("requantize", [oracle.requantize, cpu_requant.requantize], ids=["oracle", "cpu"])
def test_requantize_known_answers(requantize):
    acc = np.array(T.ACC, np.int64)
    per_channel = np.stack([acc, acc], axis=1)  # (N, 2), channel axis 1
    assert (requantize(per_channel, T.thresholds(), 1, 0, 0) == T.expected()).all()
    assert (requantize(per_channel.T.copy(), T.thresholds(), 0, 0, 0) == T.expected().T).all()
    v7 = np.array(T.V7, np.int64).reshape(1, -1)
    assert requantize(v7, T.row7(), 1, 0, 0).tolist() == [T.COUNT7]
    assert (requantize(v7, T.single(), 1, 0, 0) == T.SINGLE_QMIN).all()


# (options, the path name cpu.STATS must show): every CPU Linear epilogue that compares.
PATHS = {
    "int_kernels": (cpu.CpuOptions(fast=False), "int_sum"),
    "fused_float": (cpu.CpuOptions(int8=False), "gemm_float"),
    "int8": (cpu.CpuOptions(int8=True), "gemm_int8"),
    "unfused_gemm": (cpu.CpuOptions(fused=False), "gemm_f32"),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_linear_known_answers(path):
    opts, stat = PATHS[path]
    if path == "int8" and not int8_available():
        pytest.skip("the int8 GEMM (torch) is not available here")
    layer, x = T.linear(), T.linear_input()
    assert (oracle.run_layer(layer, x)["out"] == T.expected()).all()
    cpu.STATS.clear()
    got = cpu.run_layer(layer, x, options=opts)
    assert any(k.startswith(stat) for k in cpu.STATS), (path, cpu.STATS)
    assert got["acc"].T.tolist() == [T.ACC, T.ACC]
    bad = np.argwhere(got["out"] != T.expected())
    assert bad.size == 0, f"{path}: wrong codes at (value index, channel) {bad[:4].tolist()}"


@pytest.mark.parametrize("channel", [0, 1])
@pytest.mark.parametrize("backend", ["oracle", "cpu"])
def test_transformer_requant_known_answers(backend, channel):
    layer, inputs = T.matmul(channel), T.matmul_inputs()
    got = (oracle if backend == "oracle" else cpu).run_layer(layer, *inputs)
    assert got["acc"][:, 0].tolist() == T.ACC
    assert (got["out"] == T.expected(channel)).all(), got["out"][:, 0].tolist()
