"""The tracing transformer exporter (reference/export_fx.py): a user's own block module
exports and runs bit-equal on the oracle and the CPU backend, tracking its twin and the float
model with the agreement measures of test_export_transformer.py; the shipped CharTransformer
and MiniLM architectures give the same integers through it as through the structural
exporter; unsupported ops are refused before any work with op, source line and the list."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nupes_sim.reference import export_fx
from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.export_fx import SUPPORTED, export_module
from nupes_sim.reference.export_transformer import export_charlm, export_minilm
from nupes_sim.reference.models import CharTransformer, MiniLM

from .toy import tiny_minilm

PAD = 0


class UserBlockLM(nn.Module):
    """A pre-LN block written the way users write them: one qkv Linear chunked, permute and
    transpose for the heads, a causal-mask buffer, a padding mask from the ids, nn.GELU."""

    def __init__(self, vocab=12, T=8, C=16, H=2, sdpa=False):
        super().__init__()
        self.H, self.sdpa = H, sdpa
        self.tok = nn.Embedding(vocab, C)
        self.pos = nn.Embedding(T, C)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(C), nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.out = nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C))
        self.head = nn.Linear(C, vocab)
        self.register_buffer("causal", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, ids):
        B, T = ids.shape
        D = self.qkv.out_features // 3 // self.H
        x = self.tok(ids) + self.pos(torch.arange(T))
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.view(B, T, self.H, D).permute(0, 2, 1, 3)
        k = k.reshape(B, T, self.H, D).transpose(1, 2)
        v = v.view(B, T, self.H, D).transpose(1, 2)
        if self.sdpa:  # the same attention in one call (bool mask: True takes part)
            keep = self.causal[:T, :T] & (ids != PAD)[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(D)
            att = att.masked_fill(~self.causal[:T, :T], float("-inf"))
            att = att + torch.where(ids == PAD, -1e9, 0.0)[:, None, None, :]
            y = F.softmax(att, dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, -1)
        x = x + self.out(y)
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x))


def _quantized(model, wbits=8):
    qm, _ = quantize_model(model, method="rtn", wbits=wbits, exponent=1.0, progress=False)
    return qm.eval()


def _spread(model):
    with torch.no_grad():  # a trained-looking spread instead of the init everywhere
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def user():
    torch.manual_seed(0)
    model = _spread(UserBlockLM())
    ids = torch.randint(1, 12, (16, 8), generator=torch.Generator().manual_seed(1))
    ids[:4, 6:] = PAD  # right padding: no query row is fully masked
    qm = _quantized(model)
    return model, qm, export_module(qm, ids), ids


def test_user_block_tracks_its_twin_and_the_float_model(user):
    model, _, ex, ids = user
    kinds = {type(n.layer).__name__ for n in ex.graph.nodes}
    assert {"Embedding", "Add", "LayerNorm", "Linear", "Slice", "MatMul", "Softmax", "PadMask"} <= kinds
    assert {"ElementwiseTable", "Reshape", "Transpose"} <= kinds
    sm = [n.layer for n in ex.graph.nodes if type(n.layer).__name__ == "Softmax"]
    assert len(sm) == 1 and sm[0].causal and sm[0].masked
    twin = ex.fake_quant(ids).numpy()
    integer = ex.integer(ids.numpy(), backend="numpy")
    with torch.no_grad():
        ref = model(ids).double().reshape(-1, 12).numpy()
    assert integer.shape == twin.shape == ref.shape == (16 * 8, 12)
    # the measures of test_export_transformer.py: 8-bit codes flip now and then, logits stay close
    scale = np.abs(twin).max()
    assert np.abs(integer - twin).mean() < 0.02 * scale
    assert (integer.argmax(1) == twin.argmax(1)).mean() > 0.9
    assert np.corrcoef(integer.ravel(), ref.ravel())[0, 1] > 0.98
    # the twin is the float model with quantized weights and activations, not another model
    assert np.corrcoef(twin.ravel(), ref.ravel())[0, 1] > 0.98


def test_user_block_oracle_equals_cpu_every_stage(user):
    _, _, ex, ids = user
    x = ids[:4].numpy()  # the padded rows
    a = ex.graph.run(x, backend="numpy", intermediates=True)
    b = ex.graph.run(x, backend="cpu", intermediates=True)
    n = 0
    for name, st in a.stages.items():
        for k, v in st.items():
            assert (b.stages[name][k] == v).all(), (name, k)
            n += v.size
    assert set(a.stages) == {nd.name for nd in ex.graph.nodes}
    assert n > 2000


def _same_graph(ex_a, ex_b, ids):
    """Identical integers at the output and at every node with the same layer sequence."""
    la = [type(n.layer).__name__ for n in ex_a.graph.nodes]
    lb = [type(n.layer).__name__ for n in ex_b.graph.nodes]
    ra = ex_a.graph.run(ids, backend="numpy", intermediates=True)
    rb = ex_b.graph.run(ids, backend="numpy", intermediates=True)
    assert (ra.output == rb.output).all()
    assert np.array_equal(ex_a.fake_quant(ids).numpy(), ex_b.fake_quant(ids).numpy())
    return la, lb, ra, rb


def test_scaled_dot_product_attention_exports_to_the_same_integers(user):
    model, qm, ex, ids = user
    sdpa = UserBlockLM(sdpa=True)
    sdpa.load_state_dict(model.state_dict())
    with torch.no_grad():  # the float models agree: the same module written two ways
        assert torch.allclose(sdpa.eval()(ids), model(ids), atol=1e-5)
    la, lb, _, _ = _same_graph(ex, export_module(_quantized(sdpa), ids), ids.numpy())
    assert la == lb


def test_shipped_charlm_through_the_tracer_equals_the_structural_export():
    torch.manual_seed(0)
    model = _spread(CharTransformer("abcdefghij", d_model=16, n_heads=2, n_layers=2, context=8))
    qm = _quantized(model)
    ids = torch.randint(0, 10, (8, 8), generator=torch.Generator().manual_seed(1))
    la, lb, ra, rb = _same_graph(export_charlm(qm, ids), export_module(qm, ids), ids.numpy())
    # the tracer adds no op and drops none (names differ: it names ops by module path)
    assert la == lb
    assert [len(s) for s in ra.stages.values()] == [len(s) for s in rb.stages.values()]


def test_shipped_minilm_through_the_tracer_equals_the_structural_export():
    model = tiny_minilm(2)
    qm = _quantized(model)
    ids = torch.randint(1, 20, (6, 8), generator=torch.Generator().manual_seed(2))
    ids[0, 5:] = PAD
    la, lb, _, _ = _same_graph(
        export_minilm(qm, ids, pad_id=PAD), export_module(qm, ids, pad_id=PAD), ids.numpy()
    )
    # the same layers; the tracer follows the model's order (q, its heads, k, ...)
    assert sorted(la) == sorted(lb)


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, ids):
        x = self.emb(ids)
        x = torch.sort(x, dim=-1).values
        x = torch.cumsum(self.fc(x), dim=1)
        return self.fc(x)


def test_unsupported_ops_are_refused_before_any_work(monkeypatch):
    class NoWork:
        def __init__(self, *a):
            raise AssertionError("the builder ran before the graph was checked")

    monkeypatch.setattr(export_fx, "_Builder", NoWork)
    model = Unsupported().eval()  # not even quantized: nothing but the check may run
    with pytest.raises(ValueError) as e:
        export_module(model, torch.zeros(2, 4, dtype=torch.long))
    msg = str(e.value)
    assert msg.startswith("cannot export 2 op(s) of Unsupported: aten.sort")
    assert "test_export_fx.py:" in msg and "x = torch.sort(x, dim=-1).values" in msg
    assert "aten.cumsum" in msg and "x = torch.cumsum(self.fc(x), dim=1)" in msg
    assert msg.endswith(f"; supported: {SUPPORTED}")


class Biased(nn.Module):
    """Attention with an additive constant that is not a causal mask (ALiBi-like)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.register_buffer("bias", torch.arange(16.0).reshape(4, 4))

    def forward(self, ids):
        x = self.emb(ids)
        att = (x @ x.transpose(-2, -1) + self.bias).softmax(-1)
        return att @ x


class QueryMasked(nn.Module):
    """A padding mask on the query axis: not the key-padding mask the Softmax holds."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)

    def forward(self, ids):
        x = self.emb(ids)[:, None]  # (B, 1, T, C): one head
        att = (x @ x.transpose(-2, -1)).masked_fill((ids == PAD)[:, None, :, None], float("-inf"))
        return att.softmax(-1) @ x


@pytest.mark.parametrize(
    "model, needle",
    [
        (Biased, r"aten.add.Tensor \(a constant mask on scores must be the causal"),
        (QueryMasked, r"aten.masked_fill.Scalar \(the mask does not mask exactly the padded keys"),
    ],
)
def test_a_mask_that_is_not_causal_or_key_padding_is_refused(model, needle):
    with pytest.raises(ValueError, match=needle):
        export_module(model().eval(), torch.zeros(2, 4, dtype=torch.long))


def test_an_attention_mask_input_without_pad_id_is_a_clear_error():
    model = MiniLM(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=16, max_position_embeddings=8).eval()  # fmt: skip
    with pytest.raises(ValueError, match=r"torch.export could not trace MiniLM: TypeError.*needs pad_id="):
        export_module(model, torch.ones(2, 4, dtype=torch.long))  # forward needs attention_mask
