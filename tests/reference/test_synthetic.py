"""Synthetic calibration inputs from the model alone (synthetic.py): distilled images whose
batch-norm statistics match the stored ones, windows sampled from a generative LM, and clear
errors for what is not supported."""

import math

import pytest
import torch
from torch import nn

from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.fold import fold_batchnorm
from nupes_sim.reference.synthetic import (
    bn_distilled_images,
    bn_matching_loss,
    sampled_windows,
    synthetic_calibration,
)

from .toy import ToyNet

SHAPE = (1, 8, 8)


def _calibrated_toy(seed=0, c=4, n=256):
    """ToyNet whose running statistics are exactly those of a real batch (momentum None: one
    cumulative pass), with non-trivial BN affine parameters; returns (net, the batch, a
    generator of fresh batches from the same distribution)."""
    torch.manual_seed(seed)
    net = ToyNet(c=c, classes=5)

    def draw(k, s):
        g = torch.Generator().manual_seed(s)
        return torch.randn(k, *SHAPE, generator=g) * 0.8 + 0.2

    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    x = draw(n, 100)
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval(), x, draw


def test_distilled_batch_matches_the_batch_norm_statistics():
    """Start: N(0, 1) images, whose statistics differ from the real ones (mean 0.2, std 0.8).
    After optimization the matching loss must (a) drop by at least 1000x from its start (measured: 1.8e7x) and (b)
    be no larger than that of a FRESH real batch of the same size from the very distribution
    the running statistics came from: that batch's loss is pure sampling noise of n images,
    the best a batch of n real images can be expected to do, so a distilled batch above it
    has not matched the statistics."""
    net, _, draw = _calibrated_toy()
    n = 128
    x, info = bn_distilled_images(net, n=n, seed=0, steps=150, shape=SHAPE)
    with torch.no_grad():
        fresh = float(bn_matching_loss(net, draw(n, 5))[0])
        start = float(
            bn_matching_loss(net, torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(0)))[0]
        )
    assert info["loss_start"] == pytest.approx(start, rel=1e-6)
    assert info["loss_end"] <= info["loss_start"] / 1000
    assert info["loss_end"] <= fresh, (info, fresh)
    assert x.shape == (n, *SHAPE) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert not x.requires_grad


def test_distillation_is_deterministic_and_leaves_the_model_alone():
    net, _, _ = _calibrated_toy()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()  # the mode is restored afterwards
    a, _ = bn_distilled_images(net, n=16, seed=3, steps=5, shape=SHAPE)
    assert net.training
    b, _ = bn_distilled_images(net.eval(), n=16, seed=3, steps=5, shape=SHAPE)
    c, _ = bn_distilled_images(net, n=16, seed=4, steps=5, shape=SHAPE)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in net.parameters())


def test_nupes_on_distilled_images_beats_powerquant_on_real_data():
    """The data-driven pipeline on distilled images (no real data) must change codes relative
    to PowerQuant and give a smaller network-output error on the real batch the batch-norm
    statistics came from (W3, where PowerQuant's rounding error is large)."""
    net, x, _ = _calibrated_toy(c=8)
    folded = fold_batchnorm(net)
    synth = synthetic_calibration(net, 128, seed=0, steps=150, shape=SHAPE)
    pq, _ = quantize_model(folded, "powerquant", 3, progress=False)
    nu, _ = quantize_model(
        folded, "nupes", 3, calib=synth, nupes_init="gptq_power", target="float", progress=False
    )
    with torch.no_grad():
        ref = folded(x)
        err = {k: float(((m(x) - ref) ** 2).mean()) for k, m in (("pq", pq), ("nupes", nu))}
    assert err["nupes"] < err["pq"], err
    assert any(
        not torch.equal(nu.get_submodule(n).nupes_quant.codes, pq.get_submodule(n).nupes_quant.codes)
        for n, m in folded.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    )


class _FixedLM(nn.Module):
    """A stand-in generative LM: next-token logits are a fixed function of the last token."""

    def __init__(self, table, context=6):
        super().__init__()
        self.table, self.context, self.vocab = table, context, "abcdefgh"[: table.shape[0]]

    def forward(self, idx):
        return self.table[idx]


