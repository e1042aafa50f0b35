"""The layer objective that GPTQ, GPTQ-power and NUPES share, as a quadratic form.

For one nn.Linear / nn.Conv2d with float weight W (C, K) (conv: flattened in (c, i, j)
order, one block of rows per conv group), calibration rows X_q (the inputs the quantized
network feeds the layer; conv inputs unfolded as in `gptq.input_rows`) and target rows
X_t, the loss of a quantized weight ŵ is

    L(ŵ) = ‖f(X_t, W) − f(X_q, ŵ)‖² / ‖f(X_t, W)‖²        (bias included in f; it cancels
                                                           in the difference)

Target 'float': X_t = X_fp, the float network's input (the sequential target: the float
output from quantized inputs). Target 'local': X_t = X_q (the float weights on the layer's
own quantized inputs, the classic GPTQ target). With float inputs (mode='parallel') both
are the same. Writing D = ŵ − W, H = X_qᵀX_q, E = X_qᵀ(X_t − X_q), G₀ = −W·Eᵀ:

    ‖f(X_t, W) − f(X_q, ŵ)‖² = base + ⟨D, D·H⟩ + 2⟨D, G₀⟩,   base = ‖(X_t − X_q)·Wᵀ‖²,

so every loss and gradient needs only K×K statistics (one (C, K)×(K, K) product), not the
n calibration rows. `value` is float64 and equals the direct data loss up to rounding
(tests compare both). The least-squares minimizer of the form is W* = W − G₀·H⁻¹ (damped
like GPTQ's Hessian): GPTQ with target 'float' quantizes W* with Hessian H, which
minimizes the same loss (the form is ‖ŵ − W*‖²_H + const).

Data-free objectives use the same form with base = 0, G₀ = 0 and a Hessian H built without
data (identity: the relative weight error; or second moments of synthetic inputs, see
`datafree.py`).
"""

import torch
from torch import nn

from .gptq import input_rows
from .quantizer import check_finite_tensor

TARGETS = ("float", "local")


def _chunks(x, n):
    return [x] if x is None else list(torch.split(x, n))


