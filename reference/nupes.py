"""NUPES (Yvinec, Dapogny, Bailly): gradient-based power quantization of one layer.

Parameters per layer: a learnable exponent a (clamped to [0.1, 2.0]) and a real latent ε
in code space, one per weight. Codes are c = clip(dsq_β(ε), −M, M) with the differentiable
soft quantizer dsq_β(ε) = ⌊ε⌋ + 1/2 + tanh(β(ε−⌊ε⌋−1/2)) / (2·tanh(β/2)), β annealed
geometrically from β₀ (≈ identity) to β₁ (≈ rounding) over the steps.

Scale choice: the scale *follows* a, s(a) = m^a / M with m = max|w| over the scale's slice
(all-zero slices: m = 0, s = 1), so the largest code always decodes to the largest weight
magnitude. Then ŵ = sign(c)·(s(a)|c|)^(1/a) = sign(c)·m·(|c|/M)^(1/a), the form used for
optimisation: |c|/M ∈ [0, 1], so the power never overflows, and its a-gradient involves
log(|c|/M) only, evaluated as log(where(c ≠ 0, max(|c|/M, 1e-6), 1)) with the value masked
to 0 at c = 0 — both branches of every `where` are finite, so no NaN can reach autograd.
The exported scales are the contract's s = m^a/M for the final a, and the returned weight
is the exact contract decode (quantizer.py) of the hardened codes.

Loss: data-driven ‖f(X_fp, W) − f(X_q, ŵ)‖² / ‖f(X_fp, W)‖² (layer output, X_q the inputs
the quantized network feeds the layer) or data-free ‖(W − ŵ)·√λ‖² / ‖W·√λ‖² with optional
element weights λ. At the end ε is hardened (round, clip), the loss is recomputed in float64
with the exact decode, and the initialization is kept if it is not worse — so NUPES never
loses to its own init. Any non-finite loss, parameter or gradient raises FloatingPointError
naming the layer and the step.
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .powerquant import search_exponent
from .quantizer import PowerQuantizer, QuantizedWeight, check_finite_tensor

#: the learnable exponent is clamped to this range.
EXPONENT_BOUNDS = (0.1, 2.0)
_TINY = 1e-6  # smallest |c|/M used inside pow/log (a = 2: gradient ≤ 1/(2√1e-6) = 500)


@dataclass
class NupesConfig:
    """steps: Adam steps; lr: on ε (code units); lr_exponent: on a; beta: (start, end) of
    the geometric β schedule; grad_clip: max global gradient norm; learn_exponent: train a;
    dtype: optimisation dtype (the final comparison is float64); max_rows: cap on the
    calibration samples used (first ones), None = all."""

    steps: int = 50
    lr: float = None  # None: 0.05 data-driven, 0.01 data-free
    lr_exponent: float = 5e-3
    beta: tuple = (2.0, 50.0)
    grad_clip: float = 1.0
    learn_exponent: bool = True
    latent_init: str = None  # 'weights' (continuous |w|^a/s·sign) or 'codes'; None: weights if data-driven
    dtype: torch.dtype = torch.float32
    max_rows: int = None

    def check(self):
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"steps={self.steps!r} is not allowed; must be an integer >= 0")
        for k in ("lr", "lr_exponent", "grad_clip"):
            v = getattr(self, k)
            if k == "lr" and v is None:
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{k}={v!r} is not allowed; must be finite and > 0")
        b0, b1 = self.beta
        if not (0 < b0 <= b1 < 1e4):
            raise ValueError(f"beta={self.beta!r} is not allowed; need 0 < start <= end < 1e4")
        if self.latent_init not in (None, "weights", "codes"):
            raise ValueError(f"latent_init={self.latent_init!r} is not allowed; choose 'weights' or 'codes'")


def dsq(eps, beta):
    """Differentiable soft quantizer; → round(eps) as β → ∞, → eps as β → 0."""
    f = torch.floor(eps).detach()
    return f + 0.5 + torch.tanh(beta * (eps - f - 0.5)) / (2.0 * math.tanh(beta / 2.0))


def soft_decode(c, m, a, M):
    """ŵ = sign(c)·m·(|c|/M)^(1/a), guarded (see module docstring). c (R, G, g), m (R, G, 1)."""
    u = c.abs() / M
    pos = u > 0
    u_safe = torch.where(pos, u.clamp_min(_TINY), torch.ones_like(u))
    mag = torch.where(pos, torch.exp(torch.log(u_safe) / a), torch.zeros_like(u))
    return torch.sign(c) * m * mag


class _SoftPowerWeight(torch.autograd.Function):
    """Fused ŵ = soft_decode(clip(dsq_β(ε), −M, M), m, a) with a hand-written backward
    (same guards; about half the elementwise passes of autograd on the composition).

    ∂ŵ/∂ε = |ŵ|/(a·max(|c|, M·1e-6)) · β(1−t²)/(2 tanh(β/2)) · [−M < c < M], t = tanh(β(ε−⌊ε⌋−½));
    ∂ŵ/∂a = −ŵ·log(u_safe)/a², u_safe = 1 where c = 0 (so the log term is 0 there).
    """

    @staticmethod
    def forward(ctx, eps, a, m, beta, M):
        f = torch.floor(eps)
        t = torch.tanh((eps - f - 0.5) * beta)
        k = 1.0 / (2.0 * math.tanh(beta / 2.0))
        c = t * k + f + 0.5
        inside = (c > -M) & (c < M)
        c.clamp_(-M, M)
        ac = c.abs()
        pos = ac > 0
        lu = torch.where(pos, (ac / M).clamp_min_(_TINY), torch.ones_like(ac)).log_()
        mag = torch.where(pos, torch.exp(lu / a), torch.zeros_like(ac))
        w = mag.mul_(m).mul_(torch.sign(c))
        ctx.save_for_backward(t, inside, ac, w, lu, a)
        ctx.beta, ctx.k, ctx.M = beta, k, M
        return w

    @staticmethod
    def backward(ctx, g):
        t, inside, ac, w, lu, a = ctx.saved_tensors
        dc = (1.0 - t * t).mul_(ctx.beta * ctx.k).mul_(inside)
        g_eps = (g * w.abs()).div_(ac.clamp_min(ctx.M * _TINY)).div_(a).mul_(dc)
        g_a = -(g * w * lu).sum() / (a * a)
        return g_eps, g_a, None, None, None


def soft_power_weight(eps, a, m, beta, M):
    """ŵ(ε, a) = soft_decode(clip(dsq_β(ε), −M, M), m, a), fused (see _SoftPowerWeight)."""
    return _SoftPowerWeight.apply(eps, a, m, float(beta), int(M))


def layer_forward(module):
    """f(x, w) for the layer (bias included, as a float constant)."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w, None if module.bias is None else module.bias.to(w.dtype))
    if isinstance(module, nn.Conv2d):
        return lambda x, w: module._conv_forward(x, w, None if module.bias is None else module.bias.to(w.dtype))
    raise TypeError(f"NUPES supports nn.Linear and nn.Conv2d, got {type(module).__name__}")


