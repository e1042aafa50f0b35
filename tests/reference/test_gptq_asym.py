"""GPTQ on the reference's standard grid (2^b levels, per-channel min-max, zero point), #14
item 2: the grid on hand-made rows, the exportable AsymWeight equal to the fake-quant path,
and the exported integer layer against the float64 fake quantization within the derived bound
(docs/ARITHMETIC.md §9, uniform weights: W̃ = W exactly)."""

import numpy as np
import pytest
import torch
from torch import nn

from nupes_sim.formats import UniformRange, UniformWeightFormat
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.baselines import AsymWeight, asym_params, fake_layer, gptq_asym_layer
from nupes_sim.reference.export import ExportConfig, export_model
from nupes_sim.reference.objective import LayerObjective


def test_asymmetric_grid_known_answer():
    """IST-DASLab Quantizer (sym=False) by hand: range widened to contain 0, scale =
    (max − min)/(2^b − 1), zero = round(−min/scale) (half-even), q = clamp(round(w/s) + z)."""
    W = torch.tensor(
        [[-0.75, 0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [-1.0, -0.25, -0.5, -0.75]], dtype=torch.float64
    )
    s, z = asym_params(W, 3)
    assert s.tolist() == [0.25, 2 / 7, 1 / 7] and z.tolist() == [3, 4, 7]
    lin = nn.Linear(4, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    q = gptq_asym_layer(lin, None, 3, calibrated=False)
    assert q.codes.dtype == torch.uint8
    assert q.codes.tolist() == [[0, 3, 5, 7], [4, 4, 4, 4], [0, 5, 3, 2]]
    assert q.decode()[0].tolist() == [-0.75, 0.0, 0.5, 1.0] and (q.decode()[1] == 0).all()
    f = q.format()
    assert isinstance(f, UniformWeightFormat) and f.range == UniformRange(3, False)
    codes = q.codes.numpy().astype(np.int64)
    assert np.array_equal(f.decode_real(codes, f.scale_index(codes.shape)), q.decode().numpy())  # bit for bit


def _data(seed=0, K=24, n=128):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=g) / K**0.5
    return torch.randn(n, K, generator=g) @ A + 0.3


def test_exportable_gptq_equals_the_fake_quant_path_and_improves_on_rtn():
    torch.manual_seed(0)
    lin = nn.Linear(24, 8).double()
    X = _data().double()
    obj = LayerObjective.from_inputs(lin, X, None, "local", "fc")
    qw = gptq_asym_layer(lin, obj.hessians, 3, obj.target_weight(0.01), name="fc")
    fake, start = fake_layer("gptq_asym", lin, obj, 3, "channel", None, True)
    assert torch.equal(qw.decode(), fake)  # the same GPTQ, now with its integer codes
    assert torch.equal(gptq_asym_layer(lin, None, 3, calibrated=False).decode(), start)
    assert obj.value(qw.decode()) < obj.value(start)
    assert int(qw.codes.max()) <= 7


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(24, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("wbits", [3, 4])
def test_exported_layer_matches_fake_quant_within_the_derived_bound(wbits):
    torch.manual_seed(1)
    net, X = _Net().eval(), _data(1, n=96)
    qm, rep = quantize_model(net, "gptq_asym", wbits, calib=X, progress=False)
    assert all(isinstance(m.nupes_quant, AsymWeight) for m in (qm.fc1, qm.fc2))
    assert all(not l.get("fake_quant_only") and l["loss_after"] <= l["loss_before"] for l in rep["layers"])
    ex = export_model(qm, X, ExportConfig())
    for node in ex.graph.nodes:
        L = node.layer
        assert isinstance(L.w_range, UniformRange) and L.meta["w_format"]["kind"] == "uniform_weight"
    codes = ex.encode_input(X.numpy())
    r = ex.graph.run(codes, backend="numpy", intermediates=True)
    assert np.array_equal(r.output, ex.graph.run(codes, backend="cpu").output)
    # each layer against float64 on its own input codes: |acc - (Σ ŵx̂ + b)/unit| <= 1/2 + Σ|W̃|/2
    prev = codes
    for i, node in enumerate(ex.graph.nodes):
        L, op = node.layer, ex.ops[i]
        w, wf = ex.weights[op.name]
        xr = ex.formats[op.inputs[0]].decode_real(prev)
        wr = wf.decode_real(w, wf.scale_index(w.shape))
        assert np.array_equal(wr, op.module.nupes_quant.decode().numpy())  # the twin's weights
        b = op.module.bias.detach().double().numpy()
        ref = (xr @ wr.T + b) / L.unit[None, :]
        acc = r.stages[node.name]["acc_exact"]
        Wt = L.w_table.lut[L.w_table_index, L.w_codes.astype(np.int64) - L.w_range.qmin]
        bound = 0.5 + 0.5 * np.abs(Wt).sum(1)[None, :] + 1e-9 * (np.abs(xr) @ np.abs(wr).T / L.unit + 1)
        assert (np.abs(acc - ref) <= bound).all(), node.name
        prev = r.stages[node.name]["out"]
    logits = r.output * ex.logit_unit()
    assert (logits.argmax(1) == ex.fake_quant(X).numpy().argmax(1)).mean() >= 0.9


def test_product_datapath_is_refused_naming_the_field():
    torch.manual_seed(0)
    net, X = _Net().eval(), _data(2, n=32)
    qm, _ = quantize_model(net, "gptq_asym", 4, calib=X, progress=False)
    with pytest.raises(ValueError, match="datapath='product' is not allowed for uniform zero-point weights"):
        export_model(qm, X, ExportConfig(datapath="product", act_exponent=0.7))


def test_transformer_export_takes_uniform_weights():
    """The MiniLM exporter (the model #14's table needs this row for) builds the same layers."""
    from nupes_sim.reference.export_transformer import export_minilm
    from nupes_sim.reference.models import MiniLM

    torch.manual_seed(0)
    kw = dict(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = MiniLM(**kw, max_position_embeddings=8, layer_norm_eps=1e-12).eval()
    ids = torch.randint(1, 20, (6, 8), generator=torch.Generator().manual_seed(2))
    wrapped = type(
        "Ids", (nn.Module,), {"forward": lambda self, x: self.m(x.long(), torch.ones_like(x).long())}
    )()
    wrapped.m = model
    qw, _ = quantize_model(wrapped, "gptq_asym", 8, calib=ids, progress=False)
    ex = export_minilm(qw.m.eval(), ids)
    kinds = {
        n.layer.meta["w_format"]["kind"]
        for n in ex.graph.nodes
        if getattr(n.layer, "w_codes", None) is not None
    }
    assert kinds == {"uniform_weight"}
    twin, integer = ex.fake_quant(ids).numpy(), ex.integer(ids.numpy())
    cos = (twin * integer).sum(1) / np.linalg.norm(twin, axis=1) / np.linalg.norm(integer, axis=1)
    assert cos.mean() > 0.98
