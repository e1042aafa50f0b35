"""NUPES (Yvinec, Dapogny, Bailly): gradient-based power quantization of one layer.

Objective: the layer objective of `objective.py` (the same quadratic form GPTQ minimizes,
float or local target; data-free: weight error or a synthetic-input Hessian), so a NUPES
result and its start are compared on exactly one function.

Start: a QuantizedWeight `init` (data-driven: GPTQ on the power grid; data-free:
PowerQuant). Per slice the magnitude m = (s₀·M)^(1/a₀) that the largest code decodes to is
taken from the start's scales and kept; scales follow the exponent, s(a) = m^a/M, so at
(codes₀, a₀) NUPES is exactly its start.

Parameters: a learnable exponent a (clamped to [0.1, 2.0]) and a real latent ε in code
space, one per weight, initialized at the start's codes (dsq is exact at integers, so the
first soft loss is the start's hard loss). Codes are c = clip(dsq_β(ε), lo, M) (lo = −M, or
−(M+1) for a full-range format: the start's quantizer decides) with the
differentiable soft quantizer dsq_β(ε) = ⌊ε⌋ + 1/2 + tanh(β(ε−⌊ε⌋−1/2)) / (2·tanh(β/2)).

Schedule (one documented scheme, `NupesConfig`):
1. dsq phase: Adam on (ε, a) jointly for `steps` steps; β annealed geometrically from β₀
   (≈ identity: ε moves freely over the whole code range) to β₁ (≈ rounding), plus a
   rounding regularizer λ(t)·Σ h·sin²(πε) (h = H_jj·(m/M)²/norm: the cost of a one-level
   error in that weight, so λ is in loss units), λ(t) ramped from 0 to `reg` over the
   second half, which pulls every latent onto an integer so soft and hard agree. Every
   `harden_every` steps the hard point (round ε, a) is evaluated exactly and the best hard
   point seen is kept: the hardened result is what was optimized, never a fresh rounding.
2. code phase: exact coordinate descent over the whole code range on the hard codes
   (codesearch.py, `sweeps` sweeps), alternated `rounds` times with the exact per-slice
   magnitude refinement (the loss is quadratic in each slice's magnitude m with codes and
   exponent fixed: closed-form minimizer, kept where the contract decode's loss drops; the
   scales s = m^a/M are per channel/group, so this is executable as any start's scales),
   then a golden-section refinement of a with the codes fixed, then one more
   (magnitudes, sweep) round if a moved. Each round can only lower the exact loss.
3. the better of the start and the result is returned (≤ by construction); info says
   which, and how far codes moved (histogram of |code − start code|).

Guards: ŵ = sign(c)·m·(|c|/M)^(1/a) with |c|/M ∈ [0, |lo|/M]; the a-gradient involves log(|c|/M)
only, evaluated as log(where(c ≠ 0, max(|c|/M, 1e-6), 1)) with the value masked to 0 at
c = 0 — both branches of every `where` are finite, so no NaN can reach the gradient. Any
non-finite loss, parameter or gradient raises FloatingPointError naming the layer and step.
"""

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import codesearch
from .objective import LayerObjective
from .powerquant import search_exponent
from .quantizer import PowerQuantizer, QuantizedWeight, check_finite_tensor

#: the learnable exponent is clamped to this range.
EXPONENT_BOUNDS = (0.1, 2.0)
_TINY = 1e-6  # smallest |c|/M used inside pow/log (a = 2: gradient ≤ 1/(2√1e-6) = 500)


