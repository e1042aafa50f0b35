"""The shared layer objective, GPTQ's float target, the code searches and the NUPES guarantees."""

import math

import pytest
import torch
from torch import nn

from nupes_sim.reference import codesearch
from nupes_sim.reference.gptq import gptq_layer
from nupes_sim.reference.nupes import NupesConfig, move_histogram, nupes_layer
from nupes_sim.reference.objective import LayerObjective
from nupes_sim.reference.quantizer import PowerQuantizer, QuantizedWeight


def _correlated(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    return torch.randn(n, k, generator=g, dtype=torch.float64) @ A + 0.5 * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )


def _direct(module, x_t, x_q, w_hat):
    """‖f(x_t, W) − f(x_q, ŵ)‖² / ‖f(x_t, W)‖² by running the layer on the data."""
    m = module.double()
    with torch.no_grad():
        y = m(x_t.double())
        saved = m.weight.clone()
        m.weight.copy_(w_hat.reshape(saved.shape))
        yq = m(x_q.double())
        m.weight.copy_(saved)
    return float(((y - yq) ** 2).sum() / (y**2).sum())


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_groups"])
@pytest.mark.parametrize("target", ["float", "local"])
def test_objective_equals_the_data_loss(kind, target):
    torch.manual_seed(1)
    if kind == "linear":
        mod, x = nn.Linear(10, 6), torch.randn(3, 7, 10)  # 3-D input: rows over the leading dims
    else:
        mod = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2 if kind == "conv_groups" else 1)
        x = torch.randn(5, 4, 6, 6)
    x_q = x + 0.1 * torch.randn_like(x)
    obj = LayerObjective.from_inputs(mod, x, x_q, target, chunk=2)  # several chunks
    x_t = x if target == "float" else x_q
    for w_hat in (mod.weight.detach() + 0.05 * torch.randn_like(mod.weight), mod.weight.detach()):
        want = _direct(mod, x_t, x_q, w_hat.double())
        assert obj.value(w_hat) == pytest.approx(want, rel=1e-9, abs=1e-15)
    # same inputs: base 0, no linear term, the loss of the float weight is exactly 0
    same = LayerObjective.from_inputs(mod, x, x, target)
    assert same.g0 is None and same.value(mod.weight) == 0.0


def test_float_target_weight_minimizes_the_continuous_loss_and_helps_gptq():
    torch.manual_seed(0)
    lin = nn.Linear(24, 8)
    x = _correlated(200, 24).float()
    x_q = x + 0.2 * torch.randn_like(x) + 0.1  # the quantized network's inputs: noisy and shifted
    obj = LayerObjective.from_inputs(lin, x, x_q, "float")
    w_star = obj.target_weight(percdamp=0.0)
    # least squares: zero gradient at W*, and no lower than the float weight
    assert float(obj.residual(w_star - obj.W).abs().max()) < 1e-8 * float(obj.residual(-obj.W).abs().max())
    assert obj.value(w_star) < obj.value(lin.weight)
    for bits in (3, 4):
        plain = gptq_layer(lin, obj.hessians, bits, 0.8)
        aware = gptq_layer(lin, obj.hessians, bits, 0.8, weight=obj.target_weight())
        assert obj.value(aware.decode()) < obj.value(plain.decode())
    local = LayerObjective.from_inputs(lin, x, x_q, "local")
    assert torch.equal(local.target_weight(), local.W)  # classic GPTQ: quantize W itself


@pytest.mark.parametrize("gran,gs", [("tensor", None), ("channel", None), ("group", 4)])
def test_level_table_is_the_contract_decode(gran, gs):
    torch.manual_seed(2)
    w = torch.randn(6, 8, dtype=torch.float64)
    w[1] = 0.0
    for bits, a in ((2, 0.6), (3, 1.0), (4, 1.7)):
        q = PowerQuantizer(bits, True, a, gran, gs)
        s = q.scales(w)
        rgg = q.blocks_shape(w.shape)
        m = w.reshape(rgg).abs().amax(2)
        assert torch.equal(codesearch.scales_for(m, a, q.qmax).reshape(s.shape), s)
        codes = torch.randint(-q.qmax, q.qmax + 1, w.shape)
        got = codesearch.gather(codesearch.levels(m, a, q.qmax), codes.reshape(rgg), rgg).reshape(w.shape)
        assert torch.equal(got, q.decode(codes, s))  # bit for bit


