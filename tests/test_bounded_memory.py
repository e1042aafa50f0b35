"""Bounded memory (issue #19): the oracle and the audit's float reference compute MAC layers in
blocks of (positions x channels); any block size gives identical results, and the blocks
follow the budget."""

import dataclasses

import numpy as np
import pytest
from tiny_models import conv_inputs, conv_net

from nupes_sim import audit, memory, oracle
from nupes_sim.formats import PowerFormat
from nupes_sim.layers import Accumulator, Conv2d, Linear


def _layers():
    rng = np.random.default_rng(3)
    xf = PowerFormat(4, False, 0.7, 0.05)
    wf = PowerFormat(4, True, 0.7, np.full(6, 0.08), "channel")
    out = []
    for datapath in ("operand", "product"):
        for acc in (Accumulator(18, "saturate", 5), Accumulator(15, "wrap"), Accumulator(14, "exact")):
            out.append(
                (
                    Conv2d.build(
                        "c",
                        rng.integers(-7, 8, (6, 2, 3, 3)),
                        wf,
                        xf,
                        datapath=datapath,
                        padding=1,
                        groups=2,
                        stride=(2, 1),
                        acc=acc,
                        bias=0.1 * rng.normal(size=6),
                        w_frac_bits=6,
                        x_frac_bits=4,
                        product_frac_bits=8,
                        tensor_id=2,
                    ),
                    rng.integers(0, 16, (2, 4, 7, 5)),
                )
            )
            out.append(
                (
                    Linear.build(
                        "l",
                        rng.integers(-7, 8, (6, 11)),
                        wf,
                        xf,
                        datapath=datapath,
                        acc=acc,
                        bias=0.1 * rng.normal(size=6),
                        w_frac_bits=6,
                        x_frac_bits=4,
                        product_frac_bits=8,
                    ),
                    rng.integers(0, 16, (5, 11)),
                )
            )
    # without host meta the audit's reference uses LUT values x unit (the blocked product path)
    return out + [(dataclasses.replace(L, meta=None), x) for L, x in out]


@pytest.mark.parametrize("budget", [1, 300, 5000])
def test_blocked_oracle_and_reference_equal_unblocked(monkeypatch, budget):
    whole = [(oracle.run_layer(L, x), audit.reference_sum(L, [x])[0]) for L, x in _layers()]
    monkeypatch.setattr(oracle, "chunk_budget", lambda: budget)  # tiny blocks: 1 row x 1 channel at budget 1
    calls = []
    real_acc = oracle.accumulate
    monkeypatch.setattr(oracle, "accumulate", lambda *a: calls.append(a[0].shape) or real_acc(*a))
    for (L, x), (st, ref) in zip(_layers(), whole):
        got = oracle.run_layer(L, x)
        for k in ("acc_exact", "acc", "out"):
            assert np.array_equal(got[k], st[k]), (L.name, k)
        # float64 reference: the same sums, BLAS may order them differently per block size
        np.testing.assert_allclose(audit.reference_sum(L, [x])[0], ref, rtol=1e-12, atol=1e-9)
    if budget == 1:
        assert all(s[0] == 1 and s[1] == 1 for s in calls)  # one output element per block


def test_blocks_follow_the_budget():
    rb, cb = oracle.blocks(10**6, 4096, 4096, budget=256 << 20)
    assert rb * cb * 4096 * oracle.BYTES_PER_PRODUCT <= 256 << 20 and rb >= 1 and cb >= 1
    memory.set_budget(1 << 30)
    try:
        assert memory.chunk_budget() == (1 << 30) // 8
        with pytest.raises(memory.MemoryBudgetError, match="memory budget"):
            memory.check_fits("x", 2 << 30)
    finally:
        memory.set_budget(None)


def test_run_bytes_estimates_before_running():
    g = conv_net()
    assert memory.run_bytes(g, (3, 8, 8), 10) > memory.run_bytes(g, (3, 8, 8), 1)
    with pytest.raises(ValueError, match="expected"):
        memory.stage_shapes(g, (3, 12, 12))
    assert memory.stage_shapes(g, (3, 8, 8))["fc"] == (5,)
    x = conv_inputs(1)
    assert g.run(x, backend="numpy").output.shape[1:] == memory.stage_shapes(g, (3, 8, 8))["fc"]
