"""Data-free NUPES from batch-norm statistics (datafree.py): closed-form rectified-Gaussian
moments against Monte Carlo, the Hessians they build, codes that change, and a real-data
loss no worse than PowerQuant's."""

import math

import pytest
import torch
from torch import nn

from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.datafree import (
    batchnorm_stats,
    bn_input_hessians,
    gaussian_expectation,
    input_moments,
    layernorm_input_hessians,
    rectified_gaussian_moments,
)
from nupes_sim.reference.fold import fold_batchnorm

from .toy import ToyNet


@pytest.mark.parametrize(
    "mu, sigma", [(0.0, 1.0), (1.0, 0.5), (-2.0, 1.0), (3.0, 0.1), (-4.0, 1.5), (0.3, 7.0)]
)
def test_rectified_moments_match_monte_carlo(mu, sigma):
    """The Monte-Carlo mean of n samples of r (or r²) has standard error sd/√n; 6 standard
    errors (sd estimated from the same samples) bound a correct formula's miss with
    probability > 1 − 2e-9 per check, while a wrong formula (say φ and Φ swapped, or the
    μσφ term dropped) misses by far more at these (μ, σ)."""
    n = 400_000
    z = mu + sigma * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    r = z.clamp_min(0)
    m1, m2 = rectified_gaussian_moments(torch.tensor([mu]), torch.tensor([sigma]))
    for est, closed, samples in ((r.mean(), m1, r), ((r * r).mean(), m2, r * r)):
        se = float(samples.std()) / math.sqrt(n)
        assert abs(float(closed) - float(est)) <= 6 * se + 1e-15


def test_rectified_moments_boundaries():
    m1, m2 = rectified_gaussian_moments(torch.tensor([2.0, -1.0, 0.0]), torch.zeros(3))
    assert m1.tolist() == [2.0, 0.0, 0.0] and m2.tolist() == [4.0, 0.0, 0.0]  # sigma = 0: max(mu, 0)
    m1, m2 = rectified_gaussian_moments(torch.tensor([0.0]), torch.tensor([1.0]))
    assert float(m1) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-14)  # half-normal mean
    assert float(m2) == pytest.approx(0.5, rel=1e-14)
    m1, m2 = rectified_gaussian_moments(torch.tensor([40.0, -40.0]), torch.tensor([1.0, 1.0]))
    assert m1.tolist() == pytest.approx([40.0, 0.0], abs=1e-12) and float(m2[0]) == pytest.approx(1601.0)


def _calibrated_toy(seed=0, c=8):
    """ToyNet whose batch-norm running statistics are those of the data it is tested on, so
    N(β, γ²) describes the real batch-norm outputs up to their non-Gaussian shape."""
    torch.manual_seed(seed)
    net = ToyNet(c=c, classes=5)
    x = torch.randn(256, 1, 8, 8) * 0.8 + 0.2
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the pass
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval(), x


def test_hessian_of_a_layer_after_bn_relu_is_the_closed_form():
    net, _ = _calibrated_toy()
    stats = batchnorm_stats(net)
    assert set(stats) == {"stem", "blk.c1", "blk.c2"}
    H = bn_input_hessians(net)
    beta, gamma = stats["stem"]
    m1, m2 = rectified_gaussian_moments(beta, gamma)
    m = m1.repeat_interleave(9)
    v = (m2 - m1 * m1).repeat_interleave(9)
    (h,) = H["blk.c1"]  # blk.c1's input: ReLU(BN(stem)) unfolded 3x3, channel-major
    assert torch.allclose(h, torch.outer(m, m) + torch.diag(v), rtol=1e-12, atol=0)
    # H is a second-moment matrix: symmetric positive semi-definite
    for hs in H.values():
        for h in hs:
            assert torch.equal(h, h.T) and float(torch.linalg.eigvalsh(h).min()) >= -1e-9 * float(
                h.diag().max()
            )
    # the first layer knows nothing about its input: N(0, 1), so H = I
    assert torch.equal(H["stem"][0], torch.eye(9, dtype=torch.float64))
    # a ReLU6 is refused by name rather than modelled wrongly
    with pytest.raises(ValueError, match="ReLU6"):
        input_moments(fold_batchnorm(nn.Sequential(nn.Linear(3, 3), nn.ReLU6(), nn.Linear(3, 2))))


