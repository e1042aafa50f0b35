"""The results generator's model sections: Fashion-MNIST (weights only, and weights plus
activations through the integer simulator), the PowerQuant exponent sweep, the KJV char LM
and MiniLM. Each returns a dict that results_render.py turns into markdown."""

import statistics
import time

import numpy as np
import torch

from .results_run import COUNTS, FULL, METHODS, TARGET, _exponents, _log, _method_rows, _quantize

# ------------------------------------------------------------------------------ Fashion


#: the data-free NUPES row that uses batch-norm statistics (datafree.py; models with batch norms)
DATAFREE_BN = "NUPES data-free, BN statistics"
#: the same for pre-LN transformers, from LayerNorm statistics and weights (the char LM)
DATAFREE_LN = "NUPES data-free, LayerNorm statistics"
#: the data-free NUPES row on synthetic inputs made from the model alone (synthetic.py): GPTQ-power
#: start and NUPES on them, per seed like a data-driven row, no real data
DATAFREE_SYN = "NUPES data-free, synthetic inputs"
#: synthetic inputs: distilled images (number, Adam steps on the images) and sampled LM windows
SYNTH = {"images": 256, "steps": 50, "windows": 128}
#: models whose weight sections include the W2 settings (results.py --w2); the others say so
W2 = {"models": ("fashion", "charlm", "minilm")}


_G128 = {"granularity": "group", "group_size": 128}
#: weight sections' settings: (W4/W3 settings, W2 settings, the --quick subset)
WEIGHT_SETTINGS = {
    "fashion": (
        [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}],
        [{"label": "W2 per-channel", "wbits": 2}],
        slice(None),
    ),
    "charlm": (
        [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}],
        [{"label": "W2 per-channel", "wbits": 2}],
        slice(1, 2),
    ),
    "minilm": (
        [
            {"label": "W4 per-channel", "wbits": 4},
            {"label": "W4 g128", "wbits": 4, **_G128},
            {"label": "W3 per-channel", "wbits": 3},
            {"label": "W3 g128", "wbits": 3, **_G128},
        ],
        [{"label": "W2 g128", "wbits": 2, **_G128}],
        slice(0, 1),
    ),
}
#: the settings one worker of `results --jobs` measures (None: all; results_jobs.py sets it)
UNIT = {"setting": None}


def _settings(name, quick):
    """A weight section's settings: W4/W3, plus W2 when this model's W2 rows are in scope
    (--w2; the report says where they were left out), the --quick subset, and with --jobs the
    one setting of this worker."""
    base, w2, sub = WEIGHT_SETTINGS[name]
    settings = (base + w2 if name in W2["models"] else base)[sub if quick else slice(None)]
    return [x for x in settings if UNIT["setting"] in (None, x["label"])]


def setting_labels(name, quick):
    """Labels of the settings a section measures, the units `results --jobs` splits it into
    ([None]: one unit)."""
    from .results_transformers import TX_SCOPE

    if name in WEIGHT_SETTINGS:
        base, w2, sub = WEIGHT_SETTINGS[name]
        return [
            x["label"] for x in (base + w2 if name in W2["models"] else base)[sub if quick else slice(None)]
        ]
    if name in ("charlm_int", "minilm_int"):
        return [f"W{w}A{a}" for w, a in TX_SCOPE["settings"]]
    if name == "fashion_act":
        return [f"W{w}A{a}" for w, a in ACT_SCOPE["settings"]]
    return [None]


