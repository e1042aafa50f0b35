"""The per-layer plan cache of the CPU backend's fused path (nupes_sim/cpu/plancache.py): a
cached plan gives the oracle's result, is reused only while the layer is unchanged, and a
layer whose arrays can change is never served a stale plan."""

import numpy as np
import pytest
from test_cpu import assert_same

from nupes_sim import cpu, oracle
from nupes_sim.cpu import CpuOptions, fused, plancache
from nupes_sim.formats import PowerFormat
from nupes_sim.layers import Accumulator, Conv2d, Linear

OPTS = [CpuOptions(), CpuOptions(int8=False), CpuOptions(int8=True, int8_max_conv=64)]


def _layer(kind, dp, seed=0):
    rng = np.random.default_rng(seed)
    wf = PowerFormat(4, True, 2.0, rng.uniform(0.005, 0.02, 5), "channel")
    xf = PowerFormat(8, False, 2.0, np.array([0.02]))
    of = PowerFormat(8, False, 2.0, np.array([0.05]))
    kw = dict(datapath=dp, acc=Accumulator(32, "wrap"), out_fmt=of, relu=True)
    if kind == "linear":
        return Linear.build("l", rng.integers(-7, 8, (5, 40)), wf, xf, **kw), (9, 40)
    return Conv2d.build("c", rng.integers(-7, 8, (5, 3, 3, 3)), wf, xf, padding=1, **kw), (2, 3, 6, 5)


def _builds(monkeypatch):
    n = [0]
    real = fused._plans

    def counting(*a):
        n[0] += 1
        return real(*a)

    monkeypatch.setattr(fused, "_plans", counting)
    return n


@pytest.mark.parametrize("dp", ["operand", "product"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_cached_plans_match_the_oracle_and_are_reused(kind, dp, monkeypatch):
    """Three activation ranges (full, low codes only, one code) x three path options: each
    (range, options) builds once; every call equals the oracle, cache on and off."""
    n = _builds(monkeypatch)
    layer, shape = _layer(kind, dp)
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 256, shape), rng.integers(0, 3, shape), np.full(shape, 255)]
    xs[0].flat[:2] = (0, 255)  # the full range
    for rep in range(2):
        for x in xs:
            want = oracle.run_layer(layer, x)
            for opts in OPTS:
                assert_same(want, cpu.run_layer(layer, x, options=opts), f"{opts} rep {rep}")
                assert_same(want, cpu.run_layer(layer, x, options=opts.with_(cache_plans=False)))
    # one build per (range, options) with the cache, one per call without it (2 x 9)
    assert n[0] == len(xs) * len(OPTS) + 2 * len(xs) * len(OPTS), n[0]


def test_a_replaced_field_invalidates_the_plans():
    """w_codes swapped for its negation (same bound) through object.__setattr__: the next call
    follows the new weights."""
    layer, shape = _layer("linear", "operand")
    x = np.random.default_rng(2).integers(0, 256, shape)
    assert_same(oracle.run_layer(layer, x), cpu.run_layer(layer, x))
    neg = -layer.w_codes
    neg.setflags(write=False)
    object.__setattr__(layer, "w_codes", neg)
    want = oracle.run_layer(layer, x)
    assert not np.array_equal(
        want["acc_exact"], oracle.run_layer(_layer("linear", "operand")[0], x)["acc_exact"]
    )
    assert_same(want, cpu.run_layer(layer, x))


@pytest.mark.parametrize("field", ["w_codes", "w_table_index", "bias", "x_table"])
def test_a_writeable_array_is_never_cached(field, monkeypatch):
    """An array made writeable again (NumPy allows it to the owner) and changed in place: no
    plan is cached or served while it is writeable, so the result follows its contents."""
    layer, shape = _layer("linear", "operand", seed=3)
    x = np.random.default_rng(4).integers(0, 256, shape)
    assert_same(oracle.run_layer(layer, x), cpu.run_layer(layer, x))  # cached now
    arr = layer.x_table.lut if field == "x_table" else getattr(layer, field)
    if arr.base is not None:  # a view (w_table_index, bias): write through its owner
        owner = arr.base
        assert owner.base is None
        owner.setflags(write=True)
        arr = owner.reshape(arr.shape)  # a writeable view
    else:
        arr.setflags(write=True)
    n = _builds(monkeypatch)
    if field == "w_codes":
        arr *= -1
    elif field == "bias":
        arr += 1
    elif field == "w_table_index":
        assert arr.max() > 0
        arr[...] = 0
    else:
        arr[0, 1:] = arr[0, 1:] // 2
    want = oracle.run_layer(layer, x)
    assert_same(want, cpu.run_layer(layer, x))
    assert_same(want, cpu.run_layer(layer, x))
    assert n[0] == 2  # built at each call


def test_the_cache_is_bounded_and_dies_with_the_layer():
    plancache.clear()
    layer, shape = _layer("linear", "operand", seed=5)
    for hi in range(1, plancache.MAX_PLANS + 4):
        x = np.zeros(shape, np.int64)
        x[0, 0] = hi  # another activation range each call
        assert_same(oracle.run_layer(layer, x), cpu.run_layer(layer, x))
    assert len(plancache._CACHE[layer][1]) == plancache.MAX_PLANS
    del layer
    import gc

    gc.collect()
    assert len(plancache._CACHE) == 0


def test_cache_plans_is_validated():
    with pytest.raises(TypeError, match="cache_plans"):
        CpuOptions(cache_plans=1)