def _single_moves_lower(obj, codes, lv, rgg, M):
    """Best single-coordinate improvement over the whole code range (exhaustive)."""
    base = obj.value(codesearch.gather(lv, codes, rgg))
    best = 0.0
    flat = codes.reshape(-1)
    for i in range(flat.numel()):
        for c in range(-M, M + 1):
            t = flat.clone()
            t[i] = c
            best = min(best, obj.value(codesearch.gather(lv, t.reshape(codes.shape), rgg)) - base)
    return best


@pytest.mark.parametrize("gran,gs", [("channel", None), ("group", 3), ("tensor", None)])
def test_coordinate_descent_reaches_a_coordinate_optimum_over_the_whole_range(gran, gs):
    torch.manual_seed(3)
    lin = nn.Linear(6, 3)
    obj = LayerObjective.from_inputs(lin, _correlated(40, 6).float())
    q = PowerQuantizer(3, True, 0.8, gran, gs)
    rgg = q.blocks_shape(lin.weight.shape)
    m = lin.weight.detach().double().reshape(rgg).abs().amax(2)
    lv = codesearch.levels(m, 0.8, q.qmax)
    start = torch.zeros(rgg, dtype=torch.int64)  # far from the weights: codes must jump several levels
    codes, loss, moved = codesearch.coordinate_descent(obj, start, lv, rgg, sweeps=50)
    assert loss < obj.value(codesearch.gather(lv, start, rgg)) and moved > 0
    assert int((codes - start).abs().max()) >= 2
    assert loss == obj.value(codesearch.gather(lv, codes, rgg))
    assert _single_moves_lower(obj, codes, lv, rgg, q.qmax) >= -1e-12 * obj.norm  # no single move helps


def test_exponent_refinement_never_worsens():
    torch.manual_seed(4)
    lin = nn.Linear(12, 5)
    obj = LayerObjective.from_inputs(lin, _correlated(50, 12).float())
    q = PowerQuantizer(4, True, 0.7, "channel")
    rgg = q.blocks_shape(lin.weight.shape)
    w = lin.weight.detach().double()
    m = w.reshape(rgg).abs().amax(2)
    codes = q.encode(w).reshape(rgg)
    a, loss = codesearch.refine_exponent(obj, m, q.qmax, codes, rgg, 0.7, (0.1, 2.0))
    assert loss <= codesearch.hard_loss(obj, m, 0.7, q.qmax, codes, rgg) and abs(a - 0.7) <= 0.05 + 1e-12
    assert loss == codesearch.hard_loss(obj, m, a, q.qmax, codes, rgg)


@pytest.mark.parametrize("seed", [0, 1])
def test_nupes_from_gptq_power_is_never_worse_and_usually_strictly_better(seed):
    torch.manual_seed(seed)
    better = 0
    cases = [
        (nn.Linear(32, 12), _correlated(80, 32, seed).float(), None),
        (nn.Conv2d(3, 8, 3, padding=1), torch.randn(6, 3, 6, 6), None),
        (nn.Linear(32, 12), _correlated(80, 32, seed + 5).float(), 8),
    ]
    for mod, x, gs in cases:
        x_q = x + 0.05 * torch.randn_like(x)
        gran = "group" if gs else "channel"
        obj = LayerObjective.from_inputs(mod, x, x_q, "float")
        for bits in (3, 4):
            init = gptq_layer(mod, obj.hessians, bits, 0.8, gran, gs, weight=obj.target_weight())
            for cfg in (
                NupesConfig(steps=20),
                NupesConfig(steps=10, lr=3.0, lr_exponent=0.5, sweeps=0),
                NupesConfig(steps=0, sweeps=0),
            ):
                q, info = nupes_layer(mod, bits, gran, gs, init=init, objective=obj, config=cfg, seed=seed)
                assert info["loss_init"] == obj.value(init.decode())
                assert (
                    info["loss_final"] == obj.value(q.decode()) <= info["loss_init"]
                )  # exact, by construction
                assert info["kept_init"] == (not info["improved"])
                assert sum(info["moves"].values()) == mod.weight.numel()
                if cfg.steps == 0 and cfg.sweeps == 0:
                    assert info["kept_init"] and torch.equal(q.codes, init.codes)
                if cfg.steps == 20:
                    better += info["improved"]
                    assert q.method == "nupes" and torch.equal(
                        q.decode(), QuantizedWeight.from_codes(q.quantizer, q.codes, q.scales, "x").decode()
                    )
    assert better >= 5  # of 6 (layer, bits) cases


