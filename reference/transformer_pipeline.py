"""The shipped transformers as built-ins of the command line: `nupes-sim quantize charlm|minilm`
and `nupes-sim demo --model charlm|minilm` (one place that knows where their weights, their
inputs and their calibration data come from).

Inputs are token ids of a fixed length T (the exporter fixes T; docs/ARITHMETIC.md §16):
char LM windows of T characters of the KJV (calibration from the training text, evaluation
from the held-out text), MiniLM verses tokenized and padded or truncated to T tokens
(calibration and evaluation verses drawn apart, as transformer_results.py does).
"""

import torch

BUILTINS = ("charlm", "minilm")
DATA_DRIVEN = ("gptq", "gptq_power", "nupes")


def check_builtin(name):
    if name not in BUILTINS:
        raise ValueError(f"model {name!r} is not a built-in transformer; choose one of {', '.join(BUILTINS)}")


def load_builtin(name):
    """(float model in eval mode, MiniLM tokenizer or None)."""
    check_builtin(name)
    if name == "charlm":
        from .evaluate import load_charlm

        return load_charlm(), None
    from .models import load_minilm

    return load_minilm()


def builtin_inputs(name, n, seq_len, part="calib", model=None, tokenizer=None, seed=0):
    """(n, seq_len) int64 token ids: part 'calib' (training text / calibration verses) or
    'eval' (held-out text / evaluation verses). MiniLM pads with [PAD] (its pad id is
    `pad_id(tokenizer)`)."""
    import numpy as np

    check_builtin(name)
    if part not in ("calib", "eval"):
        raise ValueError(f"part={part!r}; choose 'calib' or 'eval'")
    if name == "charlm":
        from .data import kjv_split

        train, held = kjv_split()
        if model is None:
            model, _ = load_builtin(name)
        if seq_len > model.context:
            raise ValueError(f"--seq-len {seq_len} exceeds the char LM's context {model.context}")
        ids = model.encode(train if part == "calib" else held)
        if part == "eval":  # consecutive windows of the held-out text
            return torch.stack([ids[i * seq_len : (i + 1) * seq_len] for i in range(n)])
        starts = torch.randint(0, ids.numel() - seq_len, (n,), generator=torch.Generator().manual_seed(seed))
        return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    from .data import load_kjv_verses

    if tokenizer is None:
        _, tokenizer = load_builtin(name)
    verses = load_kjv_verses()
    pick = np.random.default_rng(seed).choice(len(verses), 4000, replace=False)
    sel = pick[2000 : 2000 + n] if part == "calib" else pick[:n]
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(pad_id=pad_id(tokenizer), pad_token="[PAD]", length=seq_len)
    return torch.tensor([e.ids for e in tokenizer.encode_batch([verses[i] for i in sel])], dtype=torch.long)


def pad_id(tokenizer):
    return tokenizer.token_to_id("[PAD]")


class PaddedIds(torch.nn.Module):
    """A transformer called on token ids alone, so the data-driven weight quantizers calibrate
    on one tensor of ids: MiniLM with the attention mask `ids != pad` (as the integer graph's
    PadMask), the char LM (pad None) as is. The ids are cast back to long: quantize_model
    casts calibration batches to the model's float dtype. `quantize_model` quantizes
    `.model`'s layers in a copy."""

    def __init__(self, model, pad=None):
        super().__init__()
        self.model, self.pad = model, pad

    def forward(self, ids):
        ids = ids.long()
        return self.model(ids) if self.pad is None else self.model(ids, (ids != self.pad).long())


def quantize_weights(name, model, method, wbits, calib, pad=None, progress=False, **kw):
    """(quantized float model, report): data-driven methods calibrate on `calib` (MiniLM
    through PaddedIds with pad id `pad`), NUPES data-driven starts from GPTQ-power; data-free
    ones ignore it."""
    from .api import quantize_model

    if method not in DATA_DRIVEN:
        return quantize_model(model, method=method, wbits=wbits, progress=progress, **kw)
    if method == "nupes":
        kw.setdefault("nupes_init", "gptq_power")
    wrapped = PaddedIds(model, None if name == "charlm" else pad).eval()
    q, rep = quantize_model(wrapped, method=method, wbits=wbits, calib=calib, progress=progress, **kw)
    return q.model, rep


def quantize_builtin(
    name,
    *,
    method="powerquant",
    wbits=4,
    steps=None,
    seq_len=32,
    n_calib=16,
    datapath="operand",
    acc_width=48,
    overflow="saturate",
    seed=0,
    progress=False,
    calib_ids=None,
    act_bits=8,
    full_range=False,
):
    """Quantize a built-in transformer and export it: (float model, ExportedTransformer,
    calibration ids, tokenizer or None). Data-driven methods use the calibration ids for the
    weights too; the activation formats are always calibrated on them (the twin's run).
    full_range: signed weight codes [-2^(b-1), 2^(b-1)-1] (quantize_model's option)."""
    from ..layers import Accumulator
    from .export_transformer import TransformerExportConfig, export_charlm, export_minilm

    model, tok = load_builtin(name)
    calib = (
        torch.as_tensor(calib_ids, dtype=torch.long)
        if calib_ids is not None
        else builtin_inputs(name, n_calib, seq_len, "calib", model, tok, seed)
    )
    kw = {"steps": steps} if method in DATA_DRIVEN else {}
    qmodel, _ = quantize_weights(
        name,
        model,
        method,
        wbits,
        calib,
        None if tok is None else pad_id(tok),
        progress,
        seed=seed,
        full_range=full_range,
        **kw,
    )
    cfg = TransformerExportConfig(datapath=datapath, act_bits=act_bits, acc=Accumulator(acc_width, overflow))
    if name == "charlm":
        ex = export_charlm(qmodel.eval(), calib, cfg)
    else:
        ex = export_minilm(qmodel.eval(), calib, cfg, pad_id=pad_id(tok))
    return model, ex, calib, tok


__all__ = [
    "BUILTINS",
    "load_builtin",
    "builtin_inputs",
    "quantize_builtin",
    "quantize_weights",
    "pad_id",
    "PaddedIds",
    "check_builtin",
]
