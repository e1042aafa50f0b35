"""Exporter: folded + quantized torch model -> integer graph, against its float64 twin."""

import numpy as np
import pytest
import torch
from torch import nn

from nupes_sim.layers import Accumulator
from nupes_sim.reference.export import ExportConfig, export_model
from nupes_sim.reference.fold import fold_batchnorm

from .toy import power_rtn, toy_model


def test_fold_batchnorm_is_exact_in_float64():
    net = toy_model().double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), net(x), rtol=1e-12, atol=1e-12)


def test_unfoldable_batchnorm_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(x)

    with pytest.raises(ValueError, match="cannot fold"):
        fold_batchnorm(Bad())


@pytest.mark.parametrize("datapath", ["operand", "product"])
def test_integer_graph_matches_fake_quant(datapath):
    model = power_rtn(fold_batchnorm(toy_model()))
    torch.manual_seed(1)
    x = torch.randn(24, 1, 8, 8)
    cfg = ExportConfig(
        datapath=datapath, act_exponent=0.7 if datapath == "product" else None, acc=Accumulator(48, "exact")
    )
    ex = export_model(model, x, cfg)
    ref, vals = ex.fake_quant(x, return_values=True)
    r = ex.graph.run(ex.encode_input(x.numpy()), backend="numpy", intermediates=True)
    assert sum(r.overflow.values()) == 0
    # First layer (identical input codes): a code differs from the float64 quantizer only
    # where the integer accumulator and the exact float value lie on different sides of a
    # threshold, within the derived LUT error bound.
    stem = ex.graph.nodes[0].layer
    st = r.stages["stem"]
    want = ex.formats[ex.ops[0].out].encode(vals[ex.ops[0].out].numpy())
    diff = st["out"] != want
    if diff.any():
        cols = st["acc"][diff].astype(np.float64)
        exact_acc = _pre_relu_acc(ex, x)[diff]
        thr = stem.requant.thr[0]
        between = [(np.minimum(a, e) < thr) & (thr <= np.maximum(a, e)) for a, e in zip(cols, exact_acc)]
        assert all(b.any() for b in between)
        assert np.abs(cols - exact_acc).max() <= _layer_bound(stem)
    logits = r.output * ex.logit_unit()
    assert (logits.argmax(1) == ref.numpy().argmax(1)).mean() >= 0.95
    # the logits obey the derived bound of the last layer against float64 execution of
    # that layer on the same input codes (ARITHMETIC.md §9)
    fc = ex.graph.nodes[-1].layer
    xin = r.stages[ex.graph.nodes[-2].name]["out"]
    w, wfmt = ex.weights[ex.ops[-1].name]
    xr = ex.formats[ex.ops[-2].out].decode_real(xin)
    ref_fc = (
        xr @ wfmt.decode_real(w, wfmt.scale_index(w.shape)).T
        + ex.ops[-1].module.bias.detach().double().numpy()
    )
    err = np.abs(r.output - ref_fc / fc.unit)
    if datapath == "operand":
        X = xr * 2.0**fc.x_table.frac_bits
        Wt = fc.w_table.lut[fc.w_table_index, fc.w_codes.astype(np.int64) - fc.w_range.qmin]
        bound = 0.5 + 0.5 * (np.abs(Wt).sum(1)[None, :] + np.abs(X).sum(1)[:, None])
    else:
        bound = 0.5 + fc.k / 2
    bound = bound + 1e-9 * (np.abs(ref_fc) / fc.unit + 1)  # float64 reference error, generous
    assert (err <= bound).all()


def _pre_relu_acc(ex, x):
    """Exact float value of the first layer in accumulator LSBs (before requantization)."""
    import torch.nn.functional as F

    op = ex.ops[0]
    w, fmt = ex.weights[op.name]
    wd = torch.from_numpy(
        fmt.decode_real(w.reshape(w.shape[0], -1), fmt.scale_index(w.shape)).reshape(w.shape)
    )
    xin = torch.from_numpy(ex.input_format.decode_real(ex.encode_input(x.numpy())))
    m = op.module
    y = F.conv2d(xin, wd, m.bias.detach().double(), m.stride, m.padding, m.dilation, m.groups)
    return y.numpy() / ex.graph.nodes[0].layer.unit


def _layer_bound(layer):
    """Worst-case |acc - exact| in LSBs over all inputs (ARITHMETIC.md §9, maximized over x)."""
    if layer.datapath == "product":
        return 0.5 + layer.k / 2
    Wt = layer.w_table.lut[
        layer.w_table_index,
        layer.w_codes.reshape(layer.out_channels, -1).astype(np.int64) - layer.w_range.qmin,
    ]
    xmax = np.abs(layer.x_table.lut).max() + 0.5
    return float((0.5 + 0.5 * (np.abs(Wt).sum(1) + layer.k * xmax)).max()) * (1 + 1e-9)


def test_unsupported_op_lists_supported_ones():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.act = nn.Sigmoid()

        def forward(self, x):
            return self.act(self.fc(x))

    with pytest.raises(ValueError, match="supported: Conv2d, Linear"):
        export_model(power_rtn(Odd()), torch.randn(2, 2))


def test_unquantized_layer_is_an_error():
    with pytest.raises(ValueError, match="no quantized weights"):
        export_model(fold_batchnorm(toy_model()), torch.randn(2, 1, 8, 8))
