"""Codebook baselines that export: NormalFloat (QLoRA NF4, per-group or per-channel absmax) and
sensitivity-weighted k-means (SqueezeLLM style), each optionally after GPTQ's error
compensation onto the fixed codebook. Their `CodebookWeight` is the simulator's
CodebookFormat (docs/ARITHMETIC.md §1-§2: each code indexes a table of 2^b reals per channel
or per (channel, group), decoded through the LUT row t(o,k)), so the exported integer layer
runs exactly these codes and tables.

- 'nf' / 'gptq_nf': the table of (channel, group) is absmax·NF[q] (one float64 product, the
  same one `baselines.CodebookElement` forms), NF = `baselines.NF_CODEBOOK(bits)`: QLoRA's
  construction (2^(b-1) positive and 2^(b-1)−1 negative normal quantiles, an exact 0,
  normalized to [-1, 1]); b = 4 is NF4, other b the same construction (NF3 is not a
  bitsandbytes type; it is the natural generalization). GPTQ derives each group's absmax when
  it enters the group, on the error-updated weights, as the reference does for its grid.
- 'kmeans' / 'gptq_kmeans': per output channel (or per (channel, group)) weighted 1-D k-means
  with 2^b centroids, weights = the GPTQ Hessian diagonal diag(XᵀX) of the calibration inputs
  (SqueezeLLM's Fisher-diagonal sensitivity, approximated by the layer Hessian); the GPTQ
  variant then quantizes column by column onto these fixed centroids (nearest value) with the
  Hessian-inverse update.
"""

from dataclasses import dataclass

import torch

from nupes_sim.formats import CodebookFormat

from .baselines import NF_CODEBOOK, CodebookElement, weighted_kmeans_tables

CODEBOOK_METHODS = ("nf", "gptq_nf", "kmeans", "gptq_kmeans")


@dataclass
class CodebookWeight:
    """Codes indexing per-channel / per-group tables (attached as `module.nupes_quant`,
    exportable): ŵ[o, k] = values[t(o,k), codes[o, k]], codes in [0, 2^b − 1]."""

    codes: torch.Tensor  # int64, the weight's shape
    values: torch.Tensor  # float64 (C, 2^b) 'channel' or (C, K/g, 2^b) 'group'
    bits: int
    method: str
    granularity: str = "channel"
    group_size: int = 0
    exponent: float = 1.0
    signed: bool = False
    full_range: bool = False

    @property
    def scales(self):
        """Largest |value| of each table (the absmax for NF; reported, not used to decode)."""
        return self.values.abs().amax(-1)

    def format(self):
        """The simulator's CodebookFormat of these tables."""
        g = self.group_size if self.granularity == "group" else 0
        return CodebookFormat(self.bits, self.values.numpy(), self.granularity, g)

    def decode(self):
        """Float64 ŵ in the weight's shape: a table read per element, as the simulator."""
        C = self.codes.shape[0]
        q = self.codes.to(torch.int64).reshape(C, -1)
        tables = self.values.reshape(-1, 2**self.bits)
        t = torch.from_numpy(self.format().scale_index(tuple(self.codes.shape)))
        return tables[t, q].reshape(self.codes.shape)


class TableElement:
    """Nearest value of a fixed per-row table (GPTQ's element protocol with given params):
    params (C, L) = the row's table; ties go to the lower code (torch.argmin)."""

    nparams = 0  # params are always given (gptq `scales=`)

    def __call__(self, col, table):
        idx = torch.argmin((col.unsqueeze(1) - table).abs(), 1)
        return table.gather(1, idx.unsqueeze(1)).squeeze(1), idx


def _groups(K, granularity, group_size):
    return group_size if granularity == "group" else K


