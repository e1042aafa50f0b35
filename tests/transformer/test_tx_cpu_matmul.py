"""The CPU MatMul's exact-GEMM path (transformer/cpu_matmul.py, claim (E)) forced on and off
== the oracle, bit for bit, on random cases and on the boundaries of (E): full-magnitude
codes whose sums reach the accumulator limit, saturate exactly at and just past bound = hi,
wrap sums that leave the width, and the float64 GEMM at the 2^53 edge."""

import numpy as np
import pytest
from hypothesis import given
from tx_strategies import matmul_case, power

from nupes_sim import oracle
from nupes_sim.formats import UniformFormat
from nupes_sim.layers import Accumulator
from nupes_sim.transformer import cpu as tcpu
from nupes_sim.transformer import cpu_matmul
from nupes_sim.transformer.layers import MatMul


def check(layer, a, b, **kw):
    want = oracle.run_layer(layer, a, b)
    got = tcpu.matmul(layer, a, b, **kw)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        bad = np.flatnonzero(got[k] != want[k])
        assert bad.size == 0, (kw, k, got[k].reshape(-1)[bad[:5]], want[k].reshape(-1)[bad[:5]])


def paths(layer):
    """Every path the layer admits: the scalar kernel always, the GEMMs where (E) applies."""
    out = [dict(fast=False)]
    if cpu_matmul.applies(layer):
        out += [dict(fast=True, gemm="int64"), dict(fast=None)]
        if int(layer.bound[0]) < cpu_matmul.F64_EXACT:
            out.append(dict(fast=True, gemm="float64"))
    return out


@given(matmul_case())
def test_every_path_equals_oracle(case):
    layer, (a, b) = case
    for kw in paths(layer):
        check(layer, a, b, **kw)


def extreme_layer(width, overflow, tile=0, K=7, frac=12, out_fmt=None):
    fa = power(8, True, 2.0, 3.0)
    fb = power(8, True, 1.5, 5.0)
    return MatMul.build(
        "mm", fa, fb, k_max=K, a_frac_bits=frac, b_frac_bits=frac, acc=Accumulator(width, overflow, tile),
        out_fmt=out_fmt, requant_rounding="half_even", mult_bits=min(31, 63 - width),
    )  # fmt: skip


def extreme_codes(layer, K, rng):
    """Full-magnitude codes: every product at its largest |value|, both signs, plus random rows."""
    ra, rb = layer.a_range, layer.b_range
    la, lb = layer.a_table.lut[0], layer.b_table.lut[0]
    qa = ra.qmin + int(np.argmax(np.abs(la)))
    qb = rb.qmin + int(np.argmax(np.abs(lb)))
    qb_neg = rb.qmin + int(np.argmax(-np.sign(lb[qb - rb.qmin]) * lb))  # the opposite sign's largest
    a = np.full((2, 3, K), qa)
    a[1, 2] = rng.integers(ra.qmin, ra.qmax + 1, K)
    b = np.full((2, K, 4), qb)
    b[0, :, 1] = qb_neg
    b[1, :, 2] = rng.integers(rb.qmin, rb.qmax + 1, K)
    b[1, ::2, 3] = qb_neg  # alternating signs
    return a, b


@pytest.mark.parametrize("tile", [0, 2, 3])
@pytest.mark.parametrize("out", [False, True])
def test_saturate_at_and_past_the_bound(tile, out):
    rng = np.random.default_rng(tile)
    K = 7
    probe = extreme_layer(64, "exact", K=K)
    bound = int(probe.bound[0])
    assert probe.max_product * K == bound
    fmt = UniformFormat(8, True, 0.3) if out else None
    for width, fast_ok in ((bound.bit_length() + 1, True), (bound.bit_length(), False)):
        layer = extreme_layer(width, "saturate", tile, K, out_fmt=fmt)
        assert cpu_matmul.applies(layer) is fast_ok and (bound <= layer.acc.hi) is fast_ok
        a, b = extreme_codes(layer, K, rng)
        s = oracle.run_layer(layer, a, b)["acc_exact"]
        assert int(np.abs(s).max()) == bound  # the sums reach the proof's bound
        if not fast_ok:
            assert (oracle.run_layer(layer, a, b)["acc"] != s).any()  # a clamp acts
            with pytest.raises(ValueError, match="does not apply"):
                tcpu.matmul(layer, a, b, fast=True)
        for kw in paths(layer):
            check(layer, a, b, **kw)


@pytest.mark.parametrize("width", [8, 12, 20])
def test_wrap_sums_leaving_the_width(width):
    layer = extreme_layer(width, "wrap")
    a, b = extreme_codes(layer, 7, np.random.default_rng(width))
    assert int(np.abs(oracle.run_layer(layer, a, b)["acc_exact"]).max()) > layer.acc.hi
    assert cpu_matmul.applies(layer)
    for kw in paths(layer):
        check(layer, a, b, **kw)


def test_float64_gemm_refused_from_2_53_and_int64_exact_there():
    layer = extreme_layer(64, "exact", K=64, frac=23)
    assert int(layer.bound[0]) >= 2**53
    a, b = extreme_codes(layer, 64, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    big = [(r.qmax // 2, r.qmax + 1) for r in (layer.a_range, layer.b_range)]  # one sign: sums >= 2^53
    a = np.concatenate([a, rng.integers(*big[0], a.shape)])
    b = np.concatenate([b, rng.integers(*big[1], b.shape)])
    with pytest.raises(ValueError, match="2\\^53"):
        tcpu.matmul(layer, a, b, fast=True, gemm="float64")
    # float64 rounds these sums (so this case can tell the GEMMs apart); the int64 GEMM must not
    A, B = (
        t.lut[0][q - r.qmin]
        for t, q, r in ((layer.a_table, a, layer.a_range), (layer.b_table, b, layer.b_range))
    )
    s = oracle.run_layer(layer, a, b)["acc_exact"]
    assert (np.matmul(A.astype(np.float64), B.astype(np.float64)).astype(np.int64) != s).any()
    check(layer, a, b, fast=True, gemm="int64")
    check(layer, a, b)


def test_product_datapath_keeps_the_scalar_kernel():
    f = power(4, True, 2.0, 1.0)
    layer = MatMul.build("mm", f, f, k_max=3, datapath="product")
    assert not cpu_matmul.applies(layer)
    a = np.array([[[7, -7, 3]]])
    check(layer, a, np.swapaxes(a, -1, -2))
    with pytest.raises(ValueError, match="does not apply"):
        tcpu.matmul(layer, a, np.swapaxes(a, -1, -2), fast=True)
