"""The one-pass fake quantizer of the twin (nupes_sim/cpu/fakequant.py) equals
decode_real(encode(x)) bit for bit: every code, both sides of every rounding boundary, every
tie, clipping, signed zeros; and the exporter's twin is unchanged by it."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nupes_sim.cpu import fakequant
from nupes_sim.formats import PowerFormat
from nupes_sim.reference import activation
from nupes_sim.reference.export import ExportConfig, export_model
from nupes_sim.reference.fold import fold_batchnorm

from .toy import power_rtn, toy_model

FORMATS = [
    PowerFormat(8, False, 2.0, np.array([2.0**2 / 255])),
    PowerFormat(8, True, 0.7, np.array([1.3**0.7 / 127])),
    PowerFormat(4, True, 1.0, np.array([0.5 / 7])),
    PowerFormat(4, False, 0.25, np.array([3.0**0.25 / 15])),
    PowerFormat(8, False, 1.5, np.array([0.1])),
    PowerFormat(4, True, 0.7, np.array([0.2]), full_range=True),  # codes [-8, 7]
]


def _old(fmt, x, rounding="half_even"):
    return fmt.decode_real(fmt.encode(x, rounding))


def _same(a, b):
    assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
    assert np.array_equal(a.view(np.int64), b.view(np.int64))  # bitwise, signed zeros too


def _boundaries(fmt):
    """x at every code, every half-way point (ties: z = c + 1/2 where it is representable)
    and its neighbours, beyond both ends, signed zeros."""
    q0, q1 = fmt.range.qmin, fmt.range.qmax
    c = np.arange(q0 - 2, q1 + 3, 0.5)
    s, a = float(fmt.scale[0]), fmt.exponent
    x = np.sign(c) * (np.abs(c) * s) ** (1 / a)
    far = (1000.0 * q1 * s) ** (1 / a)  # clipped on both sides
    xs = [x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf), np.array([0.0, -0.0, far, -far])]
    # exact ties: the x whose scaled value is exactly c + 1/2 (a = 1: x = (c + 1/2)·s)
    if a == 1.0:
        xs.append((np.arange(q0, q1) + 0.5) * s)
    return np.concatenate(xs)


@pytest.mark.parametrize("rounding", ["half_even", "half_away", "half_up"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"{f.bits}{'s' if f.signed else 'u'}a{f.exponent}")
def test_equal_at_every_boundary(fmt, rounding):
    x = _boundaries(fmt)
    got = fakequant.fake_quantize(fmt, x, rounding)
    _same(got, _old(fmt, x, rounding))
    # every code, at scattered positions of a long array (vector body and tail alike)
    rng = np.random.default_rng(0)
    big = rng.permutation(np.tile(x, 10_003 // len(x) + 1))[:10_003].reshape(7, 1429)
    _same(fakequant.fake_quantize(fmt, big, rounding), _old(fmt, big, rounding))


def test_ties_are_rounded_by_the_mode():
    fmt = FORMATS[2]  # a = 1, s = 1/14: z = 14x
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) / 14
    z = fmt.scaled(x)
    assert np.array_equal(z, [0.5, 1.5, 2.5, -0.5, -1.5, -2.5])  # exact ties
    for mode in ("half_even", "half_away", "half_up"):
        _same(fakequant.fake_quantize(fmt, x, mode), _old(fmt, x, mode))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(FORMATS),
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=50),
)
def test_equal_on_random_values(fmt, vals):
    x = np.array(vals, np.float64)
    _same(fakequant.fake_quantize(fmt, x, "half_even"), _old(fmt, x))


def test_what_it_does_not_cover_falls_back():
    fmt = FORMATS[0]
    for bad in (np.array([1.0, np.nan]), np.array([np.inf]), np.array([1e200])):  # 1e200^2 = inf
        assert fakequant.fake_quantize(fmt, bad, "half_even") is None
        with pytest.raises(ValueError):
            activation.quantize_act(fmt, torch.from_numpy(bad))
    big = PowerFormat(8, False, 1.0, np.array([1e-300]))  # |z| >= 2^52: round_float refuses
    assert fakequant.fake_quantize(big, np.array([1.0]), "half_even") is None
    with pytest.raises(ValueError, match="too large"):
        activation.quantize_act(big, torch.tensor([1.0], dtype=torch.float64))
    chan = PowerFormat(4, True, 1.0, np.array([0.1, 0.2]), "channel")
    assert fakequant.fake_quantize(chan, np.ones((2, 3)), "half_even") is None
    assert fakequant.fake_quantize(fmt, np.ones(3), "stochastic") is None


@pytest.mark.parametrize("datapath", ["operand", "product"])
def test_the_twin_is_unchanged(datapath, monkeypatch):
    model = power_rtn(fold_batchnorm(toy_model()))
    torch.manual_seed(2)
    x = torch.randn(16, 1, 8, 8)
    ex = export_model(model, x, ExportConfig(datapath=datapath))
    fast, vals = ex.fake_quant(x, return_values=True)
    monkeypatch.setattr(activation, "fake_quantize", lambda *a: None)
    slow, svals = ex.fake_quant(x, return_values=True)
    assert set(vals) == set(svals)
    for k in vals:
        _same(vals[k].numpy(), svals[k].numpy())
    _same(fast.numpy(), slow.numpy())
