"""PowerQuant (Yvinec et al.): data-free search of the power exponent a.

The weight reconstruction error E(a) = ‖W − ŵ(W; a)‖² (default scales, so the grid always
spans the weight range) is piecewise smooth with many small local minima, more so at 8
bits, so a local optimiser alone is not enough. `minimize_exponent` runs

1. a coarse grid over the bounds (step `grid_step`),
2. a fine grid (step `fine_step`) over ±grid_step around the best coarse point,
3. a bounded Brent search (scipy `minimize_scalar`, method='bounded') over ±fine_step
   around the best fine point,

and returns the best point evaluated anywhere. Activations get their own exponent and a
per-tensor scale calibrated the same way on data (`calibrate_activation`), or data-free
from batch-norm statistics (`activation_from_batchnorm`).
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .quantizer import EXPONENT_MAX, EXPONENT_MIN, PowerQuantizer, check_finite_tensor

#: default search bounds of the exponent (inside the quantizer's validation range).
SEARCH_BOUNDS = (0.1, 2.0)


@dataclass
class ExponentSearch:
    exponent: float
    error: float
    evaluations: int


def minimize_exponent(objective, bounds=SEARCH_BOUNDS, grid_step=0.05, fine_step=0.005, xatol=1e-4):
    """Minimise a scalar objective over a in `bounds` by grid → fine grid → bounded Brent."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (EXPONENT_MIN <= lo < hi <= EXPONENT_MAX):
        raise ValueError(f"bounds={bounds!r} not allowed; need {EXPONENT_MIN} <= lo < hi <= {EXPONENT_MAX}")
    if not (0 < fine_step <= grid_step):
        raise ValueError(f"need 0 < fine_step <= grid_step, got fine_step={fine_step}, grid_step={grid_step}")
    cache = {}

    def f(a):
        a = float(a)
        if a not in cache:
            v = float(objective(a))
            if not np.isfinite(v):
                raise FloatingPointError(f"exponent search: objective is {v} at a={a}")
            cache[a] = v
        return cache[a]

    def grid(a0, a1, step):
        n = int(np.floor((a1 - a0) / step + 1e-9))
        pts = [a0 + i * step for i in range(n + 1)]
        if a1 - pts[-1] > 1e-12:
            pts.append(a1)
        return [float(np.round(p, 12)) for p in pts]

    best = min(grid(lo, hi, grid_step), key=f)
    best = min(grid(max(lo, best - grid_step), min(hi, best + grid_step), fine_step), key=f)
    b0, b1 = max(lo, best - fine_step), min(hi, best + fine_step)
    if b1 > b0:
        minimize_scalar(f, bounds=(b0, b1), method="bounded", options={"xatol": xatol})
    a = min(cache, key=lambda k: (cache[k], k))
    return ExponentSearch(a, cache[a], len(cache))


def _as_np(w):
    if torch.is_tensor(w):
        return w.detach().cpu().to(torch.float64).numpy()
    return np.asarray(w, dtype=np.float64)


def weight_error_np(w, quantizer):
    """‖w − ŵ(w)‖² with the quantizer's default scales (float64 numpy)."""
    d = quantizer.fake_quant_np(w) - w
    return float(np.dot(d.reshape(-1), d.reshape(-1)))


