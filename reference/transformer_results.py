"""Acceptance numbers of the integer transformers (issue #10), measured end to end.

    python -m nupes_sim.reference.transformer_results charlm --wbits 4 --method nupes [--chars 20480]
    python -m nupes_sim.reference.transformer_results minilm --wbits 4 --method powerquant [--sentences 200]
    python -m nupes_sim.reference.transformer_results minilm-speed [--sentences 32] [--tokens 24] [--repeat 3]

Char LM: held-out perplexity of the float model, the float64 fake-quant twin and the integer
simulator (CPU backend) on the same non-overlapping windows of T = context characters (each
window predicts its last T characters), W{wbits} weights, A8 activations.
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def charlm(
    wbits=4,
    method="nupes",
    chars=20480,
    n_calib=32,
    steps=None,
    backend="cpu",
    batch=16,
    act_bits=8,
    full_range=False,
):
    from .data import kjv_split
    from .evaluate import load_charlm
    from .export_transformer import TransformerExportConfig, export_charlm
    from .transformer_pipeline import quantize_weights

    model = load_charlm()
    train, held = kjv_split()
    T = model.context
    ids = model.encode(train)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, ids.numel() - T - 1, (max(n_calib, 128),), generator=g)
    calib = torch.stack([ids[s : s + T] for s in starts.tolist()])
    t0 = time.perf_counter()
    qmodel, _ = quantize_weights("charlm", model, method, wbits, calib, steps=steps, full_range=full_range)
    t_quant = time.perf_counter() - t0
    _log(f"quantized ({method}, W{wbits}) in {t_quant:.0f}s")
    t0 = time.perf_counter()
    ex = export_charlm(qmodel, calib[:n_calib], TransformerExportConfig(act_bits=act_bits))
    _log(f"exported {len(ex.graph.nodes)} nodes in {time.perf_counter() - t0:.0f}s")
    h = model.encode(held)
    n_win = math.ceil(chars / T)
    win = torch.stack([h[i * T : i * T + T + 1] for i in range(n_win)])
    nll = {"float": 0.0, "twin": 0.0, "integer": 0.0}
    t0 = time.perf_counter()
    for i in range(0, n_win, batch):
        x, y = win[i : i + batch, :T], win[i : i + batch, 1:].reshape(-1)
        with torch.no_grad():
            outs = {
                "float": model(x).double().reshape(-1, len(model.vocab)),
                "twin": ex.fake_quant(x).reshape(-1, len(model.vocab)),
                "integer": torch.from_numpy(ex.integer(x.numpy(), backend=backend)),
            }
        for k, v in outs.items():
            nll[k] += float(F.cross_entropy(v, y, reduction="sum"))
    n = n_win * T
    res = {k: math.exp(v / n) for k, v in nll.items()}
    res.update(
        chars=n,
        wbits=wbits,
        act_bits=act_bits,
        method=method,
        full_range=bool(full_range),
        seconds_integer=time.perf_counter() - t0,
        seconds_quant=t_quant,
    )
    res["int_vs_twin_pct"] = 100 * (res["integer"] / res["twin"] - 1)
    res["int_vs_float_pct"] = 100 * (res["integer"] / res["float"] - 1)
    return res


def minilm(
    wbits=4,
    method="powerquant",
    n_sent=200,
    T=48,
    backend="cpu",
    batch=16,
    act_bits=8,
    n_calib=128,
    steps=None,
    full_range=False,
):
    """Sentence-embedding cosine (mean pooling over the mask, as models.embed) of the integer
    simulator against the float model and the twin, on the first n_sent of the 2000 verses
    results.py evaluates, padded/truncated to T tokens (the float reference sees the same T).
    Calibration (activation formats; the weights too for data-driven methods): n_calib of the
    2000 other verses, padded the same way (128: NUPES W4A8 reaches cosine 0.9775 to float on
    the first 32 verses, 0.9637 with 32 calibration verses)."""
    import numpy as np

    from .data import load_kjv_verses
    from .evaluate import embedding_agreement
    from .export_transformer import TransformerExportConfig, export_minilm
    from .models import load_minilm
    from .transformer_pipeline import quantize_weights

    model, tok = load_minilm()
    verses = load_kjv_verses()
    pick = np.random.default_rng(0).choice(len(verses), 4000, replace=False)
    ev = [verses[i] for i in pick[:n_sent]]
    cal = [verses[i] for i in pick[2000 : 2000 + n_calib]]
    tok.enable_truncation(max_length=T)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]", length=T)

    def ids_of(sents):
        return torch.tensor([e.ids for e in tok.encode_batch(sents)], dtype=torch.long)

    t0 = time.perf_counter()
    qmodel, _ = quantize_weights(
        "minilm",
        model,
        method,
        wbits,
        ids_of(cal),
        tok.token_to_id("[PAD]"),
        steps=steps,
        full_range=full_range,
    )
    cfg = TransformerExportConfig(act_bits=act_bits)
    ex = export_minilm(qmodel, ids_of(cal), cfg, pad_id=tok.token_to_id("[PAD]"))
    t_quant = time.perf_counter() - t0
    _log(f"quantized + exported in {t_quant:.0f}s")
    ids = ids_of(ev)
    mask = (ids != tok.token_to_id("[PAD]")).double()
    pooled = {"float": [], "twin": [], "integer": []}
    t0 = time.perf_counter()
    for i in range(0, len(ev), batch):
        x, m = ids[i : i + batch], mask[i : i + batch, :, None]
        with torch.no_grad():
            hs = {
                "float": model(x, m[..., 0].long()).double(),
                "twin": ex.fake_quant(x).reshape(len(x), T, -1),
                "integer": torch.from_numpy(ex.integer(x.numpy(), backend=backend)).reshape(len(x), T, -1),
            }
        for k, h in hs.items():
            pooled[k].append((h * m).sum(1) / m.sum(1))
    emb = {k: torch.cat(v) for k, v in pooled.items()}
    res = {
        "n_sentences": len(ev),
        "T": T,
        "wbits": wbits,
        "act_bits": act_bits,
        "method": method,
        "n_calib": n_calib,
        "full_range": bool(full_range),
        "seconds_eval": time.perf_counter() - t0,
        "seconds_quant": t_quant,
    }
    for a, b in (("integer", "float"), ("integer", "twin"), ("twin", "float")):
        d = embedding_agreement(emb[b], emb[a])
        res[f"cos_{a}_vs_{b}"], res[f"nn_{a}_vs_{b}"] = d["mean_cos"], d["nn_agreement"]
    return res


def minilm_speed(wbits=4, method="powerquant", n_sent=32, T=24, repeat=3, model_file=None):
    """Seconds of one forward of n_sent verses x T tokens: the integer MiniLM on the CPU backend
    (after one untimed run: numba compilation) against PyTorch float32 in the same process,
    best of `repeat`. Thread counts are whatever the environment sets (OMP_NUM_THREADS,
    NUMBA_NUM_THREADS, torch.get_num_threads()); they are reported. model_file: a saved
    integer MiniLM for T tokens (`nupes-sim quantize minilm --seq-len T`, or the demo's);
    wbits/method then only label the result (say what the file was made with)."""
    import numba

    from ..serialize import load_model
    from .transformer_pipeline import builtin_inputs, load_builtin, quantize_builtin

    t0 = time.perf_counter()
    if model_file:
        (model, tok), graph = load_builtin("minilm"), load_model(model_file)
    else:
        model, ex, _, tok = quantize_builtin("minilm", method=method, wbits=wbits, seq_len=T, n_calib=8)
        graph = ex.graph
    _log(f"integer model ready in {time.perf_counter() - t0:.0f}s")
    x = builtin_inputs("minilm", n_sent, T, "eval", model, tok)
    mask = (x != tok.token_to_id("[PAD]")).long()
    ids = x.numpy()
    graph.run(ids, backend="cpu")  # compile
    times = {"integer_cpu": [], "torch_float32": []}
    for _ in range(repeat):
        t = time.perf_counter()
        graph.run(ids, backend="cpu")
        times["integer_cpu"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            model(x, mask)
        times["torch_float32"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "sentences": n_sent,
        "tokens": T,
        "wbits": wbits,
        "method": method,
        "integer_cpu_s": best["integer_cpu"],
        "torch_float32_s": best["torch_float32"],
        "ratio": best["integer_cpu"] / best["torch_float32"],
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "all_s": times,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["charlm", "minilm", "minilm-speed"])
    p.add_argument("--sentences", type=int, default=None, help="minilm: 200; minilm-speed: 32")
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--method", default=None, help="default nupes; minilm-speed: powerquant")
    p.add_argument("--chars", type=int, default=20480)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--tokens", type=int, default=None, help="minilm: tokens per sentence (48; speed: 24)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--model-file", default=None, help="minilm-speed: a saved integer MiniLM (skips quantizing)"
    )
    a = p.parse_args(argv)
    if a.model == "minilm-speed":
        res = minilm_speed(
            a.wbits, a.method or "powerquant", a.sentences or 32, a.tokens or 24, a.repeat, a.model_file
        )
        print(json.dumps(res))
    elif a.model == "minilm":
        print(json.dumps(minilm(a.wbits, a.method or "nupes", a.sentences or 200, a.tokens or 48)))
    else:
        print(json.dumps(charlm(a.wbits, a.method or "nupes", a.chars, steps=a.steps)))


if __name__ == "__main__":
    main()
