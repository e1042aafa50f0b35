"""GPTQ (Frantar et al., 2022) with a pluggable element quantizer (uniform or power grid).

H = 2·XᵀX/n from the calibration inputs of the layer (rows of X are input vectors; conv
inputs are unfolded into (C_in/groups·kh·kw)-vectors in the weight's (c, i, j) order).
Dead inputs (diag H = 0) get H_ii = 1 and W[:, i] = 0; damping adds
percdamp·mean(diag H)·I (retried ×10 up to 4 times if Cholesky still fails); the upper
Cholesky factor of H⁻¹ drives the column-by-column quantization with lazy block updates.

Scales: 'tensor'/'channel' scales come from the float weight before GPTQ (as in the
reference implementation). 'group' scales are computed when the sweep enters a group, from
the group's current (error-updated) columns. With act-order, groups must still be
consecutive *original* input elements (the export format), so group scales are then static:
computed from the float weight before the sweep (GPTQ's `static_groups`).

The element quantizer maps a column and its per-row scale to (fake-quantized column,
codes); `PowerElement` implements the contract quantizer (exact, shared pow kernel), so a
GPTQ result decodes bit for bit to its own fake-quantized weight.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import PowerQuantizer, QuantizedWeight, _t_pow, check_finite_tensor


class PowerElement:
    """Element quantizer on the power grid of exponent a (a = 1: uniform RTN grid)."""

    def __init__(self, bits, exponent=1.0, full_range=False):
        self.q = PowerQuantizer(bits, True, exponent, "channel", full_range=full_range)
        self.exponent = float(exponent)

    def scales(self, block):
        """Per-row scale of a (C, n) block: max|w|^a / D (quantizer.py), 1 for all-zero rows."""
        return self.q.scales(block)

    def __call__(self, col, s):
        a = self.exponent
        z = torch.sign(col) * _t_pow(col.abs(), a) / s
        code = torch.clamp(torch.round(z), self.q.qmin, self.q.qmax)
        fake = torch.sign(code) * _t_pow(s * code.abs(), 1.0 / a)
        return fake, code


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ over rows x (float64)."""

    def __init__(self, k):
        self.H = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0

    def add(self, rows, name="layer"):
        rows = rows.detach().to(torch.float64).reshape(-1, self.H.shape[0])
        check_finite_tensor(f"layer {name!r}: calibration input", rows)
        m = rows.shape[0]
        if m == 0:
            return
        self.H *= self.n / (self.n + m)
        self.n += m
        self.H += (2.0 / self.n) * rows.T @ rows


def input_rows(module, x):
    """Calibration input of `module` as a list (one per conv group) of (n, K) row matrices."""
    if isinstance(module, nn.Linear):
        return [x.reshape(-1, module.in_features)]
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(
                f"GPTQ supports Conv2d with padding_mode='zeros' only, got {module.padding_mode!r}"
            )
        pad = module.padding
        if isinstance(pad, str):  # 'same' / 'valid'
            if pad == "valid":
                pad = 0
            else:
                kh, kw = module.kernel_size
                dh, dw = module.dilation
                th, tw = dh * (kh - 1), dw * (kw - 1)
                x = F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2))
                pad = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        kg = rows.shape[1] // module.groups
        return [rows[:, g * kg : (g + 1) * kg] for g in range(module.groups)]
    raise TypeError(f"GPTQ supports nn.Linear and nn.Conv2d, got {type(module).__name__}")


def _inverse_cholesky(H, percdamp, name):
    k = H.shape[0]
    damp = percdamp * float(torch.mean(torch.diag(H)))
    eye = torch.eye(k, dtype=H.dtype)
    for _ in range(5):
        L, info = torch.linalg.cholesky_ex(H + damp * eye)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                return U
        damp = max(damp * 10, 1e-8)
    raise ValueError(f"layer {name!r}: Hessian is not positive definite even with damping {damp:g}")