def _check(name, what, step, t):
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"NUPES layer {name!r} step {step}: non-finite {what}")


def nupes_layer(module, bits=4, granularity="channel", group_size=None, init=None, exponent=None, x_fp=None,
                x_q=None, config=None, weight=None, loss_fn=None, name="layer", seed=0):
    """Optimise one nn.Linear / nn.Conv2d with NUPES. Returns (QuantizedWeight, info).

    init: a QuantizedWeight to start from (power RTN / GPTQ codes), else power RTN at
    `exponent` (or the PowerQuant per-layer optimum). x_fp / x_q: calibration inputs of the
    layer in the float / quantized network (x_q defaults to x_fp); both None: data-free.
    weight: optional element weights λ ≥ 0 of the data-free loss. loss_fn(w_hat) -> scalar
    overrides the loss. info: exponent_init/final, loss_init, loss_hard, loss_final,
    kept_init, seconds, loss_kind.
    """
    t0 = time.perf_counter()
    config = config or NupesConfig()
    config.check()
    torch.manual_seed(seed)
    w = module.weight.detach().to(torch.float64)
    check_finite_tensor(f"layer {name!r}: weight", w)
    shape = w.shape
    if init is None:
        a0 = exponent if exponent is not None else search_exponent(w, bits, granularity, group_size,
                                                                   bounds=EXPONENT_BOUNDS).exponent
        q0 = PowerQuantizer(bits, True, a0, granularity, group_size)
        s0 = q0.scales(w, f"layer {name!r}: weight")
        init = QuantizedWeight.from_codes(q0, q0.encode(w, s0), s0, "powerquant")
    a0 = min(max(float(init.exponent), EXPONENT_BOUNDS[0]), EXPONENT_BOUNDS[1])
    spec = PowerQuantizer(bits, True, a0, granularity, group_size)
    R, G, g = spec.blocks_shape(shape)
    M = spec.qmax
    m64 = w.reshape(R, G, g).abs().amax(2, keepdim=True)

    if x_fp is not None:
        x_fp = x_fp.detach()
        x_q = x_fp if x_q is None else x_q.detach()
        if config.max_rows is not None:
            x_fp, x_q = x_fp[:config.max_rows], x_q[:config.max_rows]
        check_finite_tensor(f"layer {name!r}: calibration input (float network)", x_fp)
        check_finite_tensor(f"layer {name!r}: calibration input (quantized network)", x_q)
        if x_fp.shape != x_q.shape:
            raise ValueError(f"layer {name!r}: x_fp shape {tuple(x_fp.shape)} != x_q shape {tuple(x_q.shape)}")
    fwd = layer_forward(module)

    def make_loss(dtype):
        if loss_fn is not None:
            return loss_fn
        if x_fp is not None:
            xq = x_q.to(dtype)
            with torch.no_grad():
                y = fwd(x_fp.to(dtype), w.to(dtype))
                norm = float((y.double() ** 2).mean()) or 1.0
            return lambda wh: ((fwd(xq, wh) - y) ** 2).mean() / norm
        lam = torch.ones_like(w) if weight is None else torch.as_tensor(weight, dtype=torch.float64).expand(shape)
        check_finite_tensor(f"layer {name!r}: loss weights", lam)
        wd, ld = w.to(dtype), lam.to(dtype)
        norm = float((w ** 2 * lam).mean()) or 1.0
        return lambda wh: ((wh - wd) ** 2 * ld).mean() / norm

    # ---- optimisation (config.dtype) ---------------------------------------------------
    dt = config.dtype
    data_driven = x_fp is not None or loss_fn is not None
    latent_init = config.latent_init or ("weights" if data_driven else "codes")
    lr = config.lr if config.lr is not None else (0.05 if data_driven else 0.01)
    if latent_init == "weights":
        x = w.reshape(R, G, g)
        eps0 = torch.sign(x) * M * torch.where(m64 > 0, x.abs() / torch.where(m64 > 0, m64, 1.0), 0.0) ** a0
    else:
        eps0 = init.codes.to(torch.float64).reshape(R, G, g)
    eps = nn.Parameter(eps0.clamp(-M, M).to(dt))
    a = nn.Parameter(torch.tensor(a0, dtype=dt))
    m = m64.to(dt)
    params = [{"params": [eps], "lr": lr}]
    if config.learn_exponent:
        params.append({"params": [a], "lr": config.lr_exponent})
    try:
        opt = torch.optim.Adam(params, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(params)
    loss = make_loss(dt)
    b0, b1 = config.beta
    for step in range(config.steps):
        beta = b0 * (b1 / b0) ** (step / max(config.steps - 1, 1))
        l = loss(soft_power_weight(eps, a, m, beta, M).reshape(shape))
        _check(name, f"loss ({l.detach().item()})", step, l.detach())
        opt.zero_grad(set_to_none=False)
        l.backward()
        # the total norm is non-finite iff some gradient entry is: one reduction checks all
        gnorm = torch.nn.utils.clip_grad_norm_([eps, a], config.grad_clip)
        _check(name, "gradient (of ε or of the exponent)", step, gnorm)
        opt.step()
        with torch.no_grad():
            eps.clamp_(-M, M)  # clamp_ keeps NaN: checked after the loop (and by the next loss)
            a.clamp_(*EXPONENT_BOUNDS)
        _check(name, "exponent", step, a.detach())
    _check(name, "latent ε", config.steps, eps.detach())

    # ---- harden, compare with the init in float64 ----------------------------------------
    a1 = float(a.detach())
    qh = spec.with_exponent(a1)
    sh = qh.scales(w)
    codes = torch.clamp(torch.round(eps.detach().double()), -M, M).reshape(shape)
    hard = QuantizedWeight.from_codes(qh, codes, sh, "nupes")
    loss64 = make_loss(torch.float64)
    with torch.no_grad():
        l_init = float(loss64(init.decode()))
        l_hard = float(loss64(hard.decode()))
    for what, v in (("initial loss", l_init), ("hardened loss", l_hard)):
        if not math.isfinite(v):
            raise FloatingPointError(f"NUPES layer {name!r} step {config.steps}: non-finite {what} ({v})")
    kept = l_hard > l_init
    out = init if kept else hard
    out = QuantizedWeight(out.codes, out.scales, out.exponent, out.bits, out.granularity, out.group_size,
                          "nupes", out.signed)
    info = dict(exponent_init=float(init.exponent), exponent_final=out.exponent, loss_init=l_init,
                loss_hard=l_hard, loss_final=min(l_init, l_hard), kept_init=kept,
                loss_kind="custom" if loss_fn else ("output_rel_mse" if x_fp is not None else "weight_rel_mse"),
                seconds=time.perf_counter() - t0)
    return out, info