def nf_weight(
    W, bits, granularity="channel", group_size=None, hessian=None, blocksize=128, percdamp=0.01, name="layer"
):
    """NF codes and tables of W (C, K): round to nearest (hessian None) or GPTQ onto the NF
    grid with absmax per channel or per group of `group_size` inputs. Returns (codes (C, K)
    int64, values (C, 2^b) or (C, K/g, 2^b))."""
    from .gptq import gptq

    W = W.to(torch.float64)
    C, K = W.shape
    el = CodebookElement(NF_CODEBOOK(bits))
    g = _groups(K, granularity, group_size)
    if hessian is None:
        s = torch.stack([el.scales(W[:, j : j + g]) for j in range(0, K, g)], 1)  # (C, K/g)
        codes = torch.stack([el(W[:, j], s[:, j // g])[1] for j in range(K)], 1)
    else:
        codes, s, _ = gptq(W, hessian, el, granularity, group_size, None, blocksize, percdamp, False, name)
        s = s.reshape(C, -1)
    values = s.unsqueeze(-1) * el.values  # the element's own product: the fake value bit for bit
    return codes.to(torch.int64), values if granularity == "group" else values[:, 0]


def kmeans_weight(W, sens, bits, granularity="channel", group_size=None):
    """Weighted k-means tables per channel (or per (channel, group)) of W (C, K) with
    sensitivities sens (C, K) and the nearest-centroid codes. Returns (codes (C, K) int64,
    values (C, 2^b) or (C, K/g, 2^b))."""
    W = W.to(torch.float64)
    C, K = W.shape
    g = _groups(K, granularity, group_size)
    G = K // g
    cent, assign = weighted_kmeans_tables(W.reshape(C * G, g), sens.to(torch.float64).reshape(C * G, g), bits)
    values = cent.reshape(C, G, -1)
    return assign.reshape(C, K).to(torch.int64), values if granularity == "group" else values[:, 0]


def codebook_layer(
    method, module, obj, bits, granularity, group_size, calibrated, blocksize=128, percdamp=0.01, name="layer"
):
    """(start, result) CodebookWeights of a CODEBOOK_METHODS method on one layer (per conv
    group for the Hessians); `obj` is the layer objective (Hessians, float target). The start
    is the same codebook without GPTQ; uncalibrated layers get the start (k-means: unweighted)."""
    from .gptq import gptq

    if granularity not in ("channel", "group"):
        raise ValueError(f"method={method!r} supports granularity 'channel' or 'group', got {granularity!r}")
    shape = module.weight.shape
    W = module.weight.detach().to(torch.float64).reshape(shape[0], -1)
    G = len(obj.hessians)
    O = W.shape[0] // G
    gs = group_size if granularity == "group" else 0
    kmeans = method in ("kmeans", "gptq_kmeans")
    use_gptq = calibrated and method.startswith("gptq_")
    target = obj.target_weight(percdamp).reshape(W.shape) if use_gptq else None

    def run(H, rows, Wsrc, hess):
        if kmeans:
            sens = torch.diagonal(H).expand(O, -1) if calibrated else torch.ones(O, W.shape[1])
            # the tables come from the layer's own weights; GPTQ compensates towards the target
            c0, v = kmeans_weight(W[rows], sens, bits, granularity, group_size)
            if hess is None:
                return c0, v
            c, _, _ = gptq(
                Wsrc[rows], hess, TableElement(), granularity, group_size, v, blocksize, percdamp, False, name
            )
            return c.to(torch.int64), v
        return nf_weight(Wsrc[rows], bits, granularity, group_size, hess, blocksize, percdamp, name)

    def weight(src, with_gptq):
        parts = [
            run(H, slice(i * O, (i + 1) * O), src, H if with_gptq else None)
            for i, H in enumerate(obj.hessians)
        ]
        codes = torch.cat([p[0] for p in parts], 0).reshape(shape)
        values = torch.cat([p[1] for p in parts], 0)
        m = method if with_gptq or not method.startswith("gptq_") else method[5:]
        return CodebookWeight(codes, values, bits, m, granularity, gs)

    start = weight(W, False)
    return start, (weight(target, True) if use_gptq else start)