@dataclass
class NupesConfig:
    """steps: Adam steps of the dsq phase; lr: on ε (code units); lr_exponent: on a; beta:
    (start, end) of the geometric β schedule; reg: final weight of the rounding regularizer
    (loss units); harden_every: steps between exact hard evaluations; sweeps: coordinate
    descent sweeps of the code phase (0: none); rounds: alternations of exact per-slice
    magnitude (scale) refinement and `sweeps` descent sweeps (0: descent only, the scales
    stay the start's); refine_exponent: golden-section refinement of a in the code phase; grad_clip: max global gradient norm (None: off); learn_exponent:
    train a in the dsq phase; dtype: dsq-phase dtype (hard evaluations are float64);
    max_rows: cap on the calibration samples used (first ones), None = all."""

    steps: int = 15
    lr: float = 0.05
    lr_exponent: float = 2e-3
    beta: tuple = (1.0, 20.0)
    reg: float = 1.0
    harden_every: int = 5
    sweeps: int = 1
    rounds: int = 4
    refine_exponent: bool = True
    grad_clip: float = None
    learn_exponent: bool = True
    dtype: torch.dtype = torch.float32
    max_rows: int = None

    def check(self):
        for k in ("steps", "sweeps", "rounds"):
            v = getattr(self, k)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{k}={v!r} is not allowed; must be an integer >= 0")
        if not (isinstance(self.harden_every, int) and self.harden_every >= 1):
            raise ValueError(f"harden_every={self.harden_every!r} is not allowed; must be an integer >= 1")
        for k in ("lr", "lr_exponent", "grad_clip"):
            v = getattr(self, k)
            if k == "grad_clip" and v is None:
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{k}={v!r} is not allowed; must be finite and > 0")
        if not (isinstance(self.reg, (int, float)) and math.isfinite(self.reg) and self.reg >= 0):
            raise ValueError(f"reg={self.reg!r} is not allowed; must be finite and >= 0")
        b0, b1 = self.beta
        if not (0 < b0 <= b1 < 1e4):
            raise ValueError(f"beta={self.beta!r} is not allowed; need 0 < start <= end < 1e4")
        if self.max_rows is not None and not (isinstance(self.max_rows, int) and self.max_rows >= 1):
            raise ValueError(f"max_rows={self.max_rows!r} is not allowed; must be None or an integer >= 1")


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
    """Fused ŵ = soft_decode(clip(dsq_β(ε), lo, M), m, a) with a hand-written backward
    (same guards; about half the elementwise passes of autograd on the composition).

    ∂ŵ/∂ε = |ŵ|/(a·max(|c|, M·1e-6)) · β(1−t²)/(2 tanh(β/2)) · [lo < c < M], t = tanh(β(ε−⌊ε⌋−½));
    ∂ŵ/∂a = −ŵ·log(u_safe)/a², u_safe = 1 where c = 0 (so the log term is 0 there).
    """

    @staticmethod
    def forward(ctx, eps, a, m, beta, M, lo):
        f = torch.floor(eps)
        t = torch.tanh((eps - f - 0.5) * beta)
        k = 1.0 / (2.0 * math.tanh(beta / 2.0))
        c = t * k + f + 0.5
        inside = (c > lo) & (c < M)
        c.clamp_(lo, M)
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
        return g_eps, g_a, None, None, None, None


def soft_power_weight(eps, a, m, beta, M, lo=None):
    """ŵ(ε, a) = soft_decode(clip(dsq_β(ε), lo, M), m, a) (lo default −M), fused (see _SoftPowerWeight)."""
    return _SoftPowerWeight.apply(eps, a, m, float(beta), int(M), -int(M) if lo is None else int(lo))