def test_sampled_windows_follow_the_model():
    V = 4
    # deterministic successor: logits 60 apart make any other token's probability < e^-60
    succ = torch.full((V, V), -30.0)
    for i in range(V):
        succ[i, (i + 1) % V] = 30.0
    w = sampled_windows(_FixedLM(succ), n=50, seed=1, burn_in=3)
    assert w.shape == (50, 6) and w.dtype == torch.long
    assert torch.equal(w[:, 1:], (w[:, :-1] + 1) % V)
    # fixed next-token law p = (1/8, 1/8, 1/4, 1/2) from every token (temperature 1): each
    # frequency over N = 400 * 5 sampled tokens is within 6 standard errors sqrt(p(1-p)/N)
    p = torch.tensor([0.125, 0.125, 0.25, 0.5])
    lm = _FixedLM(p.log().expand(V, V).clone())
    w = sampled_windows(lm, n=400, seed=2, burn_in=0)
    tok = w[:, 1:].reshape(-1)  # the first token is uniform, the rest follow p
    N = tok.numel()
    freq = torch.bincount(tok, minlength=V).double() / N
    assert ((freq - p.double()).abs() <= 6 * (p * (1 - p) / N).double().sqrt()).all(), freq
    # temperature 2 flattens p to p^(1/2) normalized
    w = sampled_windows(lm, n=400, seed=2, burn_in=0, temperature=2.0)
    q = p.sqrt() / p.sqrt().sum()
    freq = torch.bincount(w[:, 1:].reshape(-1), minlength=V).double() / N
    assert ((freq - q.double()).abs() <= 6 * (q * (1 - q) / N).double().sqrt()).all(), freq


def test_sampled_windows_of_a_char_transformer_are_deterministic():
    from nupes_sim.reference.models import CharTransformer

    torch.manual_seed(0)
    lm = CharTransformer("abcdefgh", d_model=16, n_heads=2, n_layers=1, context=8).eval()
    a = synthetic_calibration(lm, 12, seed=0)
    assert a.shape == (12, 8) and int(a.min()) >= 0 and int(a.max()) < 8
    assert torch.equal(a, synthetic_calibration(lm, 12, seed=0))
    assert not torch.equal(a, synthetic_calibration(lm, 12, seed=1))
    assert sampled_windows(lm, 3, seed=0, length=5).shape == (3, 5)


def test_bad_arguments_are_refused_clearly():
    net, _, _ = _calibrated_toy()
    with pytest.raises(ValueError, match="needs shape="):
        bn_distilled_images(net, n=4, steps=1)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        bn_distilled_images(net, n=0, shape=SHAPE)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        bn_distilled_images(net, n=2, steps=-1, shape=SHAPE)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        bn_distilled_images(net, n=2, lr=0, shape=SHAPE)
    with pytest.raises(ValueError, match="shape must be positive sizes"):
        bn_distilled_images(net, n=2, shape=(1, 0, 8))
    with pytest.raises(ValueError, match="has no BatchNorm"):
        bn_matching_loss(nn.Sequential(nn.Linear(3, 2)), torch.zeros(2, 3))
    lm = _FixedLM(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="length 7 exceeds the model's context 6"):
        sampled_windows(lm, 2, length=7)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        sampled_windows(lm, 2, temperature=0.0)
    with pytest.raises(ValueError, match="burn_in must be an int >= 0"):
        sampled_windows(lm, 2, burn_in=-1)
    with pytest.raises(ValueError, match="not a generative LM"):
        sampled_windows(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="no synthetic-input generator for Linear.*MiniLM"):
        synthetic_calibration(nn.Linear(2, 2), 2, 0)
    with torch.no_grad():  # a constant batch (zero variance) stays finite (eps)
        assert math.isfinite(float(bn_matching_loss(net, torch.zeros(2, *SHAPE))[0]))


def test_token_windows_calibrate_a_language_model_unchanged():
    """as_batches casts float calibration data to the model's dtype but never token ids: the
    char LM's data-driven rows (real or sampled windows) crashed in embedding before."""
    from nupes_sim.reference.calibrate import as_batches

    ids = torch.randint(0, 10, (5, 7))
    (b,) = as_batches(ids, 64, dtype=torch.float32)
    assert b.dtype == torch.int64 and torch.equal(b, ids)
    (f,) = as_batches(ids.double(), 64, dtype=torch.float32)
    assert f.dtype == torch.float32
