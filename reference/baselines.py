"""Baselines that users pick instead of power formats (float64 weights).

GPTQ on the standard asymmetric grid per channel (`gptq_asym_layer`, method 'gptq_asym' with
granularity 'channel') exports: its `AsymWeight` is the simulator's UniformWeightFormat
(ARITHMETIC.md §1-§2: the decode LUT absorbs the zero point). The NF and k-means codebooks
export through codebooks.py (the simulator's CodebookFormat); 'gptq_asym' per group is fake
quantization only. They put NUPES next to what users run.

- `AsymElement`: the reference GPTQ's standard grid (IST-DASLab `Quantizer`, sym=False):
  2^b levels 0..2^b−1 with a zero point, per-row min-max range widened to include 0,
  scale = (max − min)/(2^b − 1), zero = round(−min/scale), ŵ = scale·(q − zero).
- `CodebookElement`: a per-row-scaled codebook (values in [−1, 1]) with absmax scaling,
  nearest value; with `NF_CODEBOOK(bits)` it is NormalFloat (QLoRA): 2^(b−1) positive and
  2^(b−1)−1 negative normal quantiles plus 0 (b = 4 gives the 16 NF4 values).
- `weighted_kmeans`: per-row 1-D k-means with 2^b centroids weighted by a sensitivity per
  input element (SqueezeLLM style; we use the Hessian diagonal diag(XᵀX) as the
  sensitivity), Lloyd iterations from quantile initial centroids.

The elements follow `gptq.gptq`'s element protocol (scales(block) → per-row parameters,
__call__(col, params) → (fake, code)), so GPTQ's error compensation runs on these grids too.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from nupes_sim.formats import UniformWeightFormat


def NF_CODEBOOK(bits, offset=0.9677083):
    """NormalFloat values (float64, sorted, in [−1, 1]) as QLoRA builds NF4."""
    n = 2 ** (bits - 1)
    pos = norm.ppf(np.linspace(offset, 0.5, n + 1)[:-1])
    neg = -norm.ppf(np.linspace(offset, 0.5, n)[:-1])
    v = np.sort(np.concatenate([pos, [0.0], neg]))
    return torch.tensor(v / np.abs(v).max(), dtype=torch.float64)


class AsymElement:
    """Element quantizer on the standard asymmetric grid (module doc); params (C, 2) = (scale, zero)."""

    nparams = 2

    def __init__(self, bits):
        self.maxq = 2**bits - 1

    def scales(self, block):
        lo = torch.clamp(block.min(1).values, max=0.0)
        hi = torch.clamp(block.max(1).values, min=0.0)
        dead = (lo == 0) & (hi == 0)
        lo = torch.where(dead, -torch.ones_like(lo), lo)
        hi = torch.where(dead, torch.ones_like(hi), hi)
        scale = (hi - lo) / self.maxq
        zero = torch.round(-lo / scale)
        return torch.stack([scale, zero], 1)

    def __call__(self, col, p):
        scale, zero = p[:, 0], p[:, 1]
        q = torch.clamp(torch.round(col / scale) + zero, 0, self.maxq)
        return scale * (q - zero), q


class CodebookElement:
    """Nearest value of absmax·codebook per row; params (C,) = absmax (1 for all-zero rows)."""

    nparams = 1

    def __init__(self, codebook):
        self.values = torch.as_tensor(codebook, dtype=torch.float64)

    def scales(self, block):
        m = block.abs().max(1).values
        return torch.where(m > 0, m, torch.ones_like(m))

    def __call__(self, col, s):
        lv = s.unsqueeze(1) * self.values.unsqueeze(0)  # (C, L)
        idx = torch.argmin((col.unsqueeze(1) - lv).abs(), 1)
        return lv.gather(1, idx.unsqueeze(1)).squeeze(1), idx


@dataclass
class AsymWeight:
    """Codes on the standard asymmetric grid (attached as `module.nupes_quant`, exportable):
    ŵ = scales[o]·(codes − zero_points[o]) per output channel o, codes uint8 in [0, 2^b−1]."""

    codes: torch.Tensor
    scales: torch.Tensor  # (C,) float64
    zero_points: torch.Tensor  # (C,) int64
    bits: int
    method: str = "gptq_asym"
    granularity: str = "channel"
    group_size: int = 0
    exponent: float = 1.0
    signed: bool = False
    full_range: bool = False

    def format(self):
        """The simulator's UniformWeightFormat of these codes."""
        return UniformWeightFormat(
            self.bits, False, self.scales.numpy(), self.zero_points.numpy().astype(np.int64), "channel"
        )

    def decode(self):
        """Float64 ŵ in the weight's shape: one product s·(q − z) per element, as the simulator."""
        q = self.codes.to(torch.int64).reshape(self.codes.shape[0], -1)
        w = self.scales.reshape(-1, 1) * (q - self.zero_points.reshape(-1, 1)).to(torch.float64)
        return w.reshape(self.codes.shape)


