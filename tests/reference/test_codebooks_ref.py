"""NF (QLoRA NormalFloat, absmax per channel or group) and Hessian-weighted k-means codebooks,
with and without GPTQ (#14 item 3): hand-made known answers, equality with the float64
fake-quant path, GPTQ onto fixed tables, and the exported integer layers (the simulator's
CodebookFormat) against the float64 fake quantization within the derived bound
(docs/ARITHMETIC.md §9: codebook entries are rounded like power entries)."""

import numpy as np
import pytest
import torch
from torch import nn

from nupes_sim.formats import CodebookFormat, CodeRange
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.baselines import NF_CODEBOOK, fake_layer, weighted_kmeans
from nupes_sim.reference.codebooks import CodebookWeight, codebook_layer, kmeans_weight, nf_weight
from nupes_sim.reference.export import ExportConfig, export_model
from nupes_sim.reference.gptq import gptq
from nupes_sim.reference.objective import LayerObjective


def test_nf_known_answer_per_group():
    """A row that is 2·NF4 (permuted) in group 0 and 0.5·NF4 in group 1: codes are the
    permutation, the tables absmax·NF4, the decode exact; an all-zero group has absmax 1."""
    nf = NF_CODEBOOK(4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    W = torch.cat([2 * nf[perm], 0.5 * nf, torch.zeros(16)]).reshape(1, 48)
    codes, values = nf_weight(W, 4, "group", 16)
    assert codes[0, :16].tolist() == perm.tolist() and codes[0, 16:32].tolist() == list(range(16))
    assert values.shape == (1, 3, 16) and torch.equal(values[0, 0], 2 * nf) and torch.equal(values[0, 2], nf)
    assert (codes[0, 32:] == 7).all() and float(nf[7]) == 0.0  # the exact 0 of NF
    q = CodebookWeight(codes, values, 4, "nf", "group", 16)
    assert torch.equal(q.decode(), W)
    f = q.format()
    assert isinstance(f, CodebookFormat) and f.range == CodeRange(4, False) and f.granularity == "group"
    assert np.array_equal(f.decode_real(codes.numpy(), f.scale_index((1, 48))), W.numpy())  # bit for bit


def test_kmeans_known_answer_and_padding():
    """Two clusters per row, weights pulling each centroid to its heavier member; a group of 2
    inputs at 2 bits gets 2 centroids, the last repeated to fill the 4-entry table."""
    W = torch.tensor([[0.0, 0.1, 1.0, 1.2, -2.0, -2.0, 3.0, 3.0]], dtype=torch.float64)
    sens = torch.tensor([[1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    codes, values = kmeans_weight(W, sens, 2)
    dec = values[0][codes[0]]
    assert torch.allclose(
        dec, torch.tensor([0.075, 0.075, 1.1, 1.1, -2.0, -2.0, 3.0, 3.0], dtype=torch.float64)
    )
    assert torch.equal(dec, weighted_kmeans(W, sens, 2)[0])
    c2, v2 = kmeans_weight(W, sens, 2, "group", 2)
    assert v2.shape == (1, 4, 4) and torch.equal(
        v2[0, 2], torch.tensor([-2.0, -2.0, -2.0, -2.0], dtype=torch.float64)
    )
    assert torch.equal(
        CodebookWeight(c2, v2, 2, "kmeans", "group", 2).decode(), W
    )  # 2 values per group: exact


def _data(seed=0, K=32, n=128):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=g) / K**0.5
    return torch.randn(n, K, generator=g) @ A + 0.3


@pytest.mark.parametrize(  # the fake path's k-means is per channel (per group is new here)
    "method, gran, gs",
    [("nf", "channel", None), ("nf", "group", 8), ("gptq_nf", "channel", None), ("gptq_nf", "group", 8)]
    + [("kmeans", "channel", None)],
)
def test_codebook_weights_equal_the_fake_quant_path(method, gran, gs):
    torch.manual_seed(0)
    lin = nn.Linear(32, 8).double()
    obj = LayerObjective.from_inputs(lin, _data().double(), None, "local", "fc")
    start, qw = codebook_layer(method, lin, obj, 3, gran, gs, True, name="fc")
    fake, fake_start = fake_layer(method, lin, obj, 3, gran, gs, True)
    assert torch.equal(qw.decode(), fake) and torch.equal(start.decode(), fake_start)  # bit for bit
    assert int(qw.codes.max()) <= 7 and int(qw.codes.min()) >= 0


@pytest.mark.parametrize("method", ["gptq_nf", "gptq_kmeans"])
@pytest.mark.parametrize("gran, gs", [("channel", None), ("group", 16)])
def test_gptq_onto_the_codebook_lowers_the_layer_loss(method, gran, gs):
    torch.manual_seed(0)
    lin = nn.Linear(32, 16).double()
    obj = LayerObjective.from_inputs(lin, _data(3).double(), None, "local", "fc")
    start, qw = codebook_layer(method, lin, obj, 3, gran, gs, True, name="fc")
    assert qw.method == method and start.method == method[5:]
    assert obj.value(qw.decode()) < 0.9 * obj.value(start.decode())
    if method == "gptq_kmeans":  # GPTQ onto the fixed tables: every value is a table entry
        assert torch.equal(qw.values, start.values)


def test_gptq_with_identity_hessian_is_nearest_table_value():
    """H = I: the inverse has no off-diagonal terms, so no column compensates another and GPTQ
    onto a fixed table is plain nearest value (the TableElement's codes = k-means assignment)."""
    from nupes_sim.reference.codebooks import TableElement

    W = torch.randn(6, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    codes, values = kmeans_weight(W, torch.ones_like(W), 3)
    c, _, q = gptq(W, torch.eye(20, dtype=torch.float64), TableElement(), "channel", None, values, 128, 0.0)
    assert torch.equal(c, codes) and torch.equal(q, values.gather(1, codes))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.mark.parametrize(
    "method, wbits, gran, gs",
    [
        ("gptq_nf", 4, "group", 4),
        ("nf", 3, "channel", None),
        ("gptq_kmeans", 3, "channel", None),
        ("kmeans", 4, "group", 4),
    ],
)
def test_exported_layers_match_fake_quant_within_the_derived_bound(method, wbits, gran, gs):
    torch.manual_seed(1)
    net = _Net().eval()
    X = torch.randn(48, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    qm, rep = quantize_model(net, method, wbits, calib=X, progress=False, granularity=gran, group_size=gs)
    assert all(isinstance(m.nupes_quant, CodebookWeight) for m in (qm.conv, qm.fc))
    assert all(
        not l.get("fake_quant_only") and l["loss_after"] <= l["loss_before"] + 1e-12 for l in rep["layers"]
    )
    ex = export_model(qm, X, ExportConfig())
    for node in ex.graph.nodes:
        if getattr(node.layer, "w_codes", None) is not None:
            assert node.layer.meta["w_format"]["kind"] == "codebook" and node.layer.w_range == CodeRange(
                wbits, False
            )
    codes = ex.encode_input(X.numpy())
    r = ex.graph.run(codes, backend="numpy", intermediates=True)
    assert np.array_equal(r.output, ex.graph.run(codes, backend="cpu").output)
    # each MAC layer against float64 on its own input codes (§9, power activations):
    # |acc - (Σ ŵx̂ + b)/unit| <= 1/2 + Σ(|W̃| + |X|)/2
    for i, node in enumerate(ex.graph.nodes):
        L, op = node.layer, ex.ops[i]
        if op.kind != "mac":
            continue
        w, wf = ex.weights[op.name]
        assert np.array_equal(
            wf.decode_real(w.reshape(w.shape[0], -1), wf.scale_index(w.shape)).reshape(w.shape),
            op.module.nupes_quant.decode().numpy(),
        )  # the twin's weights, bit for bit
        src = node.inputs[0]
        prev = r.stages[src]["out"] if src in r.stages else codes
        xf = ex.formats[op.inputs[0]]
        xr = torch.from_numpy(xf.decode_real(prev))
        acc = r.stages[node.name]["acc_exact"]
        W = torch.from_numpy(
            L.w_table.lut[L.w_table_index, L.w_codes.reshape(L.w_codes.shape[0], -1).astype(np.int64)].astype(
                np.float64
            )
        )
        wr = op.module.nupes_quant.decode()
        b = op.module.bias.detach().double()
        if isinstance(op.module, nn.Conv2d):
            cols = nn.functional.unfold(xr, 3, padding=1).transpose(1, 2)  # (B, HW, K)
            ref = (cols @ wr.reshape(4, -1).T + b) / torch.as_tensor(L.unit)
            Wt_sum = W.abs().sum(1)
            Xs = (cols.abs() * 2.0**L.x_table.frac_bits).sum(2)  # (B, HW)
            bound = 0.5 + 0.5 * Wt_sum[None, None, :] + 0.5 * Xs[..., None]
            got = torch.from_numpy(acc.astype(np.float64)).flatten(2).transpose(1, 2)  # (B, HW, O)
        else:
            ref = (xr @ wr.T + b) / torch.as_tensor(L.unit)
            bound = (
                0.5
                + 0.5 * W.abs().sum(1)[None, :]
                + 0.5 * (xr.abs() * 2.0**L.x_table.frac_bits).sum(1)[:, None]
            )
            got = torch.from_numpy(acc.astype(np.float64))
        assert ((got - ref).abs() <= bound + 1e-9 * (ref.abs() + 1)).all(), node.name
    logits = r.output * ex.logit_unit()
    assert (logits.argmax(1) == ex.fake_quant(X).numpy().argmax(1)).mean() >= 0.8


def test_product_datapath_is_refused_naming_the_field():
    torch.manual_seed(0)
    net, X = _Net().eval(), torch.randn(16, 4, 4, 4)
    qm, _ = quantize_model(net, "nf", 4, calib=X, progress=False, granularity="group", group_size=4)
    with pytest.raises(ValueError, match="datapath='product' is not allowed for codebook weights"):
        export_model(qm, X, ExportConfig(datapath="product", act_exponent=0.7))


def test_transformer_export_takes_codebook_weights():
    """The MiniLM exporter builds codebook layers too (NF4 per group of 8, GPTQ)."""
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
    qw, _ = quantize_model(
        wrapped, "gptq_nf", 4, calib=ids, progress=False, granularity="group", group_size=8
    )
    ex = export_minilm(qw.m.eval(), ids)
    kinds = {
        n.layer.meta["w_format"]["kind"]
        for n in ex.graph.nodes
        if getattr(n.layer, "w_codes", None) is not None
    }
    assert kinds == {"codebook"}
    twin, integer = ex.fake_quant(ids).numpy(), ex.integer(ids.numpy())
    cos = (twin * integer).sum(1) / np.linalg.norm(twin, axis=1) / np.linalg.norm(integer, axis=1)
    assert cos.mean() > 0.98
