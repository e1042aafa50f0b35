"""Threshold search known answers (tests/threshold_cases.py: literal values and codes) through
the CUDA backend's threshold searches: the requant kernel (host_requant, count_ge compiled
with cuda.jit) after both MAC paths (GEMM, sequential) and directly, and the transformer
kernels' requant (bodies.requant_one). The oracle and CPU twins:
tests/test_threshold_known_answers.py. Runs under NUMBA_ENABLE_CUDASIM=1 in `make test`.
"""

import numpy as np
import pytest
import threshold_cases as T
from cuda_gate import cuda_unavailable_reason, require_or_skip

_REASON = cuda_unavailable_reason()


@pytest.fixture(scope="module")
def cb():
    if _REASON is not None:
        require_or_skip(_REASON)
    from nupes_sim.cuda import backend

    return backend


@pytest.mark.cuda
def test_cuda_requantize_known_answers(cb):
    from nupes_sim.cuda.host_requant import _requantize
    from nupes_sim.cuda.kernels import cuda

    def rq(values, requant, axis):
        v = np.ascontiguousarray(values, np.int64)
        opt = dict(threads=4)
        return _requantize(cuda.to_device(v.reshape(-1)), v.shape, requant, axis, 0, 0, opt)

    acc = np.array(T.ACC, np.int64)
    assert (rq(np.stack([acc, acc], axis=1), T.thresholds(), 1) == T.expected()).all()
    assert (rq(np.stack([acc, acc]), T.thresholds(), 0) == T.expected().T).all()
    v7 = np.array(T.V7, np.int64).reshape(1, -1)
    assert rq(v7, T.row7(), 1).tolist() == [T.COUNT7]
    assert (rq(v7, T.single(), 1) == T.SINGLE_QMIN).all()


@pytest.mark.cuda
@pytest.mark.parametrize("fast,path", [(True, "gemm_"), (False, "seq")])
def test_cuda_linear_known_answers(cb, fast, path):
    cb.STATS.clear()
    got = cb.run_layer(T.linear(), T.linear_input(), threads=4, fast=fast)
    assert any(k.startswith(path) for k in cb.STATS), cb.STATS
    assert got["acc"].T.tolist() == [T.ACC, T.ACC]
    bad = np.argwhere(got["out"] != T.expected())
    assert bad.size == 0, f"wrong codes at (value index, channel) {bad[:4].tolist()}"


@pytest.mark.cuda
@pytest.mark.parametrize("channel", [0, 1])
def test_cuda_transformer_requant_known_answers(cb, channel):
    got = cb.run_layer(T.matmul(channel), *T.matmul_inputs(), threads=4)
    assert got["acc"][:, 0].tolist() == T.ACC
    assert (got["out"] == T.expected(channel)).all(), got["out"][:, 0].tolist()
