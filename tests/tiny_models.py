"""Tiny integer graphs for the golden/verify/audit/CLI tests (built with the layer builders)."""

import numpy as np

from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph, Node
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d

CONV_INPUT_SHAPE = (3, 8, 8)
ADD_INPUT_SHAPE = (6,)


def conv_net(seed=0, acc_width=20, overflow="saturate", datapath="operand"):
    """conv(3->4, 3x3, pad 1, per-channel weights) -> maxpool 2 -> avgpool 2 -> flatten -> linear(16->5)."""
    rng = np.random.default_rng(seed)
    xf = PowerFormat(4, False, 0.7, 0.05)
    wf = PowerFormat(4, True, 0.7, np.full(4, 0.08) * (1 + np.arange(4) / 4), "channel")
    hf = PowerFormat(4, False, 0.7, 0.3)
    pf = PowerFormat(4, False, 0.7, 0.3)
    conv = Conv2d.build(
        "conv",
        rng.integers(-7, 8, (4, 3, 3, 3)),
        wf,
        xf,
        datapath=datapath,
        padding=1,
        acc=Accumulator(acc_width, overflow, 4),
        out_fmt=hf,
        relu=True,
        bias=rng.normal(size=4),
        w_frac_bits=8,
        x_frac_bits=6,
        product_frac_bits=10,
        tensor_id=1,
    )
    mp = MaxPool2d("pool", 2)
    ap = AvgPool2d.build(
        "avg", hf, frac_bits=6, acc=Accumulator(16, "wrap"), kernel=2, out_fmt=pf, tensor_id=4
    )
    fl = Flatten("flat")
    wf2 = PowerFormat(4, True, 0.7, 0.1)
    fc = Linear.build(
        "fc",
        rng.integers(-7, 8, (5, 16)),
        wf2,
        pf,
        acc=Accumulator(24, "wrap"),
        bias=rng.normal(size=5),
        w_frac_bits=8,
        x_frac_bits=6,
        out_fmt=UniformFormat(8, True, 0.05),
        mult_bits=15,
        tensor_id=7,
    )
    return Graph([conv, mp, ap, fl, fc])


def add_net(seed=0):
    """Two linears on the same input, summed by a residual add (power-format requant)."""
    rng = np.random.default_rng(seed)
    xf = PowerFormat(4, True, 0.8, 0.1)
    of = PowerFormat(4, True, 0.8, 0.2)
    a = Linear.build(
        "a",
        rng.integers(-3, 4, (4, 6)),
        PowerFormat(3, True, 0.8, 0.2),
        xf,
        acc=Accumulator(16, "saturate"),
        out_fmt=of,
        datapath="product",
        product_frac_bits=8,
        tensor_id=1,
    )
    b = Linear.build(
        "b",
        rng.integers(-7, 8, (4, 6)),
        PowerFormat(4, True, 0.8, 0.1),
        xf,
        acc=Accumulator(16, "wrap"),
        out_fmt=of,
        tensor_id=4,
        bias=rng.normal(size=4),
        w_frac_bits=6,
        x_frac_bits=4,
    )
    add = Add.build(
        "add",
        of,
        of,
        frac_bits=6,
        acc=Accumulator(12, "saturate"),
        out_fmt=PowerFormat(4, True, 0.8, 0.3),
        tensor_id=7,
    )
    return Graph([Node(a, ("input",)), Node(b, ("input",)), Node(add, ("a", "b"))])


def conv_inputs(n, seed=0):
    return np.random.default_rng(seed).integers(0, 16, (n,) + CONV_INPUT_SHAPE)


def add_inputs(n, seed=0):
    return np.random.default_rng(seed).integers(-7, 8, (n,) + ADD_INPUT_SHAPE)