def layer_forward(module):
    """f(x, w) for the layer (bias included, as a float constant)."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w, None if module.bias is None else module.bias.to(w.dtype))
    if isinstance(module, nn.Conv2d):
        return lambda x, w: module._conv_forward(
            x, w, None if module.bias is None else module.bias.to(w.dtype)
        )
    raise TypeError(f"NUPES supports nn.Linear and nn.Conv2d, got {type(module).__name__}")


def _check(name, what, step, t):
    if not bool(torch.isfinite(t).all()):
        raise FloatingPointError(f"NUPES layer {name!r} step {step}: non-finite {what}")


def move_histogram(start, final):
    """{'0': n, '1': n, '2': n, '3+': n}: how far codes moved from the start."""
    d = (final.to(torch.int64) - start.to(torch.int64)).abs().reshape(-1)
    return {
        "0": int((d == 0).sum()),
        "1": int((d == 1).sum()),
        "2": int((d == 2).sum()),
        "3+": int((d >= 3).sum()),
    }


def nupes_layer(
    module,
    bits=4,
    granularity="channel",
    group_size=None,
    init=None,
    exponent=None,
    x_fp=None,
    x_q=None,
    config=None,
    objective=None,
    target="float",
    name="layer",
    seed=0,
    full_range=False,
):
    """Optimise one nn.Linear / nn.Conv2d with NUPES. Returns (QuantizedWeight, info).

    full_range: signed codes [-2^(b-1), 2^(b-1)-1] for the power-RTN start; a given `init`
    brings its own code range (it must agree).

    init: the QuantizedWeight to start from (GPTQ-power / PowerQuant codes), else power RTN
    at `exponent` (or the PowerQuant per-layer optimum). objective: a LayerObjective; else
    built from x_fp / x_q (the layer's inputs in the float / quantized network, x_q
    defaulting to x_fp) with `target`, or the data-free weight error when both are None.
    info: exponent_init/final, loss_init, loss_dsq (best hard point of the dsq phase),
    loss_hard (after the code phase), loss_final, kept_init, improved (strictly lower),
    moves (histogram), codes_changed, seconds, loss_kind.
    """
    t0 = time.perf_counter()
    config = config or NupesConfig()
    config.check()
    torch.manual_seed(seed)
    w = module.weight.detach().to(torch.float64)
    check_finite_tensor(f"layer {name!r}: weight", w)
    layer_forward(module)  # type check
    shape = w.shape
    if objective is None:
        if x_fp is not None:
            if config.max_rows is not None:
                x_fp = x_fp[: config.max_rows]
                x_q = None if x_q is None else x_q[: config.max_rows]
            objective = LayerObjective.from_inputs(
                module, x_fp.detach(), None if x_q is None else x_q.detach(), target, name
            )
        else:
            objective = LayerObjective.weight_error(module, name)
    obj = objective
    if init is None:
        a0 = (
            exponent
            if exponent is not None
            else search_exponent(
                w, bits, granularity, group_size, bounds=EXPONENT_BOUNDS, full_range=full_range
            ).exponent
        )
        q0 = PowerQuantizer(bits, True, a0, granularity, group_size, full_range)
        s0 = q0.scales(w, f"layer {name!r}: weight")
        init = QuantizedWeight.from_codes(q0, q0.encode(w, s0), s0, "powerquant")
    a_init = float(init.exponent)
    full = bool(init.full_range)  # the start's code range is the result's
    if full != bool(full_range):
        raise ValueError(
            f"layer {name!r}: full_range={full_range!r} but init has full_range={full}; allowed: equal"
        )
    spec = PowerQuantizer(bits, True, a_init, granularity, group_size, full)
    R, G, g = spec.blocks_shape(shape)
    rgg = (R, G, g)
    M, lo = spec.qmax, spec.qmin
    C, K = obj.W.shape
    codes0 = init.codes.to(torch.int64).reshape(R, G, g)
    # magnitude the largest code decodes to, from the start's scales; 0 where the slice is all zero
    s_init = init.scales.to(torch.float64).reshape(R, G)
    live = w.reshape(R, G, g).abs().amax(2) > 0
    m64 = torch.where(live, codesearch._t_pow(s_init * M, 1.0 / a_init), torch.zeros_like(s_init))
    l_init = obj.value(init.decode())
    _check(name, f"initial loss ({l_init})", 0, torch.tensor(l_init))
    best = (l_init, codes0, a_init, m64)

    def consider(codes, a, loss, mags=m64):
        nonlocal best
        if loss < best[0]:
            best = (loss, codes.clone(), a, mags.clone())

    # ---- 1. dsq phase ---------------------------------------------------------------------
    dt = config.dtype
    a_lo, a_hi = EXPONENT_BOUNDS
    if config.steps:
        eps = nn.Parameter(codes0.to(dt).clone())
        a = nn.Parameter(torch.tensor(min(max(a_init, a_lo), a_hi), dtype=dt))
        m = m64.to(dt).unsqueeze(-1)
        W = obj.W.to(dt)
        # h: cost (loss units) of a one-level error in each weight, for the rounding regularizer
        hdiag = torch.cat([torch.diagonal(H).expand(obj.O, K) for H in obj.hessians], 0)
        spacing = (
            (m64 / M).unsqueeze(-1).expand(R, G, g).reshape(C, K)
            if R == C
            else (m64 / M).reshape(-1)[0].expand(C, K)
        )
        h = (hdiag * spacing**2 / obj.norm).to(dt).reshape(R, G, g)
        params = [{"params": [eps], "lr": config.lr}]
        if config.learn_exponent:
            params.append({"params": [a], "lr": config.lr_exponent})
        opt = torch.optim.Adam(params)
        b0, b1 = config.beta
        n = config.steps
        for step in range(n):
            t = step / max(n - 1, 1)
            beta = b0 * (b1 / b0) ** t
            lam = config.reg * max(0.0, 2.0 * t - 1.0)
            ws = soft_power_weight(eps, a, m, beta, M, lo).reshape(C, K)
            D = ws.detach() - W
            with torch.no_grad():
                Res = obj.residual(D)
                loss = obj.value_from(D, Res)
            _check(name, f"loss ({float(loss)})", step, loss)
            opt.zero_grad(set_to_none=False)
            ws.backward(2.0 * Res / obj.norm)
            if lam > 0:
                (lam * (h * torch.sin(math.pi * eps) ** 2).sum()).backward()
            if config.grad_clip is not None:
                gnorm = torch.nn.utils.clip_grad_norm_([eps, a], config.grad_clip)
            else:
                gnorm = eps.grad.norm() + a.grad.abs()
            _check(name, "gradient (of ε or of the exponent)", step, gnorm)
            opt.step()
            with torch.no_grad():
                eps.clamp_(lo, M)
                a.clamp_(a_lo, a_hi)
            _check(name, "exponent", step, a.detach())
            _check(name, "latent ε", step, eps.detach())
            if (step + 1) % config.harden_every == 0 or step == n - 1:
                hc = torch.clamp(torch.round(eps.detach().double()), lo, M).to(torch.int64)
                ah = float(a.detach())
                consider(hc, ah, codesearch.hard_loss(obj, m64, ah, M, hc, rgg, full))
    loss_dsq = best[0]

    # ---- 2. code phase: exact coordinate descent, magnitudes and exponent refinement -------
    if config.sweeps:
        _, codes, a1, mm = best

        def code_round(codes, a, mm, refine_m):
            if refine_m:
                mm, lm = codesearch.refine_magnitudes(obj, mm, a, M, codes, rgg, full)
                consider(codes, a, lm, mm)
            codes, lc, _ = codesearch.coordinate_descent(
                obj, codes, codesearch.levels(mm, a, M, full), rgg, config.sweeps
            )
            consider(codes, a, lc, mm)
            return codes, mm, lc

        codes, mm, l1 = code_round(codes, a1, mm, False)
        for _ in range(config.rounds):
            codes, mm, l_r = code_round(codes, a1, mm, True)
            if not l_r < l1 * (1 - 1e-6):
                break
            l1 = l_r
        if config.refine_exponent:
            a2, l2 = codesearch.refine_exponent(obj, mm, M, codes, rgg, a1, EXPONENT_BOUNDS, full=full)
            if a2 != a1 and l2 < l1:
                consider(codes, a2, l2, mm)
                code_round(codes, a2, mm, config.rounds > 0)
    l_hard = best[0]

    # ---- 3. the exact result (or the start) --------------------------------------------------
    kept = best[0] >= l_init
    if kept:
        out = init
        l_final = l_init
    else:
        _, codes, a_f, m_f = best
        q = spec.with_exponent(a_f)
        s = codesearch.scales_for(m_f, a_f, M).reshape(spec.scales_shape(shape))
        out = QuantizedWeight.from_codes(q, codes.reshape(shape), s, "nupes")
        l_final = obj.value(out.decode())  # exact contract decode: the number reported
        if not l_final <= l_init:  # cannot happen (the level table is the decode); keep the guarantee anyway
            out, l_final, kept = init, l_init, True
    for what, v in (("initial loss", l_init), ("final loss", l_final)):
        if not math.isfinite(v):
            raise FloatingPointError(f"NUPES layer {name!r} step {config.steps}: non-finite {what} ({v})")
    out = QuantizedWeight(
        out.codes,
        out.scales,
        out.exponent,
        out.bits,
        out.granularity,
        out.group_size,
        "nupes",
        out.signed,
        out.full_range,
    )
    moves = move_histogram(init.codes, out.codes)
    info = dict(
        exponent_init=a_init,
        exponent_final=out.exponent,
        loss_init=l_init,
        loss_dsq=loss_dsq,
        loss_hard=l_hard,
        loss_final=l_final,
        kept_init=kept,
        improved=l_final < l_init,
        moves=moves,
        codes_changed=sum(v for k, v in moves.items() if k != "0"),
        loss_kind=obj.kind,
        seconds=time.perf_counter() - t0,
    )
    return out, info
