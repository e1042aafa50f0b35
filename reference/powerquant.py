"""PowerQuant (Yvinec et al.): data-free search of the power exponent a.

The weight reconstruction error E(a) = ‖W − ŵ(W; a)‖² (default scales, so the grid always
spans the weight range) is piecewise smooth with many small local minima, more so at 8
bits, so a local optimiser alone is not enough. `minimize_exponent` runs

1. a coarse grid over the bounds (step `grid_step`),
2. a fine grid (step `fine_step`) over ±grid_step around the best coarse point,
3. a bounded Brent search (scipy `minimize_scalar`, method='bounded') over ±fine_step
   around the best fine point,

and returns the best point evaluated anywhere. Activation formats are calibrated in
activation.py (one calibrator for the exporter and the optimizer).
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
    full_range=False,
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
    PowerQuantizer(bits, True, 1.0, granularity, group_size, full_range)  # validates the spec
    for w in ws:
        PowerQuantizer(bits, True, 1.0, granularity, group_size, full_range).blocks_shape(w.shape)
    norms = [1.0] if single else [float(np.sum(w * w)) or 1.0 for w in ws]

    def objective(a):
        q = PowerQuantizer(bits, True, a, granularity, group_size, full_range)
        return sum(weight_error_np(w, q) / n for w, n in zip(ws, norms))

    return minimize_exponent(objective, bounds, grid_step, fine_step, xatol)
