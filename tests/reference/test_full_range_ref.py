"""Full-range power formats in the reference optimizer (#14 item 1): the quantizer, power/uniform
RTN, GPTQ on the power grid, NUPES and quantize_model take `full_range`, use the code
-2^(b-1), decode bit for bit like the simulator's PowerFormat, and export to full-range layers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nupes_sim.formats import PowerFormat
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.export import ExportConfig, export_model
from nupes_sim.reference.gptq import HessianAccumulator, gptq_layer
from nupes_sim.reference.nupes import NupesConfig, nupes_layer
from nupes_sim.reference.quantizer import PowerQuantizer
from nupes_sim.reference.rtn import rtn_quantize


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("a", [0.5, 1.0, 1.7])
def test_quantizer_range_scale_and_decode_match_the_contract(bits, a):
    h = 2 ** (bits - 1)
    q = PowerQuantizer(bits, True, a, "channel", full_range=True)
    assert (q.qmin, q.qmax, q.divisor) == (-h, h - 1, h - 0.5)
    assert PowerQuantizer(bits, True, a, "channel").divisor == h - 1  # symmetric: as before
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(5, 40, generator=g, dtype=torch.float64)
    w[:, 0] = -w.abs().amax(1)  # |w|^a/s <= M + 1/2: -2^(b-1) only at the tie (half-even)
    s = q.scales(w)
    assert np.array_equal(s.numpy(), np.power(w.abs().amax(1).numpy(), a) / (h - 0.5))
    codes = q.encode(w, s)
    assert set(codes[:, 0].tolist()) <= {-h, -h + 1} and int(codes.max()) <= h - 1
    assert np.array_equal(codes.numpy(), q.encode_np(w.numpy(), s.numpy()))  # torch == numpy
    fmt = PowerFormat(bits, True, a, s.numpy(), "channel", full_range=True)
    assert np.array_equal(codes.numpy(), fmt.encode(w.numpy()))  # the simulator's encoder
    dec = fmt.decode_real(codes.numpy(), fmt.scale_index(codes.shape))
    assert np.array_equal(q.decode(codes, s).numpy(), dec)  # bit for bit


def test_quantizer_refuses_bad_full_range():
    with pytest.raises(ValueError, match="full_range=True is not allowed with signed=False"):
        PowerQuantizer(4, False, 1.0, "tensor", full_range=True)
    with pytest.raises(TypeError, match="full_range must be a bool, got 'yes'"):
        PowerQuantizer(4, True, 1.0, "tensor", full_range="yes")
    with pytest.raises(ValueError, match="full_range=True is not allowed with method='nf'"):
        quantize_model(nn.Linear(4, 2), "nf", 4, full_range=True, progress=False)


def _layer_and_hessian(K=48, O=6, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(K, O).double()
    X = torch.randn(256, K, dtype=torch.float64) @ torch.randn(K, K, dtype=torch.float64) / math.sqrt(K)
    acc = HessianAccumulator(K)
    acc.add(X)
    return lin, X, acc.H


@pytest.mark.parametrize("a", [1.0, 0.7])
def test_rtn_gptq_and_nupes_on_the_full_range(a):
    lin, X, H = _layer_and_hessian()
    r = rtn_quantize(lin.weight, 3, exponent=a, full_range=True)
    assert r.full_range and r.codes.dtype == torch.int8 and int(r.codes.min()) >= -4
    qg = gptq_layer(lin, [H], 3, a, blocksize=16, full_range=True)
    assert qg.full_range and qg.quantizer.qmin == -4 and int(qg.codes.min()) == -4
    err = lambda q: float(((X @ (lin.weight.detach() - q.decode()).T) ** 2).mean())  # noqa: E731
    assert err(qg) < err(r)  # GPTQ compensates on the full grid too
    qn, info = nupes_layer(lin, 3, init=qg, x_fp=X.float(), config=NupesConfig(steps=15), full_range=True)
    assert qn.full_range and int(qn.codes.min()) >= -4 and int(qn.codes.max()) <= 3
    assert info["loss_final"] <= info["loss_init"]
    with pytest.raises(ValueError, match="full_range=False but init has full_range=True"):
        nupes_layer(lin, 3, init=qg, x_fp=X.float(), config=NupesConfig(steps=1))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ["gptq", "nupes"])
def test_quantize_model_exports_full_range_layers(method):
    torch.manual_seed(0)
    net, X = _Net().eval(), torch.randn(64, 12)
    qm, rep = quantize_model(net, method, 3, calib=X, full_range=True, progress=False, steps=10)
    assert rep["full_range"] is True
    assert all(int(m.nupes_quant.codes.min()) >= -4 for m in (qm.fc1, qm.fc2))
    assert min(int(m.nupes_quant.codes.min()) for m in (qm.fc1, qm.fc2)) == -4
    ex = export_model(qm, X, ExportConfig())
    for node in ex.graph.nodes:
        assert node.layer.w_range.full_range and node.layer.w_range.qmin == -4
    codes = ex.encode_input(X.numpy())
    r = ex.graph.run(codes, backend="numpy")
    assert np.array_equal(r.output, ex.graph.run(codes, backend="cpu").output)
    logits = r.output * ex.logit_unit()
    ref = ex.fake_quant(X).numpy()
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(logits - ref).max() <= 0.05 * np.abs(ref).max()
