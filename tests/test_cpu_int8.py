"""The exact int8-limb GEMM path of the CPU backend (nupes_sim/cpu/intmm.py) forced on, off and
chunked, against the oracle bit for bit; its limb split and its probe at their limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import conv_case, linear_case
from test_cpu import assert_same, check

from nupes_sim import cpu, oracle
from nupes_sim.cpu import CpuOptions, intmm
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Conv2d, Linear

pytestmark = pytest.mark.skipif(intmm.available() is None, reason="torch._int_mm missing or inexact here")


def lo_hi(n):
    """The range of n balanced base-256 limbs: [-128·(256^n-1)/255, 127·(256^n-1)/255]."""
    r = (256**n - 1) // 255
    return -128 * r, 127 * r


def _variants(layer, inputs):
    """The oracle's result with the int8 path forced (one-hot sides, k-chunks of 1, 5 and
    2^16, one-row feature blocks) and off."""
    want = oracle.run_layer(layer, *inputs)
    for side in (None, "weights", "activations"):
        for kc, fb in ((1 << 16, 4 << 20), (5, 1), (1, 16 << 20)):
            opts = CpuOptions(int8=True, one_hot=side, int8_chunk_k=kc, feature_bytes=fb)
            assert_same(want, cpu.run_layer(layer, *inputs, options=opts), f"int8 {side} chunk {kc}")
    assert_same(want, cpu.run_layer(layer, *inputs, options=CpuOptions(int8=False)), "int8 off")
    return want


@settings(max_examples=25, deadline=None)
@given(linear_case(max_batch=4, max_out=5, max_k=24))
def test_int8_linear_matches_oracle(case):
    _variants(*case)


@settings(max_examples=25, deadline=None)
@given(conv_case())
def test_int8_conv_matches_oracle(case):
    _variants(*case)


@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=20))
def test_limb_split_is_exact_and_minimal(vals):
    v = np.array(vals, np.int64)
    limbs = intmm.limb_split(v)
    assert limbs.dtype == np.int8
    n = limbs.shape[0]
    back = sum(limbs[i].astype(object) * 256**i for i in range(n))
    assert list(back) == vals
    lo, hi = lo_hi(n - 1) if n > 1 else (0, 0)
    assert n == 1 or not all(lo <= x <= hi for x in vals)  # one limb fewer would not do


def test_limb_split_boundaries():
    for n in range(1, 8):  # 8 limbs cover every |v| <= 2^62 (the layer's tables, products)
        lo, hi = lo_hi(n)
        for x in (lo, hi, 0, -1, 1):
            assert intmm.limb_split(np.array([x], np.int64)).shape[0] <= n
        assert intmm.limb_split(np.array([lo - 1], np.int64)).shape[0] == n + 1
        assert intmm.limb_split(np.array([hi + 1], np.int64)).shape[0] == n + 1
    v = np.array([-(2**62), 2**62 - 1, 2**62], np.int64)
    assert intmm.limb_split(v).shape[0] == 8


def _uniform_linear(w, F_x, F_w, acc, wexp=1.0, wbits=8):
    wf = PowerFormat(wbits, True, wexp, np.array([1.0 / (2 ** (wbits - 1) - 1)]))
    xf = UniformFormat(8, True, 1.0, 0)
    return Linear.build("l", w, wf, xf, w_frac_bits=F_w, x_frac_bits=F_x, acc=acc)


@pytest.mark.parametrize("F_x", [0, 1, 7, 8, 9])
@pytest.mark.parametrize("overflow", ["wrap", "exact", "saturate"])
def test_limb_counts_follow_the_table_widths(F_x, overflow):
    """x_lut = q·2^F_x for q in [-128, 127]: 1 limb up to F_x = 0, 2 limbs up to 8, then 3;
    extreme codes (-128, 127) in every position; the path is taken and exact."""
    rng = np.random.default_rng(F_x)
    w = rng.integers(-127, 128, (4, 40))
    w[0] = 127
    w[1] = -127
    layer = _uniform_linear(w, F_x, 7, Accumulator(64, overflow))
    x = rng.integers(-128, 128, (6, 40))
    x[0], x[1] = -128, 127
    _, _, wlm, _ = intmm.plan(*_sides(layer), layer.k, 0, CpuOptions(int8=True))
    assert wlm.shape[0] == (1 if F_x == 0 else 2 if F_x <= 8 else 3), wlm.shape
    cpu.STATS.clear()
    _variants(layer, (x,))
    assert "gemm_int8" in cpu.STATS, cpu.STATS


def _sides(layer):
    from nupes_sim.cpu.fused import int8_sides

    return int8_sides(layer, layer.x_range.qmin, layer.x_range.qmax, CpuOptions())


def test_chunk_at_the_claim_limit():
    """K = 2^16 + 3 with every activation limb at -128 (x = -128·257 = -32896) and weights at
    +-2^7 limbs: each chunk sum reaches 2^16·128·128 = 2^30; the 2^16 chunk boundary is crossed."""
    K = (1 << 16) + 3
    w = np.full((3, K), 127)
    w[1] = -127
    w[2, ::2] = -127
    wf = PowerFormat(8, True, 1.0, np.array([1.0 / 127]))
    xf = UniformFormat(8, True, 1.0, 0)
    layer = Linear.build("big", w, wf, xf, w_frac_bits=7, x_frac_bits=8, acc=Accumulator(64, "exact"))
    x = np.full((2, K), -128)
    x[1, ::3] = 127
    # x_lut = -128·256 = -32768 = limbs (0, -128); w_lut = +-128 = limbs (-128, 0) / (-128, 1)
    cpu.STATS.clear()
    want = oracle.run_layer(layer, x)
    assert_same(want, cpu.run_layer(layer, x, options=CpuOptions(int8=True)))
    assert "chunked" in cpu.STATS and "gemm_int8" in cpu.STATS, cpu.STATS
    assert_same(want, cpu.run_layer(layer, x, options=CpuOptions(int8=True, int8_chunk_k=1 << 15)))


def _bench_like(dp, kind="linear", overflow="wrap", per_tensor=False):
    rng = np.random.default_rng(3)
    wf = PowerFormat(
        4,
        True,
        2.0,
        rng.uniform(0.005, 0.02, 6) if not per_tensor else np.array([0.01]),
        "channel" if not per_tensor else "tensor",
    )
    xf = PowerFormat(8, False, 2.0, np.array([0.02]))
    of = PowerFormat(8, False, 2.0, np.array([0.05]))
    kw = dict(datapath=dp, acc=Accumulator(32, overflow), out_fmt=of, relu=True)
    if kind == "linear":
        return Linear.build("l", rng.integers(-7, 8, (6, 50)), wf, xf, **kw), (rng.integers(0, 256, (9, 50)),)
    layer = Conv2d.build("c", rng.integers(-7, 8, (6, 3, 3, 3)), wf, xf, padding=1, **kw)
    return layer, (rng.integers(0, 256, (2, 3, 7, 6)),)


@pytest.mark.parametrize("dp", ["operand", "product"])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_the_rule_picks_the_path(dp, kind):
    """Default: the int8 path (few limb pairs); int8=False or int8_max_pairs below the pairs:
    the float path; a saturating accumulator that can clamp: the sequential kernel."""
    layer, inputs = _bench_like(dp, kind)
    auto = "gemm_float32" if (kind, dp) == ("conv", "product") else "gemm_int8"  # J = 7 > int8_max_conv
    for opts, key in (
        (CpuOptions(), auto),
        (CpuOptions(int8_max_conv=64), "gemm_int8"),
        (CpuOptions(int8=False), "gemm_float32"),
        (CpuOptions(int8_max_pairs=1), "gemm_float32"),
        (CpuOptions(int8=True, int8_max_pairs=1), "gemm_int8"),
    ):
        cpu.STATS.clear()
        assert_same(oracle.run_layer(layer, *inputs), cpu.run_layer(layer, *inputs, options=opts), str(opts))
        assert key in cpu.STATS, (opts, cpu.STATS)
    sat, inputs = _bench_like(dp, kind, "saturate")
    assert sat.no_overflow_possible()  # no clamp can act: the order-free int8 path is exact
    cpu.STATS.clear()
    check(sat, inputs, both=False)
    assert auto in cpu.STATS, cpu.STATS


def test_saturate_that_can_clamp_stays_sequential():
    layer = _uniform_linear(np.full((2, 30), 127), 8, 7, Accumulator(16, "saturate"))
    assert not layer.no_overflow_possible()
    x = np.full((3, 30), 127)
    x[1] = -128
    cpu.STATS.clear()
    assert_same(oracle.run_layer(layer, x), cpu.run_layer(layer, x, options=CpuOptions(int8=True)))
    assert "int_saturate" in cpu.STATS and "gemm_int8" not in cpu.STATS, cpu.STATS


def test_recombination_bound_at_its_limit():
    """T = max|bias| + sum_{l,m} 2^(8(l+m))·K'·max|A_l|·max|B_m| < 2^63 admits the path;
    one more and it declines (the float/integer paths then run, still exact)."""
    layer = _uniform_linear(np.array([[127, -3, 5], [-127, 0, 9]]), 9, 20, Accumulator(64, "wrap"))
    G, H = _sides(layer)
    Ga, Bl = intmm.limb_split(G), intmm.limb_split(H)
    amax = [int(np.abs(a.astype(np.int64)).max()) for a in Ga]
    bmax = [int(np.abs(b.astype(np.int64)).max()) for b in Bl]
    prods = sum(256 ** (i + j) * 3 * a * b for i, a in enumerate(amax) for j, b in enumerate(bmax))
    opts = CpuOptions(int8=True)
    assert intmm.plan(G, H, 3, 2**63 - 1 - prods, opts) is not None
    assert intmm.plan(G, H, 3, 2**63 - prods, opts) is None
    x = np.array([[-128, 127, 1], [127, -128, 0]])
    assert_same(oracle.run_layer(layer, x), cpu.run_layer(layer, x, options=opts))


def test_probe_rejects_an_inexact_library():
    """A _int_mm that saturates int16 pair sums (pre-VNNI vpmaddubsw) or wraps is refused."""
    import torch

    class Sat16:  # u8 (A + 128) x s8 B pair sums saturated to int16, minus 128·colsum(B)
        from_numpy = staticmethod(torch.from_numpy)

        @staticmethod
        def _int_mm(a, b):
            A, B = a.numpy().astype(np.int64) + 128, b.numpy().astype(np.int64)
            K = A.shape[1] - A.shape[1] % 2
            pairs = A[:, :K:2, None] * B[None, :K:2] + A[:, 1:K:2, None] * B[None, 1:K:2]
            s = np.clip(pairs, -(2**15), 2**15 - 1).sum(1)
            if A.shape[1] % 2:
                s = s + A[:, -1:] @ B[-1:]
            return torch.from_numpy((s - 128 * B.sum(0)).astype(np.int32))

    class Wrap30:  # exact only below 2^30 (a hypothetical narrower accumulator)
        from_numpy = staticmethod(torch.from_numpy)

        @staticmethod
        def _int_mm(a, b):
            s = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64)
            return torch.from_numpy((((s + 2**29) % 2**30) - 2**29).astype(np.int32))

    assert intmm._probe(torch)
    assert not intmm._probe(Sat16)
    assert not intmm._probe(Wrap30)


def test_without_torch_the_float_path_runs(monkeypatch):
    layer, inputs = _bench_like("operand")
    monkeypatch.setitem(intmm._STATE, "torch", None)
    cpu.STATS.clear()
    assert_same(
        oracle.run_layer(layer, *inputs), cpu.run_layer(layer, *inputs, options=CpuOptions(int8=True))
    )
    assert "gemm_int8" not in cpu.STATS and "gemm_float32" in cpu.STATS, cpu.STATS


def test_int8_options_are_validated():
    with pytest.raises(TypeError, match="int8"):
        CpuOptions(int8=1)
    with pytest.raises(ValueError, match="int8_chunk_k"):
        CpuOptions(int8_chunk_k=(1 << 16) + 1)  # beyond claim (I)
    with pytest.raises(ValueError, match="int8_max_pairs"):
        CpuOptions(int8_max_pairs=0)
