"""Bad input raises ValueError/TypeError naming the field and what is allowed."""

import numpy as np
import pytest

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph, get_backend
from nupes_sim.layers import Accumulator, Add, Conv2d, Linear

WF = PowerFormat(4, True, 0.5, 0.1)
XF = PowerFormat(8, False, 0.5, 0.01)


def lin(**kw):
    return Linear.build("fc", np.zeros((2, 3), int), WF, XF, **kw)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(width=7), ValueError, "acc_width=7"),
        (dict(width=65), ValueError, "acc_width=65"),
        (dict(overflow="clamp"), ValueError, "overflow='clamp'"),
        (dict(tile=-1), ValueError, "tile=-1"),
        (dict(width=32.0), TypeError, "acc_width"),
    ],
)
def test_accumulator_validation(kw, exc, match):
    with pytest.raises(exc, match=match):
        Accumulator(**kw)


def test_codes_outside_the_format_are_rejected_not_clipped():
    with pytest.raises(ValueError, match=r"fc.w_codes contains 8, outside the allowed range \[-7, 7\]"):
        Linear.build("fc", np.array([[8, 0]]), WF, XF)
    with pytest.raises(ValueError, match=r"-8, outside"):
        Linear.build("fc", np.array([[-8, 0]]), WF, XF)
    L = lin()
    with pytest.raises(ValueError, match=r"fc input contains 256"):
        oracle.run_layer(L, np.array([[0, 256, 1]]))
    with pytest.raises(ValueError, match=r"fc input contains -1"):
        oracle.run_layer(L, np.array([[0, -1, 1]]))


def test_dtype_and_shape_errors():
    L = lin()
    with pytest.raises(TypeError, match="integer dtype"):
        oracle.run_layer(L, np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"expected \(batch, 3\)"):
        oracle.run_layer(L, np.zeros((1, 4), int))
    with pytest.raises(TypeError, match="integer dtype"):
        Linear.build("fc", np.zeros((2, 3)), WF, XF)
    C = Conv2d.build("c", np.zeros((2, 1, 3, 3), int), WF, XF)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        oracle.run_layer(C, np.zeros((1, 1, 2, 2), int))
    with pytest.raises(ValueError, match="expected"):
        oracle.run_layer(C, np.zeros((1, 2, 5, 5), int))
    A = Add.build("add", XF, XF)
    with pytest.raises(ValueError, match="shapes differ"):
        oracle.run_layer(A, np.zeros((1, 2), int), np.zeros((1, 3), int))


def test_layer_setting_errors():
    with pytest.raises(ValueError, match="datapath='fast'"):
        lin(datapath="fast")
    with pytest.raises(TypeError, match="product-domain datapath needs power formats"):
        Linear.build("fc", np.zeros((2, 3), int), WF, UniformFormat(8, True, 0.1), datapath="product")
    with pytest.raises(ValueError, match="frac_bits=41"):
        lin(w_frac_bits=41)
    with pytest.raises(ValueError, match="rounding='nearest'"):
        lin(rounding="nearest")
    with pytest.raises(ValueError, match="bias outside|accumulator range"):
        lin(bias=[1e9, 0.0], acc=Accumulator(16))
    with pytest.raises(ValueError, match="groups"):
        Conv2d.build("c", np.zeros((3, 1, 3, 3), int), WF, XF, groups=2)
    with pytest.raises(ValueError, match="stride"):
        Conv2d.build("c", np.zeros((2, 1, 3, 3), int), WF, XF, stride=0)
    with pytest.raises(ValueError, match="same grid"):
        Add.build("add", XF, XF, frac_bits=3).__class__(
            "a2",
            XF.range,
            XF.range,
            Add.build("x", XF, XF, frac_bits=3).a_table,
            Add.build("y", XF, XF, frac_bits=4).a_table,
            Accumulator(),
        )


def test_backend_and_graph_errors():
    with pytest.raises(ValueError, match="backend='gpu'"):
        get_backend("gpu")
    with pytest.raises(TypeError, match="unsupported layer type"):
        Graph([object()])
    with pytest.raises(ValueError, match="duplicate layer name"):
        Graph([lin(), lin()])
    with pytest.raises(ValueError, match="at least one layer"):
        Graph([])


def test_int64_representation_limits_are_errors():
    big = PowerFormat(8, True, 0.2, 2.0)  # decoded values up to 254^5 ≈ 1e12
    with pytest.raises(ValueError, match="2\\^52|2\\^62|int64"):
        Linear.build("fc", np.full((1, 4), 127), big, big, w_frac_bits=20, x_frac_bits=20)
