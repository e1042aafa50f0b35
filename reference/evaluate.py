"""Metrics for the reference models (pure functions) and loaders of the shipped checkpoints.

Checkpoints live in the repository's ``data/`` folder (see data/README.md):
``data/fashion_resnet.pt`` and ``data/charlm_kjv.pt``. Each is a dict with keys
``kind``, ``config`` (constructor arguments), ``state_dict`` (float32), ``metrics`` and
``command`` (how it was produced).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .models import CharTransformer, FashionResNet

FASHION_CHECKPOINT = "fashion_resnet.pt"
CHARLM_CHECKPOINT = "charlm_kjv.pt"


def data_dir() -> Path:
    """The repository's ``data/`` folder (``$NUPES_SIM_DATA`` overrides it).

    The checkpoints are not part of the installed wheel: with a non-editable install there is
    no repository next to the package and this raises FileNotFoundError saying so."""
    env = os.environ.get("NUPES_SIM_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent  # <repo>/reference
    cand = here.parent / "data"
    if (here.parent / "pyproject.toml").is_file() and cand.is_dir():
        return cand
    raise FileNotFoundError(
        f"cannot locate the repository's data/ folder from {here} (is nupes-sim installed without its "
        "source tree?); use an editable install (`make venv`) or set NUPES_SIM_DATA to the folder that "
        f"holds {FASHION_CHECKPOINT} and {CHARLM_CHECKPOINT}"
    )


def _load_checkpoint(path, default_name, kind):
    path = Path(path) if path is not None else data_dir() / default_name
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; it is produced by "
            f"`python -m nupes_sim.reference.train {kind}` (see data/README.md)"
        )
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path} holds a {ckpt.get('kind')!r} checkpoint, not {kind!r}")
    return ckpt


def load_fashion_model(path=None) -> FashionResNet:
    """The shipped FashionResNet (eval mode, float32)."""
    ckpt = _load_checkpoint(path, FASHION_CHECKPOINT, "fashion")
    model = FashionResNet(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_charlm(path=None) -> CharTransformer:
    """The shipped KJV character LM (eval mode, float32); its vocabulary is ``model.vocab``."""
    ckpt = _load_checkpoint(path, CHARLM_CHECKPOINT, "charlm")
    model = CharTransformer(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def checkpoint_metrics(path) -> dict:
    """The ``metrics`` dict stored in a checkpoint."""
    return dict(torch.load(path, map_location="cpu", weights_only=True).get("metrics", {}))


@torch.no_grad()
def fashion_logits(model, images, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def fashion_top1(model, images, labels, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on normalized images (N, 1, 28, 28)."""
    labels = torch.as_tensor(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("no images")
    pred = fashion_logits(model, images, batch_size).argmax(1)
    return float((pred == labels).double().mean())


@torch.no_grad()
def char_perplexity(
    model, text, context: int | None = None, stride: int | None = None, batch_size: int = 64
) -> float:
    """Per-character perplexity exp(mean NLL) of ``text`` (str, or int64 tensor of token ids).

    The text is cut into consecutive non-overlapping windows of ``context`` + 1 characters
    (default: the model's context); each window predicts its last ``context`` characters
    from the ones before it, within the window (so early characters of each window see a
    short history, as in training). Every character after the first is predicted exactly
    once, except for a final partial window which is scored too."""
    model.eval()
    context = context or model.context
    ids = model.encode(text) if isinstance(text, str) else torch.as_tensor(text, dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError("need at least two characters")
    stride = stride or context
    starts = list(range(0, ids.numel() - 1, stride))
    nll, count = 0.0, 0
    full = [s for s in starts if s + context + 1 <= ids.numel()]
    for i in range(0, len(full), batch_size):
        idx = torch.stack([ids[s : s + context + 1] for s in full[i : i + batch_size]])
        logits = model(idx[:, :-1])
        nll += float(
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                idx[:, 1:].reshape(-1),
                reduction="sum",
            ).double()
        )
        count += idx[:, 1:].numel()
    rest = [s for s in starts if s + context + 1 > ids.numel()]
    for s in rest:
        idx = ids[s:][None]
        logits = model(idx[:, :-1])
        nll += float(F.cross_entropy(logits[0], idx[0, 1:], reduction="sum").double())
        count += idx.shape[1] - 1
    return math.exp(nll / count)


def embedding_agreement(emb_ref, emb_q) -> dict:
    """Agreement of two embeddings of the same N >= 2 sentences (rows; any norm).

    mean_cos: mean over sentences of cos(emb_ref[i], emb_q[i]).
    nn_agreement: fraction of sentences whose nearest *other* sentence by cosine is the same
    under both embeddings."""
    a = F.normalize(torch.as_tensor(emb_ref).double(), dim=1)
    b = F.normalize(torch.as_tensor(emb_q).double(), dim=1)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"embeddings must have the same 2-D shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    n = a.shape[0]
    if n < 2:
        raise ValueError("need at least two sentences for nearest-neighbour agreement")
    mean_cos = float((a * b).sum(1).mean())
    eye = torch.eye(n, dtype=torch.bool)
    nn_a = (a @ a.T).masked_fill(eye, float("-inf")).argmax(1)
    nn_b = (b @ b.T).masked_fill(eye, float("-inf")).argmax(1)
    return dict(mean_cos=mean_cos, nn_agreement=float((nn_a == nn_b).double().mean()))
