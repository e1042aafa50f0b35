"""Quantization methods of the reference engine: quantizer contract, PowerQuant search, GPTQ,
NUPES and quantize_model (fast: tiny layers)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nupes_sim.reference.activation import calibrate_activation
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.calibrate import PowerActQuant
from nupes_sim.reference.gptq import HessianAccumulator, PowerElement, gptq, gptq_layer
from nupes_sim.reference.nupes import NupesConfig, dsq, nupes_layer, soft_decode, soft_power_weight
from nupes_sim.reference.objective import LayerObjective
from nupes_sim.reference.powerquant import search_exponent, weight_error_np
from nupes_sim.reference.quantizer import PowerQuantizer
from nupes_sim.reference.rtn import rtn_quantize

from .strategies import bits, exponents, quantizers, weight_matrices
from .toy import correlated


def _out_err(X, W, W_hat):
    return float(((X @ (W - W_hat).T) ** 2).mean())


# ---- dsq --------------------------------------------------------------------------------------
def test_dsq_is_round_at_large_beta_away_from_half_points():
    e = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    far = (e - torch.floor(e) - 0.5).abs() > 0.05
    d = dsq(e, 200.0)
    assert float((d - torch.round(e))[far].abs().max()) < 1e-6
    assert torch.equal(
        dsq(torch.arange(-7.0, 8.0, dtype=torch.float64), 200.0), torch.arange(-7.0, 8.0, dtype=torch.float64)
    )


def test_dsq_is_smooth_and_monotone_at_small_beta():
    e = torch.linspace(-3, 3, 60001, dtype=torch.float64, requires_grad=True)
    d = dsq(e, 2.0)
    assert bool((d[1:] > d[:-1]).all())  # strictly increasing
    (g,) = torch.autograd.grad(d.sum(), e)
    # dsq' = β(1 − tanh²(β(ε−⌊ε⌋−½)))/(2 tanh(β/2)): 1/tanh(1) at the .5 points, (1−tanh²1)/tanh1 at integers
    t = math.tanh(1.0)
    assert float(g.max()) == pytest.approx(1 / t, rel=1e-6) and float(g.min()) == pytest.approx(
        (1 - t * t) / t, rel=1e-6
    )
    # continuous derivative: no jump at the integers (where ⌊ε⌋ jumps)
    assert float((g[1:] - g[:-1]).abs().max()) < 1e-3
    assert float((d - e).detach().abs().max()) < 0.08  # close to the identity at small β


# ---- quantizer contract -------------------------------------------------------------------------
@given(weight_matrices(), st.data())
def test_torch_and_numpy_agree_exactly(wg, data):
    w, g = wg
    q = data.draw(quantizers(group_size=g))
    wt = torch.from_numpy(w)
    s_t, s_n = q.scales(wt), q.scales_np(w)
    assert np.array_equal(s_t.numpy(), s_n)
    assert np.array_equal(q.encode(wt).numpy(), q.encode_np(w))
    assert np.array_equal(q.fake_quant(wt).numpy(), q.fake_quant_np(w))
    assert np.isfinite(q.fake_quant_np(w)).all()


@given(
    bits, exponents, st.sampled_from(["tensor", "channel", "group"]), st.integers(0, 2**31 - 1), st.booleans()
)
def test_encode_decode_round_trip_on_codes(b, a, gran, seed, full):
    q = PowerQuantizer(b, True, a, gran, 2 if gran == "group" else None, full)  # full: -2^(b-1) too
    rng = np.random.default_rng(seed)
    codes = rng.integers(q.qmin, q.qmax + 1, size=(3, 4))
    s = np.exp(rng.uniform(-5, 5, size=q.scales_shape(codes.shape)))
    w = q.decode_np(codes, s)
    assert np.array_equal(q.encode_np(w, s), codes)
    assert np.array_equal(q.encode(torch.from_numpy(w), torch.from_numpy(s)).numpy(), codes)


def test_default_scale_maps_max_to_M_and_zero_slices_to_one():
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -2.0, 0.0, 1.0]], dtype=torch.float64)
    q = PowerQuantizer(4, True, 0.5, "channel")
    s = q.scales(w)
    assert s[0] == 1.0 and torch.equal(q.encode(w)[0], torch.zeros(4, dtype=torch.int64))
    assert int(q.encode(w)[1, 1]) == -7
    assert float(q.fake_quant(w)[1, 1]) == pytest.approx(-2.0, rel=1e-12)
    u = PowerQuantizer(3, False, 1.0, "tensor")
    assert (u.qmin, u.qmax) == (0, 7)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(bits=9), "bits=9"),
        (dict(bits=1), "bits=1"),
        (dict(exponent=0.0), "exponent"),
        (dict(exponent=float("nan")), "exponent"),
        (dict(exponent=5.0), "exponent"),
        (dict(granularity="row"), "granularity"),
        (dict(granularity="group"), "group_size"),
        (dict(granularity="group", group_size=0), "group_size"),
        (dict(group_size=4), "group_size"),
    ],
)
def test_quantizer_validation_names_the_field(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PowerQuantizer(**kw)


def test_unrepresentable_scale_is_an_error():
    w = np.array([[4.6e-113, 0.0]])
    for q in (PowerQuantizer(2, True, 3.0, "tensor"), PowerQuantizer(8, True, 4.0)):
        with pytest.raises(ValueError, match="under/overflow"):
            q.scales_np(w)
        with pytest.raises(ValueError, match="under/overflow"):
            q.encode(torch.from_numpy(w))
    with pytest.raises(ValueError, match="under/overflow"):
        PowerQuantizer(4, True, 4.0).scales(torch.tensor([[1e300]], dtype=torch.float64))


def test_bad_tensors_are_errors():
    q = PowerQuantizer(4, True, 1.0, "group", 3)
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        q.scales(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="non-finite"):
        PowerQuantizer().encode(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(TypeError, match="bits"):
        PowerQuantizer(bits=4.0)


# ---- PowerQuant search -----------------------------------------------------------------------------
@pytest.mark.parametrize("dist, b", [("gauss", 4), ("laplace", 4), ("gauss", 8), ("laplace", 3)])
def test_exponent_search_finds_the_dense_grid_optimum(dist, b):
    """Tolerance derivation: on ±0.05 around the dense optimum a*, E(a) = P(a) + r(a) with P the
    least-squares quadratic (curvature c = P'') and |r| ≤ ρ (max fit residual). The search must reach
    E ≤ E(a*) + 2ρ (no worse than the jitter); then P(â) ≤ P(a*) + 4ρ, and both â and a* lie within
    √(8ρ/c) of P's minimum, so |â − a*| ≤ 2√(8ρ/c) + 0.001 (the dense grid step)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((32, 256)) if dist == "gauss" else rng.laplace(size=(32, 256))
    res = search_exponent(w, b)
    grid = np.round(np.arange(0.1, 2.0 + 1e-9, 0.001), 6)
    errs = np.array([weight_error_np(w, PowerQuantizer(b, True, float(a))) for a in grid])
    i = int(np.argmin(errs))
    a_star, e_star = grid[i], errs[i]
    sel = np.abs(grid - a_star) <= 0.05
    coef = np.polyfit(grid[sel] - a_star, errs[sel], 2)
    rho = float(np.abs(errs[sel] - np.polyval(coef, grid[sel] - a_star)).max())
    c = 2 * coef[0]
    assert c > 0
    assert res.error <= e_star + 2 * rho + 1e-12 * e_star
    assert abs(res.exponent - a_star) <= 2 * math.sqrt(8 * rho / c) + 0.001
    assert res.error == pytest.approx(weight_error_np(w, PowerQuantizer(b, True, res.exponent)), rel=0, abs=0)


