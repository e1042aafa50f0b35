"""Sentences of docs/ARITHMETIC.md added for issue #15 items 8-12, each pinned here."""

import numpy as np
import pytest

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Linear, MaxPool2d
from nupes_sim.rounding import round_float
from nupes_sim.tables import decode_table, product_table, threshold_table

SEED = 1234
# a = 1 and dyadic scales: every real entry is an exact float64, so round_float of it is the
# table's definition and the stochastic words decide every entry


def test_stochastic_tensor_ids_and_c_order():
    """§3: weight LUT id, activation LUT id + 1, bias id + 2; 2-D tables (row, code) in C order."""
    wf = PowerFormat(4, True, 1.0, np.array([0.375, 0.8125]), "channel")
    xf = PowerFormat(4, False, 1.0, 0.3125)
    tid = 40
    layer = Linear.build(
        "l",
        np.array([[1, -2], [3, 7]]),
        wf,
        xf,
        w_frac_bits=3,
        x_frac_bits=2,
        rounding="stochastic",
        seed=SEED,
        tensor_id=tid,
        bias=[0.3, -0.7],
    )
    q = wf.range.all_codes()
    wreal = (wf.scale[:, None] * q[None, :]) * 2.0**3  # (row, code), C order
    assert (layer.w_table.lut == round_float(wreal.reshape(-1), "stochastic", SEED, tid).reshape(2, -1)).all()
    assert not (
        layer.w_table.lut == round_float(wreal.T.reshape(-1), "stochastic", SEED, tid).reshape(-1, 2).T
    ).all()
    xreal = xf.scale[0] * xf.range.all_codes() * 2.0**2
    assert (layer.x_table.lut[0] == round_float(xreal, "stochastic", SEED, tid + 1)).all()
    assert (layer.bias == round_float(np.array([0.3, -0.7]) / layer.unit, "stochastic", SEED, tid + 2)).all()


def test_stochastic_tensor_ids_add_avgpool_product():
    fa, fb = PowerFormat(4, True, 1.0, 0.375), PowerFormat(4, True, 1.0, 0.625)
    add = Add.build("a", fa, fb, frac_bits=2, rounding="stochastic", seed=SEED, tensor_id=9)
    for fmt, t, tid in ((fa, add.a_table, 9), (fb, add.b_table, 10)):
        assert (
            t.lut[0] == round_float(fmt.scale[0] * fmt.range.all_codes() * 4.0, "stochastic", SEED, tid)
        ).all()
    ap = AvgPool2d.build("p", fa, frac_bits=2, kernel=2, rounding="stochastic", seed=SEED, tensor_id=21)
    assert (
        ap.x_table.lut[0] == round_float(fa.scale[0] * fa.range.all_codes() * 4.0, "stochastic", SEED, 21)
    ).all()
    pt = product_table(
        PowerFormat(3, True, 1.0, 0.5), PowerFormat(3, True, 1.0, 0.625), 2, "stochastic", SEED, 5
    )
    assert (pt.lut[0] == round_float(0.625 * np.arange(10) * 4.0, "stochastic", SEED, 5)).all()


def test_product_table_lengths_unsigned_mx_and_exact_equality():
    """§2: M_x = 2^b - 1 for unsigned activations; by-product iff the exponents are equal."""
    wf = PowerFormat(4, True, 0.6, 0.1)
    assert product_table(wf, PowerFormat(4, False, 0.6, 0.02), 10).lut.shape == (1, 7 * 15 + 1)
    pair = product_table(wf, PowerFormat(4, False, 0.6000001, 0.02), 10)
    assert not pair.by_product and pair.lut.shape == (1, 8 * 16)
    assert product_table(wf, PowerFormat(4, True, 0.6, 0.02), 10).lut.shape == (1, 7 * 7 + 1)


def test_small_weight_exponent_hits_the_size_limit():
    """§2: a_w = 0.05, 8-bit weights: entries near 1.8e42 are refused for any F."""
    with pytest.raises(ValueError, match="2\\^52"):
        decode_table(PowerFormat(8, True, 0.05, 1.0), 0)


@pytest.mark.parametrize(
    "H, k, p, d, s", [(7, 3, 1, 1, 2), (8, 2, 0, 2, 3), (5, 3, 2, 2, 1), (6, 1, 0, 1, 4)]
)
def test_conv_output_size_formula(H, k, p, d, s):
    layer = Conv2d.build(
        "c",
        np.ones((1, 1, k, k), np.int64),
        PowerFormat(2, True, 1.0, 1.0),
        UniformFormat(8, True, 1.0, 0),
        w_frac_bits=0,
        x_frac_bits=0,
        stride=s,
        padding=p,
        dilation=d,
    )
    ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
    assert layer.out_hw(H, H) == (ho, ho)
    assert oracle.run_layer(layer, np.zeros((1, 1, H, H), np.int64))["acc"].shape == (1, 1, ho, ho)


def test_pool_geometry():
    """§8: MaxPool p <= k/2, floor sizes, default stride = kernel; AvgPool no padding."""
    with pytest.raises(ValueError, match="padding"):
        MaxPool2d("m", 3, padding=2)
    mp = MaxPool2d("m", 3, padding=1)
    assert mp.stride == (3, 3)
    assert oracle.run_layer(mp, np.zeros((1, 1, 8, 8), np.int64))["out"].shape == (1, 1, 3, 3)  # floor(8/3)+1
    ap = AvgPool2d.build("a", PowerFormat(4, False, 1.0, 1.0), frac_bits=0, kernel=3)
    assert ap.stride == (3, 3) and not hasattr(ap, "padding")
    assert oracle.run_layer(ap, np.zeros((1, 1, 8, 8), np.int64))["acc"].shape == (1, 1, 2, 2)


def test_avgpool_sums_row_major_through_saturate_and_tiles():
    """§8: window sum rows then columns through the §4 accumulator: values 100, 100, -100, -100
    saturate at 127 -> 27 -> -73 (row-major) where column-major would give 0; with tile = 2
    each row is one tile: clamp(200) = 127, clamp(-200) = -128, 127 - 128 = -1."""
    fmt = PowerFormat(8, True, 1.0, 1.0)
    x = np.array([[[[100, 100], [-100, -100]]]])
    for tile, want in ((0, -73), (2, -1), (1, -73)):
        ap = AvgPool2d.build("a", fmt, frac_bits=0, kernel=2, acc=Accumulator(8, "saturate", tile))
        assert int(oracle.run_layer(ap, x)["acc"][0, 0, 0, 0]) == want, tile


def test_add_tiles_apply():
    fmt = PowerFormat(8, True, 1.0, 1.0)
    add = Add.build("a", fmt, fmt, frac_bits=0, acc=Accumulator(8, "saturate", 1))
    r = oracle.run_layer(add, np.array([100]), np.array([100]))
    assert (int(r["acc_exact"][0]), int(r["acc"][0])) == (200, 127)


def test_threshold_outputs_and_activations_per_tensor():
    with pytest.raises(TypeError, match="per-tensor"):
        threshold_table(0.1, PowerFormat(4, False, 1.0, np.array([1.0, 2.0]), "channel"), 16)
    with pytest.raises(ValueError, match="per-tensor"):
        product_table(
            PowerFormat(4, True, 1.0, 1.0), PowerFormat(4, True, 1.0, np.array([1.0, 2.0]), "channel"), 4
        )