def fashion(quick, steps):
    from .data import fashion_tensors
    from .datafree import bn_input_hessians
    from .evaluate import fashion_top1, load_fashion_model
    from .fold import fold_batchnorm

    model = fold_batchnorm(load_fashion_model())
    xtr, _ = fashion_tensors("train")
    xte, yte = fashion_tensors("test")
    xte, yte = (
        (xte[:2000], yte[:2000]) if quick else (xte[:5000], yte[:5000])
    )  # CPU time: first 5000 test images

    def calib_fn(seed):
        return xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:256]]

    def top1(m):
        return 100.0 * fashion_top1(m, xte, yte)

    out = {"float": top1(model), "n_test": len(xte), "chance": 10.0, "w2": "fashion" in W2["models"]}
    settings = _settings("fashion", quick)
    unfolded = load_fashion_model()  # data-free rows use its batch norms (the folded model has none)
    hessians = bn_input_hessians(unfolded)
    bn_row = (DATAFREE_BN, "nupes", False, {"nupes_init": "powerquant", "input_hessians": hessians, **FULL})

    def distilled(seed):  # bn_distilled_images restores the model it is given
        from .synthetic import bn_distilled_images

        return bn_distilled_images(unfolded, SYNTH["images"], seed, SYNTH["steps"], shape=(1, 28, 28))[0]

    syn_row = (DATAFREE_SYN, "nupes", True, {"nupes_init": "gptq_power", "calib_fn": distilled, **FULL})
    rows = _method_rows("fashion", model, top1, calib_fn, settings, steps, extra_methods=[bn_row, syn_row])
    out["weight_only"] = rows
    return out


#: (weight bits, activation bits) of the integer-simulator rows
ACT_SETTINGS = ((4, 8), (4, 4), (3, 8))
#: calibration seeds of the data-driven integer-simulator rows
ACT_SEEDS = (0, 1, 2)
#: fashion_act scope (command-line options of results.py): integer-simulator images (seed 0),
#: fake-quant test images, settings and calibration seeds
SIM_IMAGES = {"n": 2000}
ACT_SCOPE = {"images": 2000, "settings": ACT_SETTINGS, "seeds": ACT_SEEDS}


def fashion_act(quick, steps):
    """Fashion weights + activations through the exporter and the integer simulator.

    Data-driven rows twice: the weight quantizer sees the float network's activations
    (`float acts`, the pre-#9 pipeline) or the activations the integer graph computes
    (`graph acts`: pipeline.quantize_for_export, the exporter's walk drives it layer by
    layer). Top-1 of the float64 fake-quant twin on the first n_act test images for every
    calibration seed (mean ± std); the integer simulator on the first SIM_IMAGES of them at
    seed 0, with the twin's top-1 and its agreement on the same images.
    """
    from .data import fashion_tensors
    from .evaluate import load_fashion_model
    from .export import ExportConfig
    from .fold import fold_batchnorm
    from .pipeline import quantize_for_export

    model = fold_batchnorm(load_fashion_model())
    xtr, _ = fashion_tensors("train")
    xte, yte = fashion_tensors("test")
    n_act = 1000 if quick else ACT_SCOPE["images"]
    xs, y = xte[:n_act], yte[:n_act].numpy()
    n_sim = min(SIM_IMAGES["n"], n_act)
    seeds = ACT_SEEDS[:1] if quick else ACT_SCOPE["seeds"]

    def calib_fn(seed):
        return xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:256]]

    by_method = {m[1] + str(m[2]): m for m in METHODS}
    variants = [(by_method["rtnFalse"], None), (by_method["powerquantFalse"], None)]
    for key in ("gptq_powerTrue", "nupesTrue"):
        variants += [(by_method[key], False), (by_method[key], True)]
    rows = []
    for wbits, abits in ACT_SCOPE["settings"]:
        if UNIT["setting"] not in (None, f"W{wbits}A{abits}"):
            continue
        for (label, method, needs_data, extra), aware in variants:
            acts = "-" if aware is None else ("graph" if aware else "float")
            fq, secs, seed0 = [], [], None
            for seed in seeds if needs_data else (0,):
                _log(f"[fashion_act] W{wbits}A{abits} {label} ({acts} acts) seed {seed} ...")
                cfg = ExportConfig(act_bits=abits, act_exponent=1.0 if method == "rtn" else None)
                kw = dict(extra, seed=seed, progress=False)
                if needs_data:
                    kw["target"] = TARGET
                if method == "nupes":
                    kw["steps"] = steps
                t0 = time.perf_counter()
                ex, _ = quantize_for_export(
                    model,
                    cfg,
                    calib_fn(seed),
                    method=method,
                    wbits=wbits,
                    data_driven=needs_data,
                    activation_aware=bool(aware),
                    **kw,
                )
                secs.append(time.perf_counter() - t0)
                pred = ex.fake_quant(xs).numpy().argmax(1)
                fq.append(100.0 * float((pred == y).mean()))
                if seed == 0:
                    t0 = time.perf_counter()
                    r = ex.graph.run(ex.encode_input(xs[:n_sim].numpy()), backend="cpu")
                    ipred = (r.output * ex.logit_unit()).argmax(1)
                    seed0 = dict(
                        integer=100.0 * float((ipred == y[:n_sim]).mean()),
                        fake_quant_sim=100.0 * float((pred[:n_sim] == y[:n_sim]).mean()),
                        agreement=100.0 * float((ipred == pred[:n_sim]).mean()),
                        overflow=int(sum(r.overflow.values())),
                        sim_seconds=time.perf_counter() - t0,
                        act_exponents=_act_exponents(ex),
                    )
                _log(f"    fake-quant {fq[-1]:.2f} in {secs[-1]:.1f}s")
            rows.append(
                dict(
                    setting=f"W{wbits}A{abits}",
                    method=label,
                    acts=acts,
                    mean=statistics.mean(fq),
                    std=statistics.stdev(fq) if len(fq) > 1 else 0.0,
                    n=len(fq),
                    metrics=fq,
                    seconds=statistics.mean(secs),
                    **seed0,
                )
            )
            COUNTS["measured"] += 1
    return {"rows": rows, "n_act": n_act, "n_sim": n_sim}


