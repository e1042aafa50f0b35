"""Synthetic calibration inputs made from the model alone (no real data): data-free NUPES
that runs the data-driven pipeline on them.

- CNNs with batch norms: *distilled images* (ZeroQ, Cai et al. 2020; DFQ-style BN matching).
  Start from N(0, 1) images of the input shape and optimize them with Adam so that, at the
  input of every BatchNorm, the batch's per-channel mean and standard deviation match the
  stored running_mean and sqrt(running_var):

      loss = Σ_bn mean_c [(μ_c(x) − running_mean_c)² + (σ_c(x) − sqrt(running_var_c))²]

  (σ_c the biased batch std over the batch and spatial positions). Assumptions: the model
  is in eval mode and its running statistics describe its training inputs; the input is
  normalized (N(0, 1) is a sensible start: Fashion's inputs are mean/std normalized). Only the
  images are optimized; the model's parameters and buffers are untouched.
- Generative LMs (models.CharTransformer): windows *sampled from the float model itself*,
  autoregressively at temperature 1 from a seeded generator. The first character of each
  sequence is drawn uniformly from the vocabulary and `burn_in` further characters are
  generated and dropped, so the kept window starts inside the model's own text distribution.
- Encoders without a generative head (MiniLM): not done (no generator here; `synthetic_calibration`
  says so).

Everything is deterministic for a given seed (torch.Generator seeded by it; single thread
gives bit-identical results, more threads may change reduction order).
"""

import torch
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _int(name, v, lo=None):
    """v if it is an int (not a bool) and >= lo; else a ValueError naming the field."""
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        what = "an int" if lo is None else ("a positive int" if lo == 1 else f"an int >= {lo}")
        raise ValueError(f"synthetic: {name} must be {what}, got {v!r}")
    return v


def _positive_number(name, v):
    if not (isinstance(v, (int, float)) and v > 0):
        raise ValueError(f"synthetic: {name} must be a positive number, got {v!r}")
    return v


def _batchnorms(model):
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BN)]
    for n, m in bns:
        if m.running_mean is None or m.running_var is None:
            raise ValueError(
                f"synthetic: batch norm {n!r} has no running statistics (track_running_stats=False)"
            )
    return bns


def _input_shape(model):
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d):
        return None  # spatial size is not in the module: the caller must give it
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise ValueError("synthetic: the model has no Conv2d/Linear layer to infer the input shape from")


def bn_matching_loss(model, x, bns=None):
    """(loss, per-BN list of losses) of images x under `model` (eval mode): see the module
    docstring. Differentiable in x. bns: the model's (name, BatchNorm) list, found once by the
    caller that evaluates the loss many times (default: found here)."""
    bns = _batchnorms(model) if bns is None else bns
    if not bns:
        raise ValueError(f"synthetic: {type(model).__name__} has no BatchNorm1d/2d layers to match")
    acts = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: acts.__setitem__(n, inp[0])) for n, m in bns]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    parts = []
    for n, m in bns:
        a = acts[n]
        dims = [0] + list(range(2, a.dim()))
        mu = a.mean(dims)
        sd = (a.var(dims, unbiased=False) + m.eps).sqrt()
        target_sd = (m.running_var + m.eps).sqrt()
        parts.append(((mu - m.running_mean) ** 2).mean() + ((sd - target_sd) ** 2).mean())
    return sum(parts), parts


def bn_distilled_images(model, n=256, seed=0, steps=200, lr=0.2, shape=None):
    """(images float32 (n, *shape), info) distilled from the batch norms of `model` (see the
    module docstring). shape: one input's shape without the batch dimension, e.g. (1, 28, 28)
    (needed for conv models; a linear-first model's is (in_features,)). info: dict with
    loss_start, loss_end (the matching loss of the whole batch before/after) and steps."""
    _int("n", n, 1)
    _int("steps", steps, 1)
    _int("seed", seed)
    _positive_number("lr", lr)
    if shape is None:
        shape = _input_shape(model)
        if shape is None:
            raise ValueError("synthetic: a conv model needs shape= (one input's shape, e.g. (1, 28, 28))")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"synthetic: shape must be positive sizes, got {shape!r}")
    bns = _batchnorms(model)
    if not bns:
        raise ValueError(f"synthetic: {type(model).__name__} has no BatchNorm1d/2d layers to match")
    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((n, *shape), generator=g).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        with torch.no_grad():
            loss_start = float(bn_matching_loss(model, x, bns)[0])
        for _ in range(steps):
            opt.zero_grad()
            loss, _ = bn_matching_loss(model, x, bns)
            loss.backward()
            opt.step()
        with torch.no_grad():
            loss_end = float(bn_matching_loss(model, x, bns)[0])
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    return x.detach(), dict(loss_start=loss_start, loss_end=loss_end, steps=steps)


@torch.no_grad()
def sampled_windows(model, n=128, seed=0, length=None, burn_in=32, temperature=1.0):
    """(n, length) int64 windows sampled from a generative LM `model` (forward(idx) -> logits
    (B, T, vocab), attribute `context`), see the module docstring. length defaults to the
    model's context."""
    _int("n", n, 1)
    ctx = getattr(model, "context", None)
    vocab = getattr(model, "vocab", None)
    if ctx is None or vocab is None:
        raise ValueError(
            f"synthetic: {type(model).__name__} is not a generative LM (needs .context and .vocab)"
        )
    length = ctx if length is None else _int("length", length, 1)
    if length > ctx:
        raise ValueError(f"synthetic: length {length} exceeds the model's context {ctx}")
    _int("burn_in", burn_in, 0)
    _positive_number("temperature", temperature)
    _int("seed", seed)
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(vocab), (n, 1), generator=g)
        for _ in range(length + burn_in - 1):
            logits = model(idx[:, -ctx:])[:, -1].double() / temperature
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=g)
            idx = torch.cat([idx, nxt], dim=1)
    finally:
        model.train(was_training)
    return idx[:, -length:]


def synthetic_calibration(model, n, seed, **kw):
    """Synthetic calibration inputs for `model`, from the model alone: distilled images for a
    model with batch norms (bn_distilled_images; kw: shape, steps, lr), sampled windows for a
    generative LM with .context/.vocab (sampled_windows; kw: length, burn_in, temperature).
    Anything else is refused with a ValueError saying which kinds are supported."""
    if any(isinstance(m, _BN) for m in model.modules()):
        return bn_distilled_images(model, n=n, seed=seed, **kw)[0]
    if hasattr(model, "context") and hasattr(model, "vocab"):
        return sampled_windows(model, n=n, seed=seed, **kw)
    raise ValueError(
        f"synthetic: no synthetic-input generator for {type(model).__name__}: supported are models "
        "with BatchNorm layers (distilled images; pass the model before fold_batchnorm) and "
        "generative LMs with .context and .vocab (sampled windows); post-LN encoders (MiniLM) are not done"
    )