@pytest.mark.parametrize("wbits", [3, 4])
def test_datafree_nupes_changes_codes_and_is_no_worse_on_real_data(wbits):
    net, x = _calibrated_toy()
    folded = fold_batchnorm(net)
    H = bn_input_hessians(net)
    pq, _ = quantize_model(folded, "powerquant", wbits, progress=False)
    nw, _ = quantize_model(folded, "nupes", wbits, nupes_init="powerquant", progress=False)
    nb, rep = quantize_model(
        folded, "nupes", wbits, nupes_init="powerquant", input_hessians=H, progress=False
    )
    assert {r["loss_kind"] for r in rep["layers"]} == {"datafree_rel_mse"}
    names = [r["name"] for r in rep["layers"]]

    def codes(q):
        return {n: q.get_submodule(n).nupes_quant.codes for n in names}

    cb, cw = codes(nb), codes(nw)
    # the BN-statistics objective moves codes that the weight-error objective does not
    assert any(not torch.equal(cb[n], cw[n]) for n in names)
    # on the real data the BN statistics came from: network output error no worse than PowerQuant's
    with torch.no_grad():
        y = folded(x)

        def err(q):
            return float(((q(x) - y) ** 2).sum() / (y**2).sum())

        e_pq, e_nb = err(pq), err(nb)
    assert e_nb <= e_pq, (e_nb, e_pq)


def test_quantize_to_graph_data_free_nupes_uses_the_batch_norms():
    from nupes_sim.reference.pipeline import quantize_to_graph

    net, x = _calibrated_toy()
    ex, rep = quantize_to_graph(net, calib=None, export_calib=x[:16], method="nupes", wbits=3, progress=False)
    assert {r["loss_kind"] for r in rep["layers"]} == {"datafree_rel_mse"}
    assert ex.fake_quant(x[:4]).shape == (4, 5)


@pytest.mark.parametrize("mu, var", [(0.0, 1.0), (-1.5, 0.3), (2.0, 4.0), (0.2, 1e-6)])
def test_gelu_moments_match_monte_carlo(mu, var):
    """Same 6-standard-error bound as for the rectified moments (see above)."""
    n = 400_000
    z = mu + math.sqrt(var) * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g = torch.nn.functional.gelu(z)
    m1 = gaussian_expectation(torch.nn.functional.gelu, torch.tensor([mu]), torch.tensor([var]))
    m2 = gaussian_expectation(
        lambda t: torch.nn.functional.gelu(t) ** 2, torch.tensor([mu]), torch.tensor([var])
    )
    for est, closed, samples in ((g.mean(), m1, g), ((g * g).mean(), m2, g * g)):
        se = float(samples.std()) / math.sqrt(n)
        assert abs(float(closed) - float(est)) <= 6 * se + 1e-12


def test_layernorm_hessians_of_a_char_transformer_and_codes_change():
    from nupes_sim.reference.models import CharTransformer

    torch.manual_seed(0)
    lm = CharTransformer("abcdefgh", d_model=16, n_heads=2, n_layers=1, context=8).eval()
    for m in lm.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        if isinstance(m, nn.Linear):
            m.bias.data.normal_(0, 0.1)
    H = layernorm_input_hessians(lm)
    assert set(H) == {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1", "blocks.0.fc2", "head"}
    b, g = lm.blocks[0].ln1.bias.detach().double(), lm.blocks[0].ln1.weight.detach().double()
    assert torch.allclose(
        H["blocks.0.attn.qkv"][0], torch.outer(b, b) + torch.diag(g * g), rtol=1e-12, atol=0
    )
    assert H["blocks.0.fc2"][0].shape == (64, 64)
    nw, _ = quantize_model(lm, "nupes", 3, nupes_init="powerquant", progress=False)
    nl, rep = quantize_model(lm, "nupes", 3, nupes_init="powerquant", input_hessians=H, progress=False)
    assert {r["loss_kind"] for r in rep["layers"]} == {"datafree_rel_mse"}
    assert any(
        not torch.equal(nl.get_submodule(n).nupes_quant.codes, nw.get_submodule(n).nupes_quant.codes)
        for n in H
    )
    with pytest.raises(ValueError, match="not a pre-LN CharTransformer"):
        layernorm_input_hessians(nn.Linear(2, 2))