def search_exponent(
    weights,
    bits=4,
    granularity="channel",
    group_size=None,
    bounds=SEARCH_BOUNDS,
    grid_step=0.05,
    fine_step=0.005,
    xatol=1e-4,
    names=None,
):
    """Data-free exponent search for one weight tensor or a list of them (one shared a).

    One tensor: minimises ‖W − ŵ‖². Several (per-network PowerQuant): minimises
    Σ_l ‖W_l − ŵ_l‖² / ‖W_l‖², so every layer counts by its relative error whatever its size
    or magnitude (all-zero layers count 0).
    """
    single = not isinstance(weights, (list, tuple))
    ws = [_as_np(weights)] if single else [_as_np(w) for w in weights]
    if not ws:
        raise ValueError("search_exponent needs at least one weight tensor")
    names = names or [f"weights[{i}]" for i in range(len(ws))]
    for n, w in zip(names, ws):
        check_finite_tensor(n, w)
    PowerQuantizer(bits, True, 1.0, granularity, group_size)  # validates the spec
    for w in ws:
        PowerQuantizer(bits, True, 1.0, granularity, group_size).blocks_shape(w.shape)
    norms = [1.0] if single else [float(np.sum(w * w)) or 1.0 for w in ws]

    def objective(a):
        q = PowerQuantizer(bits, True, a, granularity, group_size)
        return sum(weight_error_np(w, q) / n for w, n in zip(ws, norms))

    return minimize_exponent(objective, bounds, grid_step, fine_step, xatol)


# ---- activations -------------------------------------------------------------------------
@dataclass
class ActivationFormat:
    """Per-tensor power format of an activation: codes [-M, M] (signed) or [0, 2^b-1]."""

    bits: int
    signed: bool
    exponent: float
    scale: float

    @property
    def quantizer(self):
        return PowerQuantizer(self.bits, self.signed, self.exponent, "tensor")

    def fake_quant(self, x):
        """Float64 fake quantization of a torch tensor (exact contract arithmetic)."""
        q = self.quantizer
        s = torch.tensor([self.scale], dtype=torch.float64)
        return q.decode(q.encode_float(x, s, "activation"), s)


def calibrate_activation(
    samples,
    bits=8,
    signed=None,
    exponent=None,
    bounds=SEARCH_BOUNDS,
    percentile=100.0,
    max_samples=200_000,
    seed=0,
    name="activation",
):
    """Exponent and per-tensor scale of an activation from calibration samples.

    signed=None: unsigned if every sample is >= 0 (post-ReLU), else signed. The scale maps
    the `percentile` of |x| to the largest code; the exponent is given or searched (grid +
    refinement) to minimise the MSE on (a deterministic subsample of) the samples.
    """
    x = _as_np(samples).reshape(-1)
    check_finite_tensor(name, x)
    if signed is None:
        signed = bool((x < 0).any())
    if not signed and (x < 0).any():
        raise ValueError(f"{name}: signed=False but the samples contain negative values")
    if x.size > max_samples:
        x = x[np.random.default_rng(seed).choice(x.size, max_samples, replace=False)]
    m = float(np.percentile(np.abs(x), percentile)) if x.size else 0.0
    if not m > 0:
        m = 1.0
    mm = np.array([m])

    def fmt(a):
        q = PowerQuantizer(bits, signed, a, "tensor")
        return ActivationFormat(bits, signed, float(a), float((np.power(mm, np.float64(a)) / q.qmax)[0]))

    if exponent is not None:
        return fmt(exponent)

    def objective(a):
        f = fmt(a)
        q = f.quantizer
        s = np.array([f.scale])
        d = q.decode_np(q.encode_np(x, s), s) - x
        return float(np.mean(d * d))

    return fmt(minimize_exponent(objective, bounds).exponent)


def activation_from_batchnorm(bn, bits=8, relu=True, n_per_channel=4096, seed=0, **kw):
    """Data-free activation format: the BN output of channel c is modelled as N(β_c, γ_c²)
    (then ReLU'd if `relu`), sampled deterministically and calibrated like data."""
    g = torch.Generator().manual_seed(seed)
    beta = (
        bn.bias.detach().double()
        if bn.bias is not None
        else torch.zeros(bn.num_features, dtype=torch.float64)
    )
    gamma = bn.weight.detach().double().abs() if bn.weight is not None else torch.ones_like(beta)
    z = torch.randn(n_per_channel, beta.numel(), generator=g, dtype=torch.float64) * gamma + beta
    if relu:
        z = z.clamp_min(0)
    return calibrate_activation(z, bits, signed=None if not relu else False, seed=seed, **kw)
