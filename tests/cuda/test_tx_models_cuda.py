"""Full-model identity (#10): a sample of the char LM's and MiniLM's inputs gives identical
integers, every stage of every node, on the oracle, the CPU backend and the CUDA backend
(under NUMBA_ENABLE_CUDASIM=1 in `make test`; on hardware via cuda/gpu_check.sh).

The models are the shipped classes (CharTransformer, MiniLM) at tiny sizes with random
weights, quantized by the reference and exported by reference/export_transformer.py: the
same op sequence as the shipped checkpoints, small enough for the simulator (a few tokens).
"""

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip

torch = pytest.importorskip("torch")

_REASON = cuda_unavailable_reason()


def _spread(model):
    with torch.no_grad():  # a trained-looking spread instead of std 0.02 everywhere
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def charlm():
    from nupes_sim.reference.api import quantize_model
    from nupes_sim.reference.export_transformer import TransformerExportConfig, export_charlm
    from nupes_sim.reference.models import CharTransformer

    torch.manual_seed(0)
    model = _spread(CharTransformer("abcdefghij", d_model=16, n_heads=2, n_layers=1, context=8))
    qm, _ = quantize_model(model, method="powerquant", wbits=4, progress=False)
    calib = torch.randint(0, 10, (8, 6), generator=torch.Generator().manual_seed(1))
    ex = export_charlm(qm.eval(), calib, TransformerExportConfig(datapath="product"))
    return ex.graph, calib[:1].numpy()


def minilm():
    from nupes_sim.reference.api import quantize_model
    from nupes_sim.reference.export_transformer import export_minilm
    from nupes_sim.reference.models import MiniLM

    torch.manual_seed(0)
    model = MiniLM(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        layer_norm_eps=1e-12,
    )
    qm, _ = quantize_model(_spread(model), method="rtn", wbits=8, exponent=1.0, progress=False)
    calib = torch.randint(1, 20, (8, 6), generator=torch.Generator().manual_seed(2))
    calib[0, 4:] = 0
    ex = export_minilm(qm.eval(), calib)
    ids = calib[:2].numpy().copy()
    ids[1, 3:] = 0  # padded: the key-padding mask takes part
    return ex.graph, ids


@pytest.mark.cuda
@pytest.mark.parametrize("make", [charlm, minilm], ids=["charlm", "minilm"])
def test_oracle_cpu_and_cuda_give_identical_integers(make):
    if _REASON is not None:
        require_or_skip(_REASON)
    graph, ids = make()
    types = {type(n.layer).__name__ for n in graph.nodes}
    assert {"Embedding", "MatMul", "Softmax", "LayerNorm", "ElementwiseTable", "Linear", "Add"} <= types
    runs = {b: graph.run(ids, backend=b, intermediates=True) for b in ("numpy", "cpu", "cuda")}
    n = 0
    for name, st in runs["numpy"].stages.items():
        for s, want in st.items():
            for b in ("cpu", "cuda"):
                got = runs[b].stages[name][s]
                bad = np.flatnonzero(got != want)
                assert got.shape == want.shape and bad.size == 0, (b, name, s, bad[:5])
            n += want.size
    assert n > 2000
    assert np.array_equal(runs["cuda"].output, runs["numpy"].output)