def test_network_search_shares_one_exponent_and_activation_calibration():
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((8, 16)), 100 * rng.laplace(size=(4, 32))]
    r = search_exponent(ws, 4)
    assert 0.1 <= r.exponent <= 2.0 and math.isfinite(r.error)
    x = torch.relu(torch.randn(2000, dtype=torch.float64))
    f = calibrate_activation(x, 4)
    assert not f.signed and f.range.qmax == 15
    assert calibrate_activation(torch.randn(100), 4).signed
    act = PowerActQuant(f)
    y = act(x)
    assert torch.isfinite(y).all() and float((y - x).abs().max()) < float(x.max()) / 4


# ---- GPTQ ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a", [1.0, 0.6])
@pytest.mark.parametrize(
    "gran, g, actorder",
    [
        ("channel", None, False),
        ("channel", None, True),
        ("group", 8, False),
        ("group", 8, True),
        ("tensor", None, False),
    ],
)
def test_gptq_with_identity_hessian_equals_rtn(a, gran, g, actorder):
    """Hadamard rows are exactly orthogonal in float64, so H = 2·XᵀX/n = (2/n)·64·I exactly and no
    error is ever propagated: GPTQ must reproduce RTN bit for bit (codes and scales)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 12).double()
    X = torch.tensor(scipy.linalg.hadamard(64), dtype=torch.float64) * 0.5  # power of two: every sum exact
    acc = HessianAccumulator(64)
    acc.add(X)
    assert torch.count_nonzero(acc.H - torch.diag(torch.diag(acc.H))) == 0
    qg = gptq_layer(lin, [acc.H], 4, a, gran, g, blocksize=16, actorder=actorder)
    qr = rtn_quantize(lin.weight, 4, gran, g, a)
    assert torch.equal(qg.codes, qr.codes) and torch.equal(qg.scales, qr.scales)


def test_gptq_beats_rtn_on_correlated_inputs_uniform_and_power():
    torch.manual_seed(1)
    K, C = 96, 24
    X = correlated(128, K)
    lin = nn.Linear(K, C).double()
    W = lin.weight.detach()
    acc = HessianAccumulator(K)
    acc.add(X)
    qg = gptq_layer(lin, [acc.H], 3, 1.0, blocksize=32)
    e_rtn, e_gptq = _out_err(X, W, rtn_quantize(W, 3).decode()), _out_err(X, W, qg.decode())
    assert e_gptq < 0.8 * e_rtn
    a = search_exponent(W, 3).exponent
    qp = gptq_layer(lin, [acc.H], 3, a, blocksize=32)
    e_pq = _out_err(X, W, rtn_quantize(W, 3, exponent=a).decode())
    assert _out_err(X, W, qp.decode()) < 0.8 * e_pq
    # the returned fake weight is the exact decode of the codes
    codes, scales, Q = gptq(W, acc.H, PowerElement(3, a), blocksize=32)
    assert torch.equal(Q, PowerQuantizer(3, True, a).decode(codes, scales))


def test_gptq_dead_columns_constant_and_tiny_calibration():
    torch.manual_seed(2)
    lin = nn.Linear(40, 8).double()
    X = torch.randn(5, 40, dtype=torch.float64)  # fewer samples than features
    X[:, 3] = 0.0  # dead input
    acc = HessianAccumulator(40)
    acc.add(X)
    q = gptq_layer(lin, [acc.H], 4, 0.7, "group", 10, actorder=True)
    assert torch.all(q.codes[:, 3] == 0) and torch.isfinite(q.decode()).all()
    acc = HessianAccumulator(40)
    acc.add(torch.full((16, 40), 3.0, dtype=torch.float64))  # constant inputs: rank-1 Hessian
    assert torch.isfinite(gptq_layer(lin, [acc.H], 4).decode()).all()


# ---- NUPES -----------------------------------------------------------------------------------------
def test_exponent_gradient_is_finite_with_zero_weights_and_zero_codes():
    c = torch.tensor([[[0.0, 1.0, -3.0, 7.0, 0.0, -7.0]], [[0.0] * 6]], dtype=torch.float64)
    m = torch.tensor([[[1.5]], [[0.0]]], dtype=torch.float64)
    for a0 in (0.1, 0.7, 2.0):
        a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        cc = c.clone().requires_grad_()
        soft_decode(cc, m, a, 7).sum().backward()
        assert torch.isfinite(a.grad) and torch.isfinite(cc.grad).all()
        a2 = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        e = c.clone().requires_grad_()
        w = soft_power_weight(e, a2, m, 50.0, 7)
        (w * torch.linspace(-1, 1, w.numel(), dtype=torch.float64).reshape(w.shape)).sum().backward()
        assert torch.isfinite(a2.grad) and torch.isfinite(e.grad).all() and torch.isfinite(w).all()
    lin = nn.Linear(12, 4)
    with torch.no_grad():
        lin.weight[0] = 0.0
        lin.weight[1, :6] = 0.0
    for x in (None, torch.randn(20, 12)):
        q, info = nupes_layer(lin, 4, exponent=0.5, x_fp=x, config=NupesConfig(steps=15))
        assert torch.all(q.codes[0] == 0) and float(q.scales[0]) == 1.0 and torch.isfinite(q.decode()).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nupes_never_worse_than_its_init(seed):
    torch.manual_seed(seed)
    lin = nn.Linear(48, 16)
    X = correlated(64, 48, seed).float()
    for cfg in (NupesConfig(steps=30), NupesConfig(steps=30, lr=2.0, lr_exponent=0.5), NupesConfig(steps=5)):
        for x in (X, None):
            q, info = nupes_layer(lin, 3, x_fp=x, config=cfg, seed=seed)
            assert info["loss_final"] <= info["loss_init"]
            assert info["loss_final"] == min(info["loss_init"], info["loss_hard"])
    q, info = nupes_layer(lin, 3, x_fp=X, config=NupesConfig(steps=60), seed=seed)
    assert info["loss_final"] < 0.8 * info["loss_init"]  # data-driven NUPES does improve here


def test_nupes_fails_loudly_on_non_finite_loss(monkeypatch):
    lin = nn.Linear(8, 4)
    obj = LayerObjective.weight_error(lin, "fc7")
    calls = []
    real = obj.residual

    def bad(D):
        calls.append(1)
        return real(D) * (float("nan") if len(calls) == 4 else 1.0)  # call 1: the start's loss

    monkeypatch.setattr(obj, "residual", bad)
    with pytest.raises(FloatingPointError, match=r"'fc7' step 2"):
        nupes_layer(lin, 4, exponent=1.0, objective=obj, name="fc7", config=NupesConfig(steps=10))


# ---- quantize_model ---------------------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 5 * 5, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.dw(torch.relu(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("method", ["rtn", "powerquant", "gptq", "gptq_power", "nupes"])
def test_quantize_model_methods_codes_and_report(method):
    torch.manual_seed(0)
    net = _Net()
    X = torch.randn(12, 2, 5, 5)
    q, rep = quantize_model(net, method, 4, 6, X, progress=False, steps=10)
    assert [l["name"] for l in rep["layers"]] == ["conv", "dw", "fc"]
    for l in rep["layers"]:
        m = q.get_submodule(l["name"])
        qw = m.nupes_quant
        assert qw.codes.dtype == torch.int8 and qw.codes.shape == m.weight.shape
        assert torch.equal(m.weight.detach(), qw.decode().float())
        assert abs(int(qw.codes.min())) <= 7 and int(qw.codes.max()) <= 7
        assert math.isfinite(l["loss_before"]) and math.isfinite(l["loss_after"]) and l["seconds"] >= 0
        if method in ("gptq", "gptq_power", "nupes"):
            assert l["loss_after"] <= l["loss_before"] * 1.0001 or l["name"] == "conv"
    assert rep["activations"]["conv"]["signed"] is not True or True
    assert rep["activations"]["dw"]["signed"] is False and rep["activations"]["conv"]["signed"] is True
    assert q.dw.nupes_act.bits == 6 and torch.isfinite(q(X)).all()
    assert not hasattr(net.conv, "nupes_quant")  # the input model is untouched


def test_sequential_and_parallel_and_data_free():
    torch.manual_seed(0)
    net = _Net()
    X = torch.randn(10, 2, 5, 5)
    qs, rs = quantize_model(net, "gptq_power", 3, calib=X, mode="sequential", progress=False)
    qp, rp = quantize_model(net, "gptq_power", 3, calib=X, mode="parallel", progress=False)
    assert torch.equal(qs.conv.nupes_quant.codes, qp.conv.nupes_quant.codes)  # first layer: same inputs
    assert rs["mode"] == "sequential" and rp["mode"] == "parallel"
    qd, rd = quantize_model(net, "nupes", 3, calib=None, progress=False, steps=10)
    assert rd["mode"] == "data-free" and all(l["loss_kind"] == "weight_rel_mse" for l in rd["layers"])
    assert all(l["loss_after"] <= l["loss_before"] for l in rd["layers"])


def test_robust_weights_and_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight[0] = 0.0  # all-zero channel
        net[0].weight[1, ::2] = 0.0  # exact zeros
        net[2].weight[0, 0] = 1e6  # huge outlier
    for X in (torch.randn(4, 16), torch.full((8, 16), 2.0), torch.zeros(8, 16)):  # tiny, constant, zero
        for method in ("gptq", "gptq_power", "nupes"):
            q, rep = quantize_model(net, method, 4, 8, X, progress=False, steps=10)
            assert torch.all(q[0].nupes_quant.codes[0] == 0)
            assert all(torch.isfinite(m.weight).all() for m in (q[0], q[2]))
            assert all(math.isfinite(l["loss_after"]) for l in rep["layers"])


def test_non_finite_weights_or_calibration_name_the_layer():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    X = torch.randn(8, 4)
    bad = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        bad[2].weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"layer '2'.*non-finite"):
        quantize_model(bad, "rtn", 4, progress=False)
    Xb = X.clone()
    Xb[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"'0'.*non-finite"):
        quantize_model(net, "gptq", 4, calib=Xb, progress=False)
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_model(net, "gptq", 4, progress=False)


def test_unsupported_layers():
    net = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'0' \(Conv1d\).*nn.Linear, nn.Conv2d"):
        quantize_model(net, "rtn", 4, layers=[nn.Conv1d, nn.Linear], progress=False)
    with pytest.warns(UserWarning, match="left in float"):
        q, rep = quantize_model(net, "rtn", 4, layers=["0", "2"], unsupported="float", progress=False)
    assert rep["float_layers"] == ["0"] and [l["name"] for l in rep["layers"]] == ["2"]
    q, rep = quantize_model(net, "rtn", 4, progress=False, skip=lambda n, m: n == "2")  # others pass through
    assert rep["layers"] == []
    with pytest.raises(ValueError, match="method="):
        quantize_model(net, "adaround", 4)
