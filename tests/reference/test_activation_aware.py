"""One activation calibrator for the exporter and the optimizer, and weights optimized against
the integer graph's activations (export.ActivationWalk driving quantize_model)."""

import numpy as np
import pytest
import torch

from nupes_sim.reference import export as export_mod
from nupes_sim.reference.activation import EXPONENT_GRID, calibrate_activation, quantize_act
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.calibrate import PowerActQuant
from nupes_sim.reference.export import ActivationWalk, ExportConfig, export_model
from nupes_sim.reference.fold import fold_batchnorm
from nupes_sim.reference.objective import LayerObjective
from nupes_sim.reference.pipeline import quantize_for_export

from .toy import toy_model


def test_one_calibrator_and_one_quantizer():
    assert export_mod.calibrate_format is calibrate_activation
    x = torch.relu(torch.randn(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    f = calibrate_activation(x, 4)
    assert not f.signed and f.range.qmax == 15 and f.exponent in EXPONENT_GRID
    # scale: the largest sample maps exactly onto the largest code
    assert f.decode_real(np.array([15.0]))[0] == pytest.approx(float(x.max()), rel=1e-12)
    # the grid point chosen has the least MSE among all grid points (checked exhaustively)
    errs = [
        float(((quantize_act(calibrate_activation(x, 4, exponent=a), x) - x) ** 2).mean())
        for a in EXPONENT_GRID
    ]
    assert errs[EXPONENT_GRID.index(f.exponent)] == min(errs)
    assert calibrate_activation(torch.randn(100), 4).signed
    act = PowerActQuant(f)  # the optimizer's module quantizes exactly like the exporter
    assert torch.equal(act(x), quantize_act(f, x))
    assert torch.equal(act(-x), torch.zeros_like(x))  # unsigned: negatives saturate to code 0
    with pytest.raises(ValueError, match="non-finite"):
        calibrate_activation(torch.tensor([1.0, float("nan")]), 4, name="probe")


@pytest.mark.parametrize("method", ["gptq_power", "nupes"])
def test_weights_are_optimized_against_the_graphs_activations(method):
    net = fold_batchnorm(toy_model())
    x = torch.randn(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = ExportConfig(act_bits=4)
    kw = dict(target="float", **(dict(nupes_init="gptq_power", steps=5) if method == "nupes" else {}))
    walk = {}

    def input_fn(name, qmodel):
        walk.setdefault("w", ActivationWalk(qmodel, x, cfg))
        return walk["w"].input_of(name)

    qmodel, rep = quantize_model(net, method, 3, calib=x, input_fn=input_fn, progress=False, **kw)
    ex = export_model(qmodel, x, walk=walk["w"])
    # the walk that fed the quantizer is the export: a fresh export gives the same formats
    ex2 = export_model(qmodel, x, ExportConfig(act_bits=4))
    assert set(ex2.formats) == set(ex.formats)
    for k, f in ex.formats.items():
        g = ex2.formats[k]
        assert (f.bits, f.signed, f.exponent) == (g.bits, g.signed, g.exponent) and np.array_equal(
            f.scale, g.scale
        )
    # every layer's reported loss is its objective on the graph's fake-quant input of that layer
    _, vals = ex.fake_quant(x, return_values=True)
    fmodules = dict(net.named_modules())
    fp_in = {}
    hooks = [
        fmodules[op.name].register_forward_pre_hook(
            lambda m, a, n=op.name: fp_in.__setitem__(n, a[0].detach())
        )
        for op in ex.ops
        if op.kind == "mac"
    ]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for op, layer in zip([o for o in ex.ops if o.kind == "mac"], rep["layers"]):
        assert layer["name"] == op.name
        obj = LayerObjective.from_inputs(
            fmodules[op.name], fp_in[op.name], vals[op.inputs[0]], "float", op.name
        )
        w_hat = op.module.nupes_quant.decode()
        assert layer["loss_after"] == pytest.approx(obj.value(w_hat), rel=1e-9)
    # quantize_for_export runs exactly this; with activation_aware=False the quantizer sees
    # float activations and the losses differ (the activations did reach the quantizer)
    ex3, rep3 = quantize_for_export(net, cfg, x, method=method, wbits=3, progress=False, **kw)
    assert rep3["activation_aware"]
    assert [r["loss_after"] for r in rep3["layers"]] == [r["loss_after"] for r in rep["layers"]]
    _, rep_f = quantize_for_export(
        net, cfg, x, method=method, wbits=3, progress=False, activation_aware=False, **kw
    )
    assert not rep_f["activation_aware"]
    assert [r["loss_after"] for r in rep_f["layers"]] != [r["loss_after"] for r in rep["layers"]]


def test_input_fn_needs_sequential_calibrated_weights_only():
    net = fold_batchnorm(toy_model())
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="input_fn needs"):
        quantize_model(net, "gptq", 4, abits=8, calib=x, input_fn=lambda n, q: None, progress=False)
    with pytest.raises(ValueError, match="input_fn: layer 'stem' got None"):
        quantize_model(net, "gptq", 4, calib=x, input_fn=lambda n, q: None, progress=False)