def _act_exponents(ex):
    e = [f.exponent for k, f in ex.formats.items()]
    return f"{min(e):.2f}–{max(e):.2f}"


def sweep(quick, steps):
    """Fashion PowerQuant at W3/W4: top-1 against a fixed network exponent, next to the
    exponent the weight-reconstruction search picks (is the data-free objective a good proxy?)."""
    from .data import fashion_tensors
    from .evaluate import fashion_top1, load_fashion_model
    from .fold import fold_batchnorm

    model = fold_batchnorm(load_fashion_model())
    xte, yte = fashion_tensors("test")
    rows = []
    for wbits in (3, 4):
        for a in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            q, _, _ = _quantize(model, "powerquant", wbits, None, FULL, exponent=a)
            rows.append(dict(wbits=wbits, exponent=a, top1=100.0 * fashion_top1(q, xte, yte)))
        for search in ("network", "layer"):
            q, rep, _ = _quantize(model, "powerquant", wbits, None, FULL, exponent_search=search)
            rows.append(
                dict(
                    wbits=wbits,
                    exponent=f"searched per {search}: {_exponents(rep)}",
                    top1=100.0 * fashion_top1(q, xte, yte),
                )
            )
    return {"rows": rows}


# ------------------------------------------------------------------------------ char LM


