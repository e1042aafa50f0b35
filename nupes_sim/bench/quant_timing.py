"""Timings of the quantization methods on one 384×1536 linear with 256 calibration rows (CPU)."""

import time

import torch
from torch import nn

from nupes_sim.reference.gptq import HessianAccumulator, gptq_layer
from nupes_sim.reference.nupes import NupesConfig, nupes_layer
from nupes_sim.reference.powerquant import search_exponent
from nupes_sim.reference.rtn import rtn_quantize


def main():
    torch.manual_seed(0)
    K, C, n = 1536, 384, 256
    X = torch.randn(n, K) @ (torch.randn(K, K) / K**0.5)
    lin = nn.Linear(K, C)
    nn.init.normal_(lin.weight, std=0.02)
    W, Xd = lin.weight.detach().double(), X.double()

    def err(q):
        return float(((Xd @ (W - q.decode()).T) ** 2).mean() / (Xd @ W.T).pow(2).mean())

    t = time.perf_counter()
    q = rtn_quantize(lin.weight, 4)
    print(f"rtn            {time.perf_counter() - t:6.2f}s rel-out-mse {err(q):.4g}")
    t = time.perf_counter()
    a = search_exponent(lin.weight, 4).exponent
    ts = time.perf_counter() - t
    q = rtn_quantize(lin.weight, 4, exponent=a)
    print(f"powerquant     {ts:6.2f}s rel-out-mse {err(q):.4g} (a={a:.4f})")
    acc = HessianAccumulator(K)
    acc.add(Xd)
    t = time.perf_counter()
    q = gptq_layer(lin, [acc.H], 4, 1.0)
    print(f"gptq           {time.perf_counter() - t:6.2f}s rel-out-mse {err(q):.4g}")
    t = time.perf_counter()
    q = gptq_layer(lin, [acc.H], 4, a)
    print(f"gptq_power     {time.perf_counter() - t:6.2f}s rel-out-mse {err(q):.4g}")
    t = time.perf_counter()
    q, info = nupes_layer(lin, 4, exponent=a, x_fp=X, config=NupesConfig())
    print(
        f"nupes (50 st.) {time.perf_counter() - t:6.2f}s rel-out-mse {err(q):.4g} (a: {a:.4f} -> {q.exponent:.4f})"
    )
    t = time.perf_counter()
    q, info = nupes_layer(lin, 4, exponent=a, config=NupesConfig())
    print(
        f"nupes data-free{time.perf_counter() - t:6.2f}s rel-out-mse {err(q):.4g} kept_init={info['kept_init']}"
    )


if __name__ == "__main__":
    main()
