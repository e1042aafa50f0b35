"""Data-free layer objectives from batch-norm statistics (no calibration data, real or synthetic).

A trained batch norm says what its output looks like: channel c is normalized, then scaled
and shifted, so its output is modelled as z_c ~ N(β_c, γ_c²). Through a ReLU,
r = max(z, 0) is a rectified Gaussian with closed-form moments (t = μ/σ, φ/Φ the standard
normal pdf/cdf):

    E[r]  = μ Φ(t) + σ φ(t)
    E[r²] = (μ² + σ²) Φ(t) + μ σ φ(t)

These per-channel moments are propagated through the folded network's op list (the
exporter's, export._trace_ops, ReLUs fused) under one stated assumption: channels and
kernel positions are independent. Rules (m: mean, v: variance, per channel):

- conv/linear followed by a batch norm (folded into it): the pre-activation is N(β, γ²);
- conv/linear without one: m' = Σ W·m + b, v' = Σ W²·v (independent inputs);
- residual add: m' = m_a + m_b, v' = v_a + v_b;
- a fused ReLU: the pre-activation is moment-matched to N(m', v') and rectified (closed form);
- max/average pools and flatten keep (m, v) per channel (values in a window are treated as
  fully correlated, which keeps the per-image variance that averaging over independent
  positions would shrink away);
- the network input: N(0, 1) per channel (nothing is known about it).

The unfolded input row of a layer (gptq.input_rows order: channel-major, kernel positions
inside) then has E[x xᵀ] = m mᵀ + diag(v), with m, v repeated over a channel's kernel
positions; `bn_input_hessians` returns that matrix per conv group, the Hessian of the
data-free layer objective LayerObjective(W, [H]) (relative output error under the modelled
input distribution). With H = I (the old data-free objective) the nearest code is optimal;
the m mᵀ term couples the weights of an output channel (their rounding errors, weighted by the
input means, shift the output mean), so the optimizer moves codes.
"""

import math

import torch
from torch import nn

from .export import _trace_ops
from .fold import fold_batchnorm

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def rectified_gaussian_moments(mu, sigma):
    """(E[r], E[r²]) of r = max(z, 0), z ~ N(mu, sigma²), elementwise (float64 tensors).
    sigma = 0 gives the deterministic max(mu, 0)."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64).abs()
    pos = sigma > 0
    s = torch.where(pos, sigma, torch.ones_like(sigma))
    t = mu / s
    cdf = 0.5 * (1.0 + torch.erf(t / _SQRT2))
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * t * t)
    m1 = mu * cdf + s * pdf
    m2 = (mu * mu + s * s) * cdf + mu * s * pdf
    r = mu.clamp_min(0)
    return torch.where(pos, m1, r), torch.where(pos, m2, r * r)


def _rectify(m, v):
    m1, m2 = rectified_gaussian_moments(m, v.clamp_min(0).sqrt())
    return m1, (m2 - m1 * m1).clamp_min(0)


def batchnorm_stats(model):
    """{conv/linear name: (β, |γ|)} for every conv/linear followed by a batch norm that
    fold_batchnorm folds into it (names as in the folded model)."""
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            src = node.args[0]
            if isinstance(src, fx.Node) and src.op == "call_module":
                n = mod.num_features
                beta = (
                    mod.bias.detach().double()
                    if mod.bias is not None
                    else torch.zeros(n, dtype=torch.float64)
                )
                gamma = (
                    mod.weight.detach().double().abs()
                    if mod.weight is not None
                    else torch.ones(n, dtype=torch.float64)
                )
                out[src.target] = (beta, gamma)
    return out


def _unfolded(module, m, v):
    """Per-group (mean, var) vectors of the unfolded input row of `module` from per-channel
    moments (m, v) of its input."""
    if isinstance(module, nn.Linear):
        K, C = module.in_features, m.numel()
        if K % C:
            raise ValueError(f"datafree: linear with {K} inputs after a tensor of {C} channels")
        r = K // C  # flatten of a (C, h, w) tensor: channel-major
        return [(m.repeat_interleave(r), v.repeat_interleave(r))]
    kk = module.kernel_size[0] * module.kernel_size[1]
    G, cg = module.groups, module.in_channels // module.groups
    return [
        (m[g * cg : (g + 1) * cg].repeat_interleave(kk), v[g * cg : (g + 1) * cg].repeat_interleave(kk))
        for g in range(G)
    ]


def input_moments(model, stats=None, in_channels=None):
    """{layer name: [(mean, var) of its unfolded input row, one per conv group]} for every
    conv/linear of the folded `model` (see the module docstring). stats: batchnorm_stats of
    the model before folding ({}: no batch-norm information anywhere)."""
    stats = stats or {}
    ops, inp = _trace_ops(model)
    first = next(op.module for op in ops if op.kind == "mac")
    c0 = in_channels or (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features)
    mom = {inp: (torch.zeros(c0, dtype=torch.float64), torch.ones(c0, dtype=torch.float64))}
    out = {}
    for op in ops:
        ms = [mom[i] for i in op.inputs]
        if op.kind == "mac":
            mod = op.module
            parts = _unfolded(mod, *ms[0])
            out[op.name] = parts
            if op.name in stats:
                m, s = stats[op.name]
                v = s * s
            else:
                W = mod.weight.detach().double().reshape(mod.weight.shape[0], -1)
                O = W.shape[0] // len(parts)
                m = torch.cat([W[g * O : (g + 1) * O] @ pm for g, (pm, _) in enumerate(parts)])
                v = torch.cat([(W[g * O : (g + 1) * O] ** 2) @ pv for g, (_, pv) in enumerate(parts)])
                if mod.bias is not None:
                    m = m + mod.bias.detach().double()
        elif op.kind == "add":
            m, v = ms[0][0] + ms[1][0], ms[0][1] + ms[1][1]
        else:  # pools, flatten: per-channel moments kept
            m, v = ms[0]
        if op.relu:
            if op.clip_max is not None:
                raise ValueError(f"datafree: ReLU6 after {op.name!r} is not modelled")
            m, v = _rectify(m, v)
        mom[op.out] = (m, v)
    return out


def bn_input_hessians(model, in_channels=None):
    """{layer name: [H per conv group]} for the folded copy of `model` (its layer names are the
    folded model's): H = E[x xᵀ] = m mᵀ + diag(v) of the unfolded input row, from the batch
    norms of `model` (a model without batch norms gets the propagated N(0, 1) input model)."""
    stats = batchnorm_stats(model)
    folded = fold_batchnorm(model)
    return {
        n: [torch.outer(m, m) + torch.diag(v) for m, v in parts]
        for n, parts in input_moments(folded, stats, in_channels).items()
    }


# ---- transformers: LayerNorm statistics ---------------------------------------------------
#: Gauss–Hermite nodes/weights (probabilists') for expectations under N(0, 1)
_GH_DEGREE = 64


def gaussian_expectation(fn, mu, var):
    """E[fn(z)], z ~ N(mu, var) elementwise, by Gauss–Hermite quadrature of degree 64 (exact
    for polynomials of degree <= 127; for the smooth GELU and its square the error is below
    the Monte-Carlo tolerance the tests check, and far below the modelling error)."""
    import numpy as np

    x, w = np.polynomial.hermite_e.hermegauss(_GH_DEGREE)
    x = torch.as_tensor(x, dtype=torch.float64)
    w = torch.as_tensor(w / w.sum(), dtype=torch.float64)
    z = mu[..., None] + var.clamp_min(0).sqrt()[..., None] * x
    return (fn(z) * w).sum(-1)


def _gelu_moments(m, v):
    g = torch.nn.functional.gelu
    m1 = gaussian_expectation(g, m, v)
    m2 = gaussian_expectation(lambda z: g(z) ** 2, m, v)
    return m1, (m2 - m1 * m1).clamp_min(0)


def _ln_out(ln):
    n = ln.normalized_shape[0]
    beta = ln.bias.detach().double() if ln.bias is not None else torch.zeros(n, dtype=torch.float64)
    gamma = ln.weight.detach().double() if ln.weight is not None else torch.ones(n, dtype=torch.float64)
    return beta, gamma * gamma


def _affine(lin, m, v, rows=None):
    W = lin.weight.detach().double()
    b = lin.bias.detach().double() if lin.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
    if rows is not None:
        W, b = W[rows], b[rows]
    return W @ m + b, (W * W) @ v


def layernorm_input_hessians(model):
    """{linear name: [H]} of a pre-LN CharTransformer (models.py) from its LayerNorms and
    weights, no data: a LayerNorm's output feature j is modelled as N(β_j, γ_j²), features
    independent (the normalized input has zero mean and unit variance per token). qkv, fc1 and
    head read a LayerNorm output; proj reads attention-averaged values, modelled as the value
    projection of ln1's output (an average of fully correlated positions keeps its moments);
    fc2 reads GELU(fc1(ln2(x))) with fc1's output moment-matched to a Gaussian and GELU's
    moments by Gauss–Hermite quadrature. H = m mᵀ + diag(v) as in bn_input_hessians."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "ln_f") or not hasattr(model, "head"):
        raise ValueError(
            f"layernorm_input_hessians: {type(model).__name__} is not a pre-LN CharTransformer "
            "(blocks with ln1/attn.qkv/attn.proj/ln2/fc1/fc2, then ln_f and head)"
        )
    mom = {}
    for i, blk in enumerate(blocks):
        p = f"blocks.{i}."
        m1, v1 = _ln_out(blk.ln1)
        mom[p + "attn.qkv"] = (m1, v1)
        c = m1.numel()
        mom[p + "attn.proj"] = _affine(blk.attn.qkv, m1, v1, slice(2 * c, 3 * c))
        m2, v2 = _ln_out(blk.ln2)
        mom[p + "fc1"] = (m2, v2)
        mom[p + "fc2"] = _gelu_moments(*_affine(blk.fc1, m2, v2))
    mom["head"] = _ln_out(model.ln_f)
    return {n: [torch.outer(m, m) + torch.diag(v)] for n, (m, v) in mom.items()}
