"""The Numba CPU kernels of the transformer ops == the oracle, bit for bit (every stage)."""

import numpy as np
import pytest
from hypothesis import given
from test_tx_oracle import attention_graph
from tx_strategies import ALL_CASES

from nupes_sim import cpu, oracle


def same(layer, inputs):
    want = oracle.run_layer(layer, *inputs)
    got = cpu.run_layer(layer, *inputs)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        bad = np.flatnonzero(got[k] != want[k])
        assert bad.size == 0, (
            f"{layer.name} {k}: {bad.size} mismatches at {bad[:5]}: got "
            f"{got[k].reshape(-1)[bad[:5]]}, want {want[k].reshape(-1)[bad[:5]]}"
        )


@pytest.mark.parametrize("op", sorted(ALL_CASES))
def test_cpu_equals_oracle(op):
    @given(ALL_CASES[op]())
    def run(case):
        same(*case)

    run()


@pytest.mark.parametrize("masked", [False, True])
def test_attention_graph_cpu_equals_oracle(masked):
    g = attention_graph(masked=masked)
    ids = np.array([[3, 1, 4, 0], [2, 7, 0, 0], [0, 0, 0, 0]])
    a = g.run(ids, backend="numpy", intermediates=True)
    b = g.run(ids, backend="cpu", intermediates=True)
    for name, st in a.stages.items():
        for k, v in st.items():
            assert (b.stages[name][k] == v).all(), (name, k)
