"""The one activation format and calibrator of the reference side.

An activation tensor is quantized per tensor with a `nupes_sim.formats.PowerFormat`:
codes [-M, M] (signed, M = 2^(b-1) - 1) or [0, 2^b - 1] (unsigned, post-ReLU), scale
s = m^a / M with m the `percentile` of |x|, exponent a given or the grid point of
EXPONENT_GRID with the least MSE on (a deterministic subsample of) the samples.

Used everywhere an activation is quantized: the exporter at every requantization point of
the integer graph (export.py), the exporter's walk that feeds the weight quantizers
(export.ActivationWalk), and `quantize_model(abits=...)` (calibrate.PowerActQuant). So the
activations a weight quantizer is optimized against are the ones the integer graph computes.
"""

import numpy as np
import torch

from nupes_sim.cpu.fakequant import fake_quantize
from nupes_sim.formats import PowerFormat
from nupes_sim.rounding import DEFAULT

from .quantizer import check_finite_tensor

#: exponents tried by the calibration search (the exporter's grid since its first version)
EXPONENT_GRID = tuple(float(a) for a in np.round(np.arange(0.25, 1.5001, 0.05), 4))
MAX_SAMPLES = 200_000  # the search runs on a deterministic subsample of this size


def _as_np(samples):
    if torch.is_tensor(samples):
        samples = samples.detach().cpu().double().numpy()
    return np.asarray(samples, dtype=np.float64).ravel()


def calibrate_activation(
    samples, bits, signed=None, exponent=None, percentile=100.0, seed=0, name="activation"
):
    """Per-tensor PowerFormat for activation samples (see the module docstring).

    signed=None: unsigned if every sample is >= 0, else signed. seed: the subsample drawn
    when there are more than MAX_SAMPLES samples.
    """
    x = _as_np(samples)
    check_finite_tensor(name, x)
    if signed is None:
        signed = bool((x < 0).any())
    m = float(np.percentile(np.abs(x), percentile)) if x.size else 0.0
    if m <= 0:
        m = 1.0
    M = 2 ** (bits - 1) - 1 if signed else 2**bits - 1

    def fmt(a):
        return PowerFormat(bits, bool(signed), a, m**a / M)

    if exponent is not None:
        return fmt(float(exponent))
    sub = (
        x
        if x.size <= MAX_SAMPLES
        else x[np.random.default_rng(seed).choice(x.size, MAX_SAMPLES, replace=False)]
    )
    best = None
    for a in EXPONENT_GRID:
        f = fmt(a)
        err = float(np.mean((f.decode_real(f.encode(sub)) - sub) ** 2))
        if best is None or err < best[0]:
            best = (err, f)
    return best[1]


def quantize_act(fmt, t):
    """Float64 fake quantization of a torch tensor with a PowerFormat (host contract rounding;
    an unsigned format saturates negative inputs to code 0)."""
    arr = t.detach().double().cpu().numpy()
    fast = fake_quantize(fmt, arr, DEFAULT)  # the same values in one pass (cpu/fakequant.py)
    return torch.from_numpy(fast if fast is not None else fmt.decode_real(fmt.encode(arr)))


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
    return calibrate_activation(z, bits, signed=False if relu else None, seed=seed, **kw)
