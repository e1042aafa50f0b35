"""Transformer exporter: tiny CharTransformer / MiniLM-shaped models -> integer graph, against
the float64 fake-quant twin and the float model; the oracle and the CPU backend agree on a
sample bit for bit (every stage of every node)."""

import numpy as np
import pytest
import torch

from nupes_sim.reference.api import quantize_model
from nupes_sim.reference.export_transformer import export_charlm, export_minilm
from nupes_sim.reference.models import CharTransformer, MiniLM

from .toy import tiny_minilm


def _quantized(model, wbits=8):
    qm, _ = quantize_model(model, method="rtn", wbits=wbits, exponent=1.0, progress=False)
    return qm.eval()


@pytest.fixture(scope="module")
def charlm():
    torch.manual_seed(0)
    model = CharTransformer("abcdefghij", d_model=16, n_heads=2, n_layers=1, context=8).eval()
    with torch.no_grad():  # a trained-looking spread instead of std 0.02 everywhere
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    qm = _quantized(model)
    ids = torch.randint(0, 10, (16, 8), generator=torch.Generator().manual_seed(1))
    return model, qm, export_charlm(qm, ids), ids


def test_charlm_integer_graph_tracks_its_twin(charlm):
    model, qm, ex, ids = charlm
    twin = ex.fake_quant(ids).numpy()
    integer = ex.integer(ids.numpy())
    with torch.no_grad():
        ref = model(ids).double().reshape(-1, 10).numpy()
    assert integer.shape == twin.shape == (16 * 8, 10)
    # rounding differences flip an occasional 8-bit code; the logits must stay close
    scale = np.abs(twin).max()
    assert np.abs(integer - twin).mean() < 0.02 * scale
    assert (integer.argmax(1) == twin.argmax(1)).mean() > 0.9
    assert np.corrcoef(integer.ravel(), ref.ravel())[0, 1] > 0.98


def test_charlm_oracle_equals_cpu_on_a_sample(charlm):
    _, _, ex, ids = charlm
    a = ex.graph.run(ids[:1].numpy(), backend="numpy", intermediates=True)
    b = ex.graph.run(ids[:1].numpy(), backend="cpu", intermediates=True)
    n = 0
    for name, st in a.stages.items():
        for k, v in st.items():
            assert (b.stages[name][k] == v).all(), (name, k)
            n += v.size
    assert n > 1000


def test_data_driven_charlm_weights_calibrate_on_ids(charlm):
    """quantize_weights: a data-driven method calibrates the char LM on its ids (quantize_model
    casts them to float; PaddedIds casts them back) and the result exports."""
    from nupes_sim.reference.transformer_pipeline import quantize_weights

    model, _, _, ids = charlm
    qm, rep = quantize_weights("charlm", model, "gptq_power", 4, ids)
    assert isinstance(qm, CharTransformer) and all(r["loss_kind"] == "output_rel_mse" for r in rep["layers"])
    ex = export_charlm(qm.eval(), ids)
    assert np.isfinite(ex.integer(ids[:2].numpy())).all()


def test_charlm_refuses_long_sequences(charlm):
    _, qm, _, _ = charlm
    with pytest.raises(ValueError, match="exceeds the model's context"):
        export_charlm(qm, torch.zeros(1, 9, dtype=torch.long))


def test_minilm_shaped_export_with_padding_mask():
    model = tiny_minilm()
    qm = _quantized(model)
    ids = torch.randint(1, 20, (6, 8), generator=torch.Generator().manual_seed(2))
    ids[0, 5:] = 0  # padded
    ex = export_minilm(qm, ids)
    mask = (ids != 0).long()
    with torch.no_grad():
        ref = model(ids, mask).double().reshape(-1, 16).numpy()
    twin = ex.fake_quant(ids).numpy()
    integer = ex.integer(ids.numpy())
    keep = mask.reshape(-1).numpy() == 1
    cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    assert cos(twin[keep], ref[keep]).mean() > 0.95
    assert cos(integer[keep], twin[keep]).mean() > 0.98


def test_data_driven_minilm_weights_calibrate_on_padded_ids_and_export_bit_exact():
    """quantize_weights: a data-driven method on MiniLM calibrates on padded ids through
    PaddedIds (mask = ids != pad), and the result exports to a graph whose oracle and CPU
    backend agree on every stage of a sample."""
    from nupes_sim.reference.transformer_pipeline import PaddedIds, quantize_weights

    model = tiny_minilm()
    ids = torch.randint(1, 20, (8, 8), generator=torch.Generator().manual_seed(3))
    ids[0, 4:] = 0
    with torch.no_grad():  # the wrapper is the model with the padding mask
        assert torch.equal(PaddedIds(model, 0)(ids), model(ids, (ids != 0).long()))
    qm, rep = quantize_weights("minilm", model, "gptq_power", 4, ids, pad=0)
    assert len(rep["layers"]) == 6 and all(r["loss_kind"] == "output_rel_mse" for r in rep["layers"])
    assert isinstance(qm, MiniLM) and qm.encoder.layer[0].attention.self.query.nupes_quant.bits == 4
    ex = export_minilm(qm.eval(), ids)
    a = ex.graph.run(ids[:1].numpy(), backend="numpy", intermediates=True)
    b = ex.graph.run(ids[:1].numpy(), backend="cpu", intermediates=True)
    n = 0
    for name, st in a.stages.items():
        for k, v in st.items():
            assert (b.stages[name][k] == v).all(), (name, k)
            n += v.size
    assert n > 1000
