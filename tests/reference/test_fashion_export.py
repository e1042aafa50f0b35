"""Issue acceptance on real data: the exported integer Fashion-MNIST ResNet, run by the
Numba CPU simulator on the whole test set, agrees with its float64 fake-quantized twin on
>= 99.9 % of top-1 predictions, and its logits obey the last layer's derived bound
(docs/ARITHMETIC.md §9) against float64 execution on the same input codes."""

import numpy as np
import pytest
import torch

from nupes_sim.reference.data import FASHION_MISSING, fashion_available

pytestmark = pytest.mark.skipif(not fashion_available(), reason=FASHION_MISSING)


@pytest.fixture(scope="module")
def exported():
    from nupes_sim.reference.data import fashion_tensors
    from nupes_sim.reference.pipeline import quantize_to_graph

    xtr, _ = fashion_tensors("train")
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:256]]
    ex, _ = quantize_to_graph(
        "fashion-resnet", calib=calib, method="powerquant", wbits=4, abits=8, progress=False
    )
    return ex


def test_integer_model_agrees_with_fake_quant_on_the_test_set(exported):
    from nupes_sim.reference.data import fashion_tensors

    ex = exported
    xte, yte = fashion_tensors("test")
    fc = ex.graph.nodes[-1].layer
    w, wfmt = ex.weights[ex.ops[-1].name]
    wd = wfmt.decode_real(w, wfmt.scale_index(w.shape))
    bias = ex.ops[-1].module.bias.detach().double().numpy()
    Wt = np.abs(fc.w_table.lut[fc.w_table_index, fc.w_codes.astype(np.int64) - fc.w_range.qmin]).sum(1)
    same, n, overflow = 0, 0, 0
    for a in range(0, len(xte), 1000):
        x = xte[a : a + 1000]
        fq = ex.fake_quant(x).numpy()
        r = ex.graph.run(ex.encode_input(x.numpy()), backend="cpu", intermediates=True)
        overflow += sum(r.overflow.values())
        same += int((r.output.argmax(1) == fq.argmax(1)).sum())  # unit > 0: argmax of acc = of logits
        n += len(x)
        # last layer: |acc - exact| <= 1/2 + sum_k (|W~_k| + |X_k|)/2 in LSBs, X = x̂·2^Fx
        xin = r.stages[ex.graph.nodes[-2].name]["out"]
        xr = ex.formats[ex.ops[-2].out].decode_real(xin)
        exact = (xr @ wd.T + bias) / fc.channel_units()
        X = np.abs(xr).sum(1) * 2.0**fc.x_table.frac_bits
        bound = 0.5 + 0.5 * (Wt[None, :] + X[:, None]) + 1e-9 * (np.abs(exact) + 1)
        assert (np.abs(r.output - exact) <= bound).all()
    assert overflow == 0
    assert same / n >= 0.999, f"top-1 agreement {same / n:.4%} < 99.9 %"