def gptq(
    W,
    H,
    element,
    granularity="channel",
    group_size=None,
    scales=None,
    blocksize=128,
    percdamp=0.01,
    actorder=False,
    name="layer",
):
    """GPTQ on a (C, K) weight. Returns (codes int64 (C, K), scales, fake float64 (C, K)).

    `scales`: fixed scales ((1,) tensor, (C,) channel, (C, K/g) group) or None (derived
    as described in the module docstring). `element(col, s) -> (fake, code)` and
    `element.scales(block) -> (C,)` define the grid (an element with `nparams` = P > 1
    returns (C, P) per-row parameters instead, e.g. scale and zero point).
    """
    W = W.detach().to(torch.float64).clone()
    check_finite_tensor(f"layer {name!r}: weight", W)
    C, K = W.shape
    H = H.detach().to(torch.float64).clone()
    check_finite_tensor(f"layer {name!r}: Hessian", H)
    if H.shape != (K, K):
        raise ValueError(f"layer {name!r}: Hessian has shape {tuple(H.shape)}, expected {(K, K)}")
    if not 0 <= percdamp < 1e3:
        raise ValueError(f"percdamp={percdamp!r} is not allowed; must be in [0, 1000)")
    if not (isinstance(blocksize, int) and blocksize >= 1):
        raise ValueError(f"blocksize={blocksize!r} is not allowed; must be an integer >= 1")
    g = group_size if granularity == "group" else None
    if g is not None and K % g:
        raise ValueError(f"group_size={g} does not divide the {K} input elements of layer {name!r}")
    if scales is None:
        if granularity == "tensor":
            s0 = element.scales(W.reshape(1, -1))
            scales = s0.reshape(1)
        elif granularity == "channel":
            scales = element.scales(W)
    if granularity == "tensor":
        row_scale = scales.reshape(1).expand(C).clone()
    elif granularity == "channel":
        row_scale = scales.reshape(C, -1).squeeze(1).clone()  # (C,) or (C, nparams)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = granularity == "group" and (actorder or scales is not None)
    if granularity == "group":
        if scales is None:
            scales = torch.ones(C, K // g, getattr(element, "nparams", 1), dtype=torch.float64).squeeze(-1)
            if actorder:
                scales = torch.stack([element.scales(W[:, j * g : (j + 1) * g]) for j in range(K // g)], 1)
        scales = scales.reshape(C, K // g, -1).squeeze(-1).clone()
    perm = torch.arange(K)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    Hinv = _inverse_cholesky(H, percdamp, name)
    codes = torch.zeros(C, K, dtype=torch.float64)
    Q = torch.zeros(C, K, dtype=torch.float64)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        n = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros(C, n, dtype=torch.float64)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(n):
            j = int(perm[i1 + i])  # original column index
            if granularity == "group":
                if not static and j % g == 0:  # entering a group (no act-order: j = i1 + i)
                    cur = W1[:, i : min(n, i + g)]
                    if i1 + i + g > i2:  # the group extends past the block: apply pending updates
                        extra = W[:, i2 : i1 + i + g] - Err1[:, :i] @ Hinv[i1 : i1 + i, i2 : i1 + i + g]
                        cur = torch.cat([cur, extra], 1)
                    scales[:, j // g] = element.scales(cur)
                s = scales[:, j // g]
            else:
                s = row_scale
            w = W1[:, i]
            q, c = element(w, s)
            Q[:, i1 + i], codes[:, i1 + i] = q, c
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if actorder:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    return codes.to(torch.int64), scales, Q


def gptq_layer(
    module,
    hessians,
    bits=4,
    exponent=1.0,
    granularity="channel",
    group_size=None,
    blocksize=128,
    percdamp=0.01,
    actorder=False,
    element=None,
    name="layer",
    method=None,
    weight=None,
    full_range=False,
):
    """GPTQ of an nn.Linear / nn.Conv2d from per-conv-group Hessians (see `input_rows`).

    Returns a QuantizedWeight (codes in the weight's shape, contract scales). `element`
    defaults to the power grid with the given exponent (1.0: uniform GPTQ). `weight`: the
    weight to quantize instead of the module's (same numel; the float-target weight W* of
    `objective.LayerObjective.target_weight`), scales included. full_range: signed codes
    [-2^(b-1), 2^(b-1)-1] (quantizer.py).
    """
    qspec = PowerQuantizer(bits, True, exponent, granularity, group_size, full_range)
    w = module.weight.detach().to(torch.float64)
    if weight is not None:
        if weight.numel() != w.numel():
            raise ValueError(
                f"layer {name!r}: weight override has {weight.numel()} elements, the layer {w.numel()}"
            )
        w = weight.detach().to(torch.float64).reshape(w.shape)
    check_finite_tensor(f"layer {name!r}: weight", w)
    W = w.reshape(w.shape[0], -1)
    qspec.blocks_shape(w.shape)  # validates group size against the flattened shape
    element = element or PowerElement(bits, exponent, full_range)
    G = len(hessians)
    O = W.shape[0] // G
    fixed = qspec.scales(w).reshape(1) if granularity == "tensor" else None
    codes, scales = [], []
    for gi, H in enumerate(hessians):
        c, s, _ = gptq(
            W[gi * O : (gi + 1) * O],
            H,
            element,
            granularity,
            group_size,
            fixed,
            blocksize,
            percdamp,
            actorder,
            name,
        )
        codes.append(c)
        scales.append(s)
    codes = torch.cat(codes, 0).reshape(w.shape)
    scales = scales[0] if granularity == "tensor" else torch.cat(scales, 0)
    return QuantizedWeight.from_codes(
        qspec, codes, scales, method or ("gptq" if exponent == 1.0 else "gptq_power")
    )
