"""A tiny ResNet-style model (BN, residual add, pools) and a stand-in power quantizer,
for exporter tests that must not depend on the optimizer or on trained weights."""

import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)


class ToyNet(nn.Module):
    def __init__(self, c=4, classes=3):
        super().__init__()
        self.stem, self.bn, self.relu = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.blk, self.mp = Block(c), nn.MaxPool2d(2)
        self.gap, self.fl, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.fl(self.gap(self.mp(self.blk(self.relu(self.bn(self.stem(x))))))))


def toy_model(seed=0):
    torch.manual_seed(seed)
    net = ToyNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return net.eval()


def power_rtn(model, bits=4, a=0.7):
    """Attach per-channel power RTN codes (nupes_quant) to every conv/linear."""
    M = 2 ** (bits - 1) - 1
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach().double().reshape(m.weight.shape[0], -1).numpy()
            s = np.abs(w).max(1) ** a / M
            q = np.clip(np.round(np.sign(w) * np.abs(w) ** a / s[:, None]), -M, M)
            m.nupes_quant = SimpleNamespace(
                codes=torch.tensor(q.reshape(m.weight.shape)),
                scales=torch.tensor(s),
                exponent=a,
                bits=bits,
                granularity="channel",
                group_size=0,
            )
    return model


def tiny_minilm(layers=1):
    """A MiniLM of the shipped architecture at toy size (vocabulary 20, width 16, 2 heads,
    context 8), seeded: what the transformer exporter and results tests run on."""
    from nupes_sim.reference.models import MiniLM

    torch.manual_seed(0)
    return MiniLM(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        layer_norm_eps=1e-12,
    ).eval()


def correlated(n, k, seed=0):
    """(n, k) float64 inputs with correlated features and a per-sample offset (a Hessian far
    from diagonal), for optimizer tests."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(k, k, generator=g, dtype=torch.float64) / math.sqrt(k)
    return torch.randn(n, k, generator=g, dtype=torch.float64) @ A + 0.5 * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )
