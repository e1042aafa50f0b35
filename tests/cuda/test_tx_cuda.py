"""numba.cuda kernels of the transformer ops == the oracle, bit for bit, under two launch
shapes (runs under NUMBA_ENABLE_CUDASIM=1 in `make test`, on hardware via cuda/gpu_check.sh)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip
from hypothesis import given, settings

from nupes_sim import oracle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transformer"))
from test_tx_oracle import attention_graph  # noqa: E402
from tx_strategies import ALL_CASES  # noqa: E402

_REASON = cuda_unavailable_reason()


@pytest.fixture(scope="module")
def cb():
    if _REASON is not None:
        require_or_skip(_REASON)
    from nupes_sim.cuda import backend

    return backend


def same(cb, layer, inputs):
    want = oracle.run_layer(layer, *inputs)
    for threads in (7, 32):
        got = cb.run_layer(layer, *inputs, threads=threads)
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (k, threads)
            bad = np.flatnonzero(got[k] != want[k])
            assert bad.size == 0, f"{layer.name} {k} threads={threads}: {bad.size} mismatches at {bad[:5]}"


@pytest.mark.cuda
@pytest.mark.parametrize("op", sorted(ALL_CASES))
def test_cuda_equals_oracle(cb, op):
    @settings(max_examples=15)
    @given(ALL_CASES[op]())
    def run(case):
        same(cb, *case)

    run()


@pytest.mark.cuda
def test_attention_graph_cuda_equals_oracle(cb):
    g = attention_graph(masked=True)
    ids = np.array([[3, 1, 4, 0], [0, 0, 0, 0]])
    a = g.run(ids, backend="numpy", intermediates=True)
    b = g.run(ids, backend="cuda", intermediates=True)
    for name, st in a.stages.items():
        for k, v in st.items():
            assert (b.stages[name][k] == v).all(), (name, k)