def charlm(quick, steps):
    from .data import kjv_split
    from .datafree import layernorm_input_hessians
    from .evaluate import char_perplexity, load_charlm

    model = load_charlm()
    train, held = kjv_split()
    if quick:
        held = held[:20000]
    ids = model.encode(train)
    ctx = model.context

    def calib_fn(seed):  # 128 windows of the training text, drawn by seed
        starts = torch.randint(
            0, ids.numel() - ctx - 1, (128,), generator=torch.Generator().manual_seed(seed)
        )
        return torch.stack([ids[s : s + ctx] for s in starts.tolist()])

    def ppl(m):
        return char_perplexity(m, held)

    out = {"float": ppl(model), "held_out_chars": len(held), "w2": "charlm" in W2["models"]}
    out["vocab"], out["unigram"] = len(model.vocab), _unigram_perplexity(model, train, held)
    settings = _settings("charlm", quick)
    hessians = layernorm_input_hessians(model)  # data-free: its LayerNorms and weights
    ln_row = (DATAFREE_LN, "nupes", False, {"nupes_init": "powerquant", "input_hessians": hessians, **FULL})

    def sampled(seed):  # windows the model itself generates
        from .synthetic import sampled_windows

        return sampled_windows(model, SYNTH["windows"], seed)

    syn_row = (DATAFREE_SYN, "nupes", True, {"nupes_init": "gptq_power", "calib_fn": sampled, **FULL})
    out["rows"] = _method_rows(
        "charlm", model, ppl, calib_fn, settings, steps, extra_methods=[ln_row, syn_row]
    )
    return out


def _unigram_perplexity(model, train, held):
    """Perplexity on the held-out text of the training text's character frequencies (add-one
    smoothed): what a model that ignores its context can reach (a chance level)."""
    import math

    counts = torch.bincount(model.encode(train), minlength=len(model.vocab)).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-float(logp[model.encode(held)].mean()))


# ------------------------------------------------------------------------------ MiniLM

#: MiniLM weight-section scope (results.py --minilm-sentences): evaluation verses
MINILM_SCOPE = {"sentences": 1000}


class _IdsOnly(torch.nn.Module):
    """MiniLM on unpadded, equal-length token batches (calibration input is one tensor). The
    ids are cast back to long: quantize_model casts calibration batches to the model's float
    dtype (transformer_pipeline.PaddedIds does the same for padded batches)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        ids = ids.long()
        return self.model(ids, torch.ones_like(ids))


def minilm(quick, steps):
    from .data import load_kjv_verses
    from .evaluate import embedding_agreement
    from .models import embed, load_minilm

    model, tok = load_minilm()
    verses = load_kjv_verses()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(verses), 4000, replace=False)
    n_eval = 500 if quick else MINILM_SCOPE["sentences"]
    eval_s = [verses[i] for i in pick[:n_eval]]

    def calib_fn(seed):  # 128 of the 2000 verses kept out of the evaluation, drawn by seed
        sub = np.random.default_rng(seed).choice(2000, 128, replace=False)
        enc = [tok.encode(verses[pick[2000 + i]]).ids for i in sub]
        L = 24
        cls, sep = enc[0][0], enc[0][-1]
        calib = torch.tensor(
            [(e[: L - 1] + [sep])[:L] if len(e) >= L else e[:-1] + [sep] * (L - len(e) + 1) for e in enc],
            dtype=torch.long,
        )
        calib[:, 0] = cls
        return calib

    wrapped = _IdsOnly(model).eval()
    ref = embed(model, tok, eval_s)

    def agree(m):
        d = embedding_agreement(ref, embed(m.model, tok, eval_s))
        return f"cos {d['mean_cos']:.4f} / NN {100 * d['nn_agreement']:.1f}%"

    settings = _settings("minilm", quick)
    rows = _method_rows("minilm", wrapped, agree, calib_fn, settings, steps)
    return {"rows": rows, "n_sentences": n_eval, "w2": "minilm" in W2["models"], **_embedding_chance(ref)}


def _embedding_chance(ref):
    """Chance levels of the MiniLM metrics: the cosine of a model that ignores its input and
    outputs the mean float embedding, and the nearest-neighbour agreement of a random
    neighbour, 1/(n-1)."""
    a = torch.nn.functional.normalize(ref.double(), dim=1)
    mean = torch.nn.functional.normalize(a.mean(0, keepdim=True), dim=1)
    return {"chance_cos": float((a * mean).sum(1).mean()), "chance_nn": 1.0 / (len(a) - 1)}