def test_move_histogram():
    a = torch.tensor([0, 1, -3, 3, 2], dtype=torch.int8)
    b = torch.tensor([0, 2, 3, 0, 0], dtype=torch.int8)
    assert move_histogram(a, b) == {"0": 1, "1": 1, "2": 1, "3+": 2}


# ---- baselines (fake quantization) -----------------------------------------------------------------
def test_nf4_codebook_is_qlora_nf4_and_asym_grid_uses_all_levels():
    from nupes_sim.reference.baselines import NF_CODEBOOK, AsymElement, CodebookElement, rtn_element

    nf4 = NF_CODEBOOK(4)
    qlora = [
        -1.0,
        -0.6961928,
        -0.5250731,
        -0.3949175,
        -0.2844414,
        -0.1847734,
        -0.0910500,
        0.0,
        0.0795803,
        0.1609302,
        0.2461123,
        0.3379152,
        0.4407098,
        0.5626170,
        0.7229568,
        1.0,
    ]
    assert nf4.numel() == 16 and torch.allclose(nf4, torch.tensor(qlora, dtype=torch.float64), atol=1e-6)
    assert NF_CODEBOOK(3).numel() == 8 and float(NF_CODEBOOK(3).max()) == 1.0
    W = torch.linspace(-1.0, 3.0, 32, dtype=torch.float64).reshape(2, 16)
    W[1] = 0.0
    fake = rtn_element(W, AsymElement(3))
    assert torch.unique(fake[0]).numel() == 8  # 2^b levels (min-max grid incl. 0) all used
    assert float((fake[0] - W[0]).abs().max()) <= (4.0 / 7) / 2 + 1e-12 and torch.equal(fake[1], W[1])
    cb = rtn_element(W, CodebookElement(nf4))
    assert float(cb[0].abs().max()) == float(W[0].abs().max()) and torch.equal(cb[1], W[1])


@pytest.mark.parametrize("method", ["nf", "gptq_nf", "gptq_asym", "kmeans", "gptq_kmeans"])
def test_fake_baselines_in_quantize_model(method):
    from nupes_sim.reference.api import quantize_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    X = _correlated(48, 16).float()
    for gran, gs in (("channel", None), ("group", 4)):
        q, rep = quantize_model(
            net, method, 3, calib=X, progress=False, target="float", granularity=gran, group_size=gs
        )
        exportable = method != "gptq_asym" or gran == "channel"  # test_gptq_asym/test_codebooks_ref
        for layer in rep["layers"]:
            has = hasattr(q.get_submodule(layer["name"]), "nupes_quant")
            assert (
                (not layer.get("fake_quant_only") and has)
                if exportable
                else (layer["fake_quant_only"] and not has)
            )
            # GPTQ onto k-means tables fitted to W (not refitted) need not beat nearest-centroid
            # on a tiny layer (K = 8 = 2^b: the tables are W itself); test_codebooks_ref checks
            # that it does on a real-sized one
            if method != "gptq_kmeans":
                assert layer["loss_after"] <= layer["loss_before"] + 1e-12
        levels = torch.unique(q[0].weight.detach(), dim=None)
        assert levels.numel() <= 8 * 8 * (4 if gran == "group" else 1)  # at most 2^b values per scale slice
    if method == "kmeans":  # per (channel, group of 4): at most 2^b centroids each
        w = q[0].weight.detach()
        assert all(
            torch.unique(w[r, j : j + 4]).numel() <= 8 for r in range(w.shape[0]) for j in range(0, 16, 4)
        )
