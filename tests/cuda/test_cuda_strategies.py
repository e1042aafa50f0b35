"""The CUDA backend driven by the shared hypothesis strategies of the CPU tests
(tests/strategies.py), with a smaller example budget (every simulated thread is slow), and
per-channel threshold rows on conv and grouped conv (a wrong row index must show)."""

import dataclasses

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import add_case, avgpool_case, conv_case, linear_case

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Conv2d
from nupes_sim.tables import rescale_table, threshold_table

_REASON = cuda_unavailable_reason()
BUDGET = settings(max_examples=6)


@pytest.fixture(scope="module")
def cb():
    if _REASON is not None:
        require_or_skip(_REASON)
    from nupes_sim.cuda import backend

    return backend


def same(cb, layer, inputs, **kw):
    want = oracle.run_layer(layer, *inputs)
    got = cb.run_layer(layer, *inputs, **kw)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and (got[k] == want[k]).all(), k


@BUDGET
@given(case=linear_case(max_batch=2, max_out=3, max_k=6))
def test_linear_strategy(cb, case):
    same(cb, *case)


@BUDGET
@given(case=conv_case())
def test_conv_strategy(cb, case):
    same(cb, *case)


@BUDGET
@given(case=st.one_of(add_case(), avgpool_case()))
def test_add_avgpool_strategy(cb, case):
    same(cb, *case)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kind", ["thresholds", "rescale"])
def test_per_channel_requant_rows_on_conv(cb, groups, kind):
    """One requant row per output channel with very different units: every channel's codes
    come from its own row (CUDA == oracle, and the rows really differ)."""
    rng = np.random.default_rng(groups)
    O, cg = 4, 2
    w = rng.integers(-7, 8, (O, cg, 2, 2))
    wf = PowerFormat(4, True, 0.7, 0.08)
    xf = PowerFormat(4, False, 0.7, 0.05)
    out = PowerFormat(4, False, 0.7, 0.3) if kind == "thresholds" else UniformFormat(8, True, 0.01, 3)
    layer = Conv2d.build(
        "c",
        w,
        wf,
        xf,
        groups=groups,
        padding=1,
        acc=Accumulator(24, "wrap"),
        out_fmt=out,
        w_frac_bits=8,
        x_frac_bits=6,
    )
    units = layer.unit * np.array([0.25, 1.0, 4.0, 16.0])
    if kind == "thresholds":
        rq = threshold_table(units, out, 24, "half_even", relu=True)
        assert len({tuple(r) for r in rq.thr}) == O
    else:
        rq = rescale_table(units, out, 24, 15, "half_up", relu=True)
        assert len(set(rq.shift.tolist())) == O
    layer = dataclasses.replace(layer, requant=rq)
    x = rng.integers(0, 16, (1, cg * groups, 3, 3))
    same(cb, layer, (x,), threads=32)
    o = oracle.run_layer(layer, x)["out"]
    assert len({tuple(o[0, c].reshape(-1)) for c in range(O)}) > 1
