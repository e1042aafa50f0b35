"""Layer configurations the reference RTL (hdl/nupes_linear.v) is checked on."""
import numpy as np

from nupes_sim.formats import CodebookFormat, PowerFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Linear


def linear(name, seed, datapath, overflow, tile, acc_width, per_channel, out_scale=0.3, k=16, o=6, relu=False,
           full=False):
    rng = np.random.default_rng(seed)
    xf = PowerFormat(4, False, 0.7, 0.05)
    scale = np.full(o, 0.08) * (1 + np.arange(o) / 3) if per_channel else 0.1
    wf = PowerFormat(4, True, 0.7, scale, "channel" if per_channel else "tensor", full_range=full)
    kw = dict(w_frac_bits=5, x_frac_bits=4) if datapath == "operand" else dict(product_frac_bits=3)
    fc = Linear.build("fc", rng.integers(-8 if full else -7, 8, (o, k)), wf, xf, datapath=datapath,
                      acc=Accumulator(acc_width, overflow, tile),
                      out_fmt=PowerFormat(4, True, 0.7, out_scale, full_range=full),
                      bias=rng.normal(size=o) * 0.3, relu=relu, tensor_id=3, **kw)
    return Graph([fc])


CONFIGS = {
    # per-channel LUT rows, saturating 12-bit accumulator, thresholds with "never reached"
    "operand_sat": dict(seed=1, datapath="operand", overflow="saturate", tile=0, acc_width=11, per_channel=True),
    # wrapping accumulator, one shared LUT row
    "operand_wrap": dict(seed=2, datapath="operand", overflow="wrap", tile=0, acc_width=11, per_channel=False),
    # product domain (per-channel scales factor out of the sum), tiles of 4 saturating products
    "product_tile": dict(seed=3, datapath="product", overflow="saturate", tile=4, acc_width=9, per_channel=True),
    # full-range codes (#14): weights and output codes reach -8, product index 8·15
    "product_full": dict(seed=4, datapath="product", overflow="saturate", tile=4, acc_width=9, per_channel=True,
                         full=True),
}


def codebook(name, seed, k=16, o=6, g=8):
    """Unsigned 4-bit codes indexing a table of 16 reals per (channel, group) (#14 item 3: any
    LUT-decoded weight, e.g. NF4 per group): the RTL must read the codes as unsigned."""
    rng = np.random.default_rng(seed)
    xf = PowerFormat(4, False, 0.7, 0.05)
    wf = CodebookFormat(4, rng.normal(0, 0.5, (o, k // g, 16)), "group", g)
    fc = Linear.build("fc", rng.integers(0, 16, (o, k)), wf, xf, w_frac_bits=5, x_frac_bits=4,
                      acc=Accumulator(11, "saturate"), out_fmt=PowerFormat(4, True, 0.7, 0.3),
                      bias=rng.normal(size=o) * 0.3, tensor_id=3)
    return Graph([fc])


#: configurations built by another function than `linear`
OTHER = {"operand_codebook": (codebook, dict(seed=5))}
CONFIGS = {**CONFIGS, **{n: kw for n, (_, kw) in OTHER.items()}}


def graph(name):
    if name in OTHER:
        fn, kw = OTHER[name]
        return fn(name, **kw)
    return linear(name, **CONFIGS[name])
