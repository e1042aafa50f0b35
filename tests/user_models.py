"""Small PyTorch models that are not built into nupes-sim: a user's own architectures for the
`quantize` command-line tests (imported as 'user_models:TinyResNet' with tests/ on PYTHONPATH)."""

import torch
from torch import nn


class TinyResNet(nn.Module):
    """Residual CNN on 1x8x8 inputs (the digits size): stem conv+BN, one residual block,
    global average pool, linear head."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.c1(x))
        x = torch.relu(self.c2(y) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


class ViewNet(nn.Module):
    """Uses x.view(x.size(0), -1), GELU and LayerNorm: three unsupported constructs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(144)
        self.fc = nn.Linear(144, 3)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(self.norm(x))


def trained(cls=TinyResNet, seed=0):
    """An instance with deterministic random weights and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    m = cls()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return m.eval()