def asym_params(W, bits):
    """(scales (C,), zero points (C,) int64) of the standard grid for the rows of W (C, K)."""
    p = AsymElement(bits).scales(W.to(torch.float64))
    return p[:, 0].clone(), p[:, 1].to(torch.int64)


def gptq_asym_layer(
    module, hessians, bits, weight=None, blocksize=128, percdamp=0.01, name="layer", calibrated=True
):
    """GPTQ on the standard asymmetric grid per output channel (per conv group), as the
    reference does it: per-row min-max of the weight before the sweep (widened to contain 0),
    scale = (max − min)/(2^b − 1), zero = round(−min/scale), codes in [0, 2^b − 1]. Returns an
    AsymWeight; `calibrated=False` gives round-to-nearest on the same grid."""
    from .gptq import gptq

    w = module.weight.detach().to(torch.float64) if weight is None else weight.to(torch.float64)
    W = w.reshape(module.weight.shape[0], -1)
    el = AsymElement(bits)
    if not calibrated:
        p = el.scales(W)
        q = torch.clamp(torch.round(W / p[:, :1]) + p[:, 1:], 0, el.maxq)  # AsymElement per column
        return _asym(q, p, bits, module, "rtn_asym")
    G = len(hessians)
    O = W.shape[0] // G
    cs, ps = [], []
    for i, H in enumerate(hessians):
        c, p, _ = gptq(W[i * O : (i + 1) * O], H, el, "channel", None, None, blocksize, percdamp, False, name)
        cs.append(c)
        ps.append(p)
    return _asym(torch.cat(cs, 0), torch.cat(ps, 0), bits, module, "gptq_asym")


def _asym(codes, params, bits, module, method):
    return AsymWeight(
        codes.to(torch.int64).to(torch.uint8).reshape(module.weight.shape),
        params[:, 0].clone(),
        params[:, 1].to(torch.int64),
        bits,
        method,
    )


def rtn_element(W, element, granularity="channel", group_size=None):
    """Round-to-nearest on an element's grid (no error compensation): fake (C, K)."""
    W = W.to(torch.float64)
    C, K = W.shape
    g = group_size if granularity == "group" else K
    out = torch.empty_like(W)
    for j0 in range(0, K, g):
        blk = W[:, j0 : j0 + g]
        p = element.scales(blk)
        for j in range(blk.shape[1]):
            out[:, j0 + j] = element(blk[:, j], p)[0]
    return out


def weighted_kmeans_tables(W, weights, bits, iters=25):
    """Per-row weighted 1-D k-means of W (C, K) with 2^bits centroids; weights (K,) or (C, K)
    ≥ 0. Returns (centroids (C, 2^bits) float64, assignment (C, K) int64): Lloyd iterations
    from quantile initial centroids, each weight assigned to its nearest centroid (the first
    on ties). Rows shorter than 2^bits get min(2^bits, K) centroids, the last one repeated."""
    W = W.to(torch.float64)
    C, K = W.shape
    k = min(2**bits, K)
    wt = torch.as_tensor(weights, dtype=torch.float64).expand(C, K).clamp_min(0) + 1e-12
    qs = torch.linspace(0, 1, k + 2, dtype=torch.float64)[1:-1]
    cent = torch.quantile(W, qs, dim=1).T.contiguous()  # (C, k)
    for _ in range(iters):
        assign = torch.argmin((W.unsqueeze(2) - cent.unsqueeze(1)).abs(), 2)  # (C, K)
        onehot = torch.nn.functional.one_hot(assign, k).to(torch.float64) * wt.unsqueeze(2)
        num = (onehot * W.unsqueeze(2)).sum(1)
        den = onehot.sum(1)
        new = torch.where(den > 0, num / den.clamp_min(1e-300), cent)
        if torch.equal(new, cent):
            break
        cent = new
    assign = torch.argmin((W.unsqueeze(2) - cent.unsqueeze(1)).abs(), 2)
    if k < 2**bits:
        cent = torch.cat([cent, cent[:, -1:].expand(C, 2**bits - k)], 1)
    return cent, assign


def weighted_kmeans(W, weights, bits, iters=25):
    """The fake-quantized weight (C, K) float64 of `weighted_kmeans_tables` (each weight → its
    centroid)."""
    cent, assign = weighted_kmeans_tables(W, weights, bits, iters)
    return cent.gather(1, assign)


def gptq_fake(
    module,
    hessians,
    element,
    granularity="channel",
    group_size=None,
    weight=None,
    blocksize=128,
    percdamp=0.01,
    name="layer",
):
    """GPTQ on an element's grid (per conv group), returning only the fake-quantized weight
    in the module's weight shape (float64). `weight`: the weight to quantize (default the
    module's), e.g. the float-target W*."""
    from .gptq import gptq

    w = module.weight.detach().to(torch.float64) if weight is None else weight.to(torch.float64)
    W = w.reshape(module.weight.shape[0], -1)
    G = len(hessians)
    O = W.shape[0] // G
    parts = [
        gptq(
            W[i * O : (i + 1) * O],
            H,
            element,
            granularity,
            group_size,
            None,
            blocksize,
            percdamp,
            False,
            name,
        )[2]
        for i, H in enumerate(hessians)
    ]
    return torch.cat(parts, 0).reshape(module.weight.shape)


#: the baseline methods of `api.quantize_model` and whether they need data; the codebook ones
#: (codebooks.CODEBOOK_METHODS) and 'gptq_asym' per channel export, 'gptq_asym' per group is
#: fake quantization only (`fake_layer`, which also stays the float64 twin of the codebooks)
FAKE_METHODS = {"nf": False, "gptq_nf": True, "gptq_asym": True, "kmeans": True, "gptq_kmeans": True}


def fake_layer(
    method, module, obj, bits, granularity, group_size, calibrated, blocksize=128, percdamp=0.01, name="layer"
):
    """(ŵ in the weight's shape, its round-to-nearest start) for a FAKE_METHODS method on one
    layer; `obj` is the layer objective (Hessians, float target). Uncalibrated layers fall
    back to round-to-nearest on the method's grid (k-means: unweighted)."""
    if granularity not in ("channel", "group"):
        raise ValueError(f"method={method!r} supports granularity 'channel' or 'group', got {granularity!r}")
    W = module.weight.detach().to(torch.float64).reshape(module.weight.shape[0], -1)
    shape = module.weight.shape
    if method == "kmeans":
        sens = (
            torch.cat([torch.diagonal(H).expand(obj.O, -1) for H in obj.hessians], 0)
            if calibrated
            else torch.ones_like(W)
        )
        fake = weighted_kmeans(W, sens, bits).reshape(shape)
        return fake, fake
    el = AsymElement(bits) if method == "gptq_asym" else CodebookElement(NF_CODEBOOK(bits))
    start = rtn_element(W, el, granularity, group_size).reshape(shape)
    if method == "nf" or not calibrated:
        return start, start
    return gptq_fake(
        module,
        obj.hessians,
        el,
        granularity,
        group_size,
        obj.target_weight(percdamp),
        blocksize,
        percdamp,
        name,
    ), start
