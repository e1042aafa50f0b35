"""Full-range power formats (#14 item 1) on the cuda backend against the oracle: layers whose
weights and inputs hold every code (bits 2 and 4) and the 8-bit extremes (-128 with -128,
127 and the unsigned 255: the largest product-table index 128·255), every datapath;
uniform weights with per-channel zero points (#14 item 2); codebook weights (#14 item 3)."""

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip
from test_full_range import every_code_layer, full

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Linear

_REASON = cuda_unavailable_reason()


@pytest.fixture(scope="module")
def cb():
    if _REASON is not None:
        require_or_skip(_REASON)
    from nupes_sim.cuda import backend

    return backend


def same(cb, layer, x):
    want = oracle.run_layer(layer, x)
    got = cb.run_layer(layer, x)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and (got[k] == want[k]).all(), k
    return want


@pytest.mark.parametrize(
    "datapath, xkind",
    [("operand", "full"), ("operand", "uniform"), ("product", "full"), ("product", "unsigned")],
)
@pytest.mark.parametrize(
    "bits, overflow, width", [(2, "wrap", 64), (4, "wrap", 64), (4, "saturate", 20)]
)  # the simulator runs every thread in Python: 4-bit saturate covers the sequential kernels
def test_every_code(cb, bits, datapath, xkind, overflow, width):
    layer, x = every_code_layer(bits, datapath, xkind, overflow, width)
    same(cb, layer, x)


@pytest.mark.parametrize("datapath", ["operand", "product"])
@pytest.mark.parametrize("xkind", ["full", "unsigned"])
def test_8bit_extremes(cb, datapath, xkind):
    w = np.array([[-128, 127, -127, 0], [127, -128, 1, -128]])
    xf = full(8, 0.6, 0.03) if xkind == "full" else PowerFormat(8, False, 0.6, 0.03)
    x = (
        np.array([[-128, 127, -128, 0], [127, -128, 1, -128]])
        if xkind == "full"
        else np.array([[255, 0, 255, 1]])
    )
    layer = Linear.build(
        "x8",
        w,
        full(8, 0.6, np.array([0.02, 0.05]), granularity="channel"),
        xf,
        datapath=datapath,
        w_frac_bits=10,
        x_frac_bits=8,
        product_frac_bits=12,
        acc=Accumulator(48, "wrap"),
        out_fmt=UniformFormat(8, True, 0.5, 0),
        mult_bits=15,
    )
    assert layer.datapath != "product" or layer.p_table.lut.shape[1] == 128 * xf.range.max_magnitude + 1
    same(cb, layer, x.astype(np.int8) if xkind == "full" else x)


@pytest.mark.parametrize("signed, xkind", [(False, "power"), (True, "uniform")])
def test_uniform_zero_point_weights(cb, signed, xkind):
    """#14 item 2: per-channel zero points absorbed by the decode LUT rows (every code, 4 bits)."""
    from test_uniform_weights import _every_code_layer

    for overflow, width in (("wrap", 48), ("saturate", 20)):
        layer, x, _, _ = _every_code_layer(4, signed, xkind, overflow, width)
        same(cb, layer, x)


@pytest.mark.parametrize(
    "gran, xkind, overflow, width", [("group", "power", "wrap", 48), ("channel", "uniform", "saturate", 20)]
)
def test_codebook_weights(cb, gran, xkind, overflow, width):
    """#14 item 3: per-channel / per-group tables of reals as decode LUT rows (every code, 4 bits);
    one overflow mode per case (the CPU tests cover both for every granularity)."""
    from test_codebook import _every_code_layer as codebook_layer

    layer, x, _, _ = codebook_layer(4, gran, xkind, overflow, width)
    same(cb, layer, x)