class LayerObjective:
    """L(ŵ) = (base + Σ_groups ⟨D_g, D_g·H_g⟩ + 2⟨D_g, G₀_g⟩) / norm, D = ŵ − W (see module doc).

    W: (C, K) float64; hessians: one (K, K) per conv group (rows of W split evenly);
    g0: one (C/G, K) per group (None: zero); base, norm: floats; kind: a label for reports.
    """

    def __init__(self, W, hessians, g0=None, base=0.0, norm=None, kind="weight_rel_mse", name="layer"):
        self.W = W.detach().to(torch.float64).reshape(W.shape[0], -1)
        C, K = self.W.shape
        self.hessians = [h.to(torch.float64) for h in hessians]
        G = len(self.hessians)
        if G < 1 or C % G or any(h.shape != (K, K) for h in self.hessians):
            raise ValueError(
                f"layer {name!r}: need one ({K}, {K}) Hessian per conv group dividing {C} rows, got "
                f"{[tuple(h.shape) for h in self.hessians]}"
            )
        self.O = C // G
        self.g0 = None if g0 is None else [t.to(torch.float64) for t in g0]
        for h in self.hessians:
            check_finite_tensor(f"layer {name!r}: objective Hessian", h)
        self.base = float(base)
        if norm is None:  # ‖W‖²_H: the loss is relative to the layer's output energy
            norm = sum(
                float(
                    (self.W[i * self.O : (i + 1) * self.O] @ h * self.W[i * self.O : (i + 1) * self.O]).sum()
                )
                for i, h in enumerate(self.hessians)
            )
        self.norm = float(norm) if norm and norm > 0 else 1.0
        self.kind, self.name = kind, name

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def from_inputs(cls, module, x_fp, x_q=None, target="float", name="layer", chunk=64):
        """Statistics of the calibration inputs x_fp (float network) and x_q (quantized
        network; None: x_fp) of `module`, accumulated in float64 over chunks of samples."""
        if target not in TARGETS:
            raise ValueError(f"target={target!r} is not allowed; choose one of {list(TARGETS)}")
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise TypeError(
                f"the layer objective supports nn.Linear and nn.Conv2d, got {type(module).__name__}"
            )
        x_q = x_fp if x_q is None else x_q
        if x_fp.shape != x_q.shape:
            raise ValueError(
                f"layer {name!r}: x_fp shape {tuple(x_fp.shape)} != x_q shape {tuple(x_q.shape)}"
            )
        check_finite_tensor(f"layer {name!r}: calibration input (float network)", x_fp)
        check_finite_tensor(f"layer {name!r}: calibration input (quantized network)", x_q)
        x_t = x_fp if target == "float" else x_q
        same = x_t is x_q or torch.equal(x_t, x_q)
        W = module.weight.detach().to(torch.float64).reshape(module.weight.shape[0], -1)
        C, K = W.shape
        G = module.groups if isinstance(module, nn.Conv2d) else 1
        O = C // G
        Hs = [torch.zeros(K, K, dtype=torch.float64) for _ in range(G)]
        Es = None if same else [torch.zeros(K, K, dtype=torch.float64) for _ in range(G)]
        base = 0.0
        norm = 0.0
        bias = None if module.bias is None else module.bias.detach().to(torch.float64)
        for xt, xq in zip(_chunks(x_t, chunk), _chunks(x_q, chunk)):
            rq = input_rows(module, xq.to(torch.float64))
            rt = rq if same else input_rows(module, xt.to(torch.float64))
            for g in range(G):
                Hs[g] += rq[g].T @ rq[g]
                Wg = W[g * O : (g + 1) * O]
                y = rt[g] @ Wg.T
                if bias is not None:
                    y = y + bias[g * O : (g + 1) * O]
                norm += float((y * y).sum())
                if not same:
                    dx = rt[g] - rq[g]
                    Es[g] += rq[g].T @ dx
                    e = dx @ Wg.T
                    base += float((e * e).sum())
        g0 = None if same else [-(W[g * O : (g + 1) * O] @ Es[g].T) for g in range(G)]
        return cls(W, Hs, g0, base, norm, "output_rel_mse", name)

    @classmethod
    def weight_error(cls, module, name="layer"):
        """Data-free relative weight error ‖ŵ − W‖² / ‖W‖² (H = I)."""
        W = module.weight.detach().to(torch.float64).reshape(module.weight.shape[0], -1)
        G = module.groups if isinstance(module, nn.Conv2d) else 1
        eye = torch.eye(W.shape[1], dtype=torch.float64)
        return cls(W, [eye] * G, None, 0.0, None, "weight_rel_mse", name)

    # ---- evaluation -------------------------------------------------------------------
    def _split(self, M):
        return [M[g * self.O : (g + 1) * self.O] for g in range(len(self.hessians))]

    def residual(self, D):
        """R = D·H + G₀ per group, as one (C, K) tensor in D's dtype (∂L/∂ŵ = 2R / norm)."""
        D = D.reshape(self.W.shape[0], -1)
        parts = []
        for g, Dg in enumerate(self._split(D)):
            R = Dg @ self.hessians[g].to(D.dtype)
            if self.g0 is not None:
                R = R + self.g0[g].to(D.dtype)
            parts.append(R)
        return torch.cat(parts, 0) if len(parts) > 1 else parts[0]

    def value_from(self, D, R):
        """L from D and its residual R (⟨D, D·H + 2G₀⟩ = ⟨D, R + G₀⟩)."""
        D = D.reshape(R.shape)
        quad = (D * R).sum()
        if self.g0 is not None:
            quad = quad + (D * torch.cat(self.g0, 0).to(D.dtype)).sum()
        return (self.base + quad) / self.norm

    def value(self, w_hat):
        """float64 relative loss of a quantized weight (any shape with W's numel)."""
        D = w_hat.detach().to(torch.float64).reshape(self.W.shape) - self.W
        return float(self.value_from(D, self.residual(D)))

    def target_weight(self, percdamp=0.01):
        """W* = W − G₀·(H + λI)⁻¹, λ = percdamp·mean(diag H): the weight whose H-weighted
        error GPTQ minimizes for this target (W itself when G₀ = 0)."""
        if self.g0 is None:
            return self.W.clone()
        parts = []
        for g, H in enumerate(self.hessians):
            lam = percdamp * float(torch.diag(H).mean()) or 1e-12
            Hd = H + lam * torch.eye(H.shape[0], dtype=H.dtype)
            X = torch.linalg.solve(Hd, self.g0[g].T).T  # G₀·Hd⁻¹ (Hd symmetric)
            parts.append(self._split(self.W)[g] - X)
        return torch.cat(parts, 0)
