"""Batch-norm folding: conv/linear followed by batch norm becomes one conv/linear with bias.

Quantization happens after folding, so the integer codes represent the folded weights that
the simulator runs (docs/ARITHMETIC.md §8).
"""

import copy

import torch
import torch.fx as fx
from torch import nn


def _fold_into(layer, bn):
    """Return a copy of `layer` (Conv2d/Linear) with eval-mode `bn` folded in (float64 math)."""
    w = layer.weight.detach().double()
    b = (
        layer.bias.detach().double()
        if layer.bias is not None
        else torch.zeros(w.shape[0], dtype=torch.float64)
    )
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    inv = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    new = copy.deepcopy(layer)
    shape = (-1,) + (1,) * (w.dim() - 1)
    new.weight = nn.Parameter((w * inv.reshape(shape)).to(layer.weight.dtype))
    new.bias = nn.Parameter(((b - bn.running_mean.detach().double()) * inv + beta).to(layer.weight.dtype))
    return new


def fold_batchnorm(model):
    """A traced copy of `model` (eval mode) in which every Conv2d→BatchNorm2d and
    Linear→BatchNorm1d pair is folded. A batch norm that follows anything else, or whose
    input is also used elsewhere, is an error naming it (it cannot be folded exactly)."""
    model = copy.deepcopy(model).eval()
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0]
        ok = (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and isinstance(modules[src.target], (nn.Conv2d, nn.Linear))
            and len(src.users) == 1
        )
        if not ok:
            raise ValueError(
                f"batch norm {node.target!r} does not directly follow a conv/linear used only by it; "
                "cannot fold it"
            )
        folded = _fold_into(modules[src.target], modules[node.target])
        parent, _, name = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, folded)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
