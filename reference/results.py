"""Regenerate docs/RESULTS.md: every method on every model, measured in one run.

    python -m nupes_sim.reference.results [--quick] [--only fashion,charlm,minilm,sweep] [--out docs/RESULTS.md]
                                          [--json raw.json [--resume]]

(also `nupes-sim eval`). Whatever is measured is written, including where NUPES loses.
RESULTS.md is rewritten after every section (with the sections still pending named at the
top) and finished rows are checkpointed to --json, so an interrupted run resumes with
--resume; the header counts rows reused that way.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

METHODS = [  # (label, method, needs data, extra kwargs); data-driven rows all use target 'float'
    ("RTN (uniform)", "rtn", False, {}),
    ("PowerQuant", "powerquant", False, {}),
    ("NF RTN [fake quant]", "nf", False, {}),
    ("NUPES data-free", "nupes", False, {"nupes_init": "powerquant"}),
    ("GPTQ (uniform, symmetric)", "gptq", True, {}),
    ("GPTQ (standard asymmetric grid) [fake quant]", "gptq_asym", True, {}),
    ("k-means, Hessian-weighted [fake quant]", "kmeans", True, {}),
    ("GPTQ (power grid)", "gptq_power", True, {}),
    ("NUPES data-driven", "nupes", True, {"nupes_init": "gptq_power"}),
]
SEEDS = (0, 1, 2)  # calibration-sampling seeds of the data-driven rows
#: data-driven baselines measured at seed 0 only (CPU time); their spread is not measured
ONE_SEED = {"gptq_asym", "kmeans"}
TARGET = "float"  # every data-driven row matches the float network's output from quantized inputs

#: rows measured by this invocation / reused from --json with --resume (reported in the header)
COUNTS = {"measured": 0, "reused": 0}
ACTIVATIONS = {"on": True}  # the Fashion integer-simulator rows (--no-activations: off)
_CHECKPOINT = {"rows": {}, "save": None}


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _quantize(model, method, wbits, calib, extra, **kw):
    from .api import quantize_model

    t0 = time.perf_counter()
    qmodel, report = quantize_model(
        model, method=method, wbits=wbits, calib=calib, progress=False, **extra, **kw
    )
    return qmodel, report, time.perf_counter() - t0


def _exponents(report):
    ex = [r["exponent"] for r in report["layers"] if r.get("exponent") is not None]
    if not ex:
        return "-"
    if len(set(round(e, 4) for e in ex)) == 1:
        return f"{ex[0]:.3f}"
    return f"{min(ex):.3f}–{statistics.median(ex):.3f}–{max(ex):.3f}"


def _score(metric):
    """A comparable number: the metric itself, or the cosine of 'cos X / NN Y%' strings."""
    return float(metric.split()[1]) if isinstance(metric, str) else float(metric)


def _layer_rows(report):
    out = []
    for r in report["layers"]:
        i = r.get("nupes", {})
        out.append(
            dict(
                name=r["name"],
                before=r["loss_before"],
                after=r["loss_after"],
                exponent=r["exponent"],
                exponent_init=i.get("exponent_init"),
                moves=i.get("moves"),
                seconds=r["seconds"],
                improved=i.get("improved"),
            )
        )
    return out


def _method_rows(name, model, evaluate, calib_fn, settings, steps):
    """Rows for every setting and method: data-free once, data-driven once per seed in SEEDS
    (mean ± std). Each finished row is checkpointed (and reused with --resume)."""
    rows = []
    caches = {seed: {} for seed in SEEDS}  # float-network layer inputs, shared across methods and settings
    calibs = {seed: calib_fn(seed) for seed in SEEDS}
    for setting in settings:
        for label, method, needs_data, extra in METHODS:
            key = f"{name}|{setting['label']}|{label}"
            if key in _CHECKPOINT["rows"]:
                rows.append(_CHECKPOINT["rows"][key])
                COUNTS["reused"] += 1
                _log(f"[{name}] {setting['label']} {label}: reused from --json")
                continue
            kw = dict(granularity=setting.get("granularity", "channel"), group_size=setting.get("group_size"))
            if method == "nupes":
                kw["steps"] = steps
            metrics, secs, layers, exps = [], [], None, "-"
            for seed in (SEEDS if method not in ONE_SEED else SEEDS[:1]) if needs_data else (0,):
                _log(f"[{name}] {setting['label']} {label} seed {seed} ...")
                if needs_data:
                    kw.update(target=TARGET, float_inputs=caches[seed], seed=seed)
                qmodel, report, sec = _quantize(
                    model, method, setting["wbits"], calibs[seed] if needs_data else None, extra, **kw
                )
                metrics.append(_score(evaluate(qmodel)))
                secs.append(sec)
                if seed == 0:
                    exps = _exponents(report)
                    if method == "nupes" and needs_data:
                        layers = _layer_rows(report)
                _log(f"    {metrics[-1]} in {sec:.1f}s")
            row = dict(
                setting=setting["label"],
                method=label,
                mean=statistics.mean(metrics),
                std=statistics.stdev(metrics) if len(metrics) > 1 else 0.0,
                n=len(metrics),
                metrics=metrics,
                seconds=statistics.mean(secs),
                exponents=exps,
                data=needs_data,
            )
            if layers is not None:
                row["layers"] = layers
            rows.append(row)
            COUNTS["measured"] += 1
            _CHECKPOINT["rows"][key] = row
            if _CHECKPOINT["save"]:
                _CHECKPOINT["save"]()
    return rows


# ------------------------------------------------------------------------------ Fashion


def fashion(quick, steps):
    from .data import fashion_tensors
    from .evaluate import fashion_top1, load_fashion_model
    from .export import ExportConfig, export_model
    from .fold import fold_batchnorm

    model = fold_batchnorm(load_fashion_model())
    xtr, _ = fashion_tensors("train")
    xte, yte = fashion_tensors("test")
    xte, yte = (
        (xte[:2000], yte[:2000]) if quick else (xte[:5000], yte[:5000])
    )  # CPU time: first 5000 test images

    def calib_fn(seed):
        return xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:256]]

    calib = calib_fn(0)

    def top1(m):
        return 100.0 * fashion_top1(m, xte, yte)

    out = {"float": top1(model), "n_test": len(xte)}
    settings = [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}]
    rows = _method_rows("fashion", model, top1, calib_fn, settings, steps)
    out["weight_only"] = rows
    if not ACTIVATIONS["on"]:
        return out
    # weight + activation quantization through the integer simulator (exporter)
    n_act = 1000 if quick else 2000
    out["n_act"] = n_act
    act_rows = []
    by_method = {m[1] + str(m[2]): m for m in METHODS}
    for wbits, abits in ((4, 8), (4, 4), (3, 8)):
        for label, method, needs_data, extra in (
            by_method["rtnFalse"],
            by_method["powerquantFalse"],
            by_method["nupesTrue"],
        ):
            _log(f"[fashion] W{wbits}A{abits} {label} (integer simulator) ...")
            kw = {"steps": steps, "target": TARGET} if method == "nupes" else {}
            qmodel, report, secs = _quantize(model, method, wbits, calib if needs_data else None, extra, **kw)
            act_exp = 1.0 if method == "rtn" else None
            ex = export_model(qmodel, calib, ExportConfig(act_bits=abits, act_exponent=act_exp))
            xs, y = xte[:n_act], yte[:n_act].numpy()
            fq = ex.fake_quant(xs).numpy()
            t0 = time.perf_counter()
            r = ex.graph.run(ex.encode_input(xs.numpy()), backend="cpu")
            sim_secs = time.perf_counter() - t0
            logits = r.output * ex.logit_unit()
            act_rows.append(
                dict(
                    setting=f"W{wbits}A{abits}",
                    method=label,
                    fake_quant=100.0 * float((fq.argmax(1) == y).mean()),
                    integer=100.0 * float((logits.argmax(1) == y).mean()),
                    agreement=100.0 * float((fq.argmax(1) == logits.argmax(1)).mean()),
                    overflow=int(sum(r.overflow.values())),
                    seconds=secs,
                    sim_seconds=sim_secs,
                    act_exponents=_act_exponents(ex),
                )
            )
            _log(f"    {act_rows[-1]}")
    out["activations"] = act_rows
    return out


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
            q, _, _ = _quantize(model, "powerquant", wbits, None, {}, exponent=a)
            rows.append(dict(wbits=wbits, exponent=a, top1=100.0 * fashion_top1(q, xte, yte)))
        for search in ("network", "layer"):
            q, rep, _ = _quantize(model, "powerquant", wbits, None, {}, exponent_search=search)
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

    out = {"float": ppl(model), "held_out_chars": len(held)}
    settings = [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}]
    if quick:
        settings = settings[1:]
    out["rows"] = _method_rows("charlm", model, ppl, calib_fn, settings, steps)
    return out


# ------------------------------------------------------------------------------ MiniLM


class _IdsOnly(torch.nn.Module):
    """MiniLM on unpadded, equal-length token batches (calibration input is one tensor)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids, torch.ones_like(ids))


def minilm(quick, steps):
    from .data import load_kjv_verses
    from .evaluate import embedding_agreement
    from .models import embed, load_minilm

    model, tok = load_minilm()
    verses = load_kjv_verses()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(verses), 4000, replace=False)
    n_eval = 500 if quick else 1000
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

    settings = [
        {"label": "W4 per-channel", "wbits": 4},  # CPU time: the two settings #14 sets targets for
        {"label": "W3 g128", "wbits": 3, "granularity": "group", "group_size": 128},
    ]
    if quick:
        settings = settings[:1]
    rows = _method_rows("minilm", wrapped, agree, calib_fn, settings, steps)
    return {"rows": rows, "n_sentences": n_eval}


# ------------------------------------------------------------------------------ report


def _fmt(v, digits):
    return f"{v:.{digits}f}"


def _table(rows, metric_name, digits=2):
    lines = [
        f"| setting | method | {metric_name} (mean ± std) | seeds | seconds | exponent(s) min–median–max |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        m = _fmt(r["mean"], digits) + (f" ± {_fmt(r['std'], digits)}" if r["n"] > 1 else "")
        lines.append(
            f"| {r['setting']} | {r['method']} | {m} | {r['n']} | {r['seconds']:.1f} | {r['exponents']} |"
        )
    return lines


def _verdicts(rows, higher_better, digits):
    """Per setting: NUPES data-driven against every other row; a win (or loss) only when the
    mean difference exceeds the sum of the two standard deviations, else 'within the spread'."""
    out = []
    sign = 1 if higher_better else -1
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]
        nupes = next((r for r in rs if r["method"] == "NUPES data-driven"), None)
        if nupes is None:
            continue
        parts = []
        for o in rs:
            if o is nupes:
                continue
            d = sign * (nupes["mean"] - o["mean"])
            spread = nupes["std"] + o["std"]
            v = "wins" if d > spread else ("**loses**" if -d > spread else "within the spread")
            parts.append((o, v, d, spread))
        best = max(parts, key=lambda p: sign * p[0]["mean"])
        won = sum(p[1] == "wins" for p in parts)
        lost = [p[0]["method"] for p in parts if p[1] == "**loses**"]
        tied = [p[0]["method"] for p in parts if p[1] == "within the spread"]
        out.append(
            f"- {setting}: NUPES data-driven {_fmt(nupes['mean'], digits)} ± {_fmt(nupes['std'], digits)}; "
            f"best other: {best[0]['method']} {_fmt(best[0]['mean'], digits)} ± {_fmt(best[0]['std'], digits)} "
            f"→ NUPES {best[1]}. Beats {won}/{len(parts)} rows by more than the spread"
            + (f"; loses to {', '.join(lost)}" if lost else "")
            + (f"; within the spread of {', '.join(tied)}" if tied else "")
            + "."
        )
        g = next((r for r in rs if r["method"].startswith("GPTQ (uniform")), None)
        if g:
            out.append(
                f"  Time: NUPES data-driven {nupes['seconds']:.1f}s = {nupes['seconds'] / g['seconds']:.1f}× "
                f"GPTQ (uniform) ({g['seconds']:.1f}s), mean over seeds."
            )
    return out


def _per_layer(rows):
    """NUPES data-driven (seed 0) against its GPTQ-power start, per layer, same inputs and target."""
    L = []
    for r in rows:
        if r["method"] != "NUPES data-driven" or not r.get("layers"):
            continue
        ls = r["layers"]
        lower = sum(1 for x in ls if x["after"] < x["before"])
        worse = sum(1 for x in ls if x["after"] > x["before"])
        mv = {k: sum((x["moves"] or {}).get(k, 0) for x in ls) for k in ("0", "1", "2", "3+")}
        tot = sum(mv.values()) or 1
        red = sorted(1 - x["after"] / x["before"] for x in ls if x["before"] > 0)
        L += [
            f"#### {r['setting']}: NUPES vs its GPTQ-power start, per layer (seed 0)",
            "",
            f"Strictly lower on **{lower}/{len(ls)}** layers, higher on {worse} (≤ by construction); median "
            f"reduction {100 * statistics.median(red):.1f} %. Code moves from the start, all layers: "
            + ", ".join(f"|Δ| = {k}: {100 * v / tot:.2f} %" for k, v in mv.items())
            + ".",
            "",
            "| layer | GPTQ-power loss | NUPES loss | change | exponent start → final | codes moved |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for x in ls:
            n = sum(x["moves"].values()) if x["moves"] else 0
            moved = f"{100 * (n - x['moves']['0']) / n:.1f} %" if n else "-"
            ch = f"{100 * (x['after'] / x['before'] - 1):+.1f} %" if x["before"] > 0 else "-"
            L.append(
                f"| {x['name']} | {x['before']:.4e} | {x['after']:.4e} | {ch} | "
                f"{x['exponent_init'] or 0:.4f} → {x['exponent'] or 0:.4f} | {moved} |"
            )
        L.append("")
    return L


def render(results, args, seconds, pending=()):
    L = [
        "# Results",
        "",
        f"Generated by `python -m nupes_sim.reference.results{' --quick' if args.quick else ''}` "
        f"(nupes-sim {__import__('nupes_sim').__version__}) on {platform.node() or 'this machine'}: "
        f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"this invocation took {seconds / 60:.1f} min and measured {COUNTS['measured']} rows"
        + (
            f"; **{COUNTS['reused']} rows were reused from an earlier run (--resume)**"
            if COUNTS["reused"]
            else "; no row was reused"
        )
        + ".",
        "",
    ]
    if pending:
        L += [f"**Incomplete run: not measured yet: {', '.join(pending)}.**", ""]
    L += [
        "Methods. Data-free rows (RTN, PowerQuant, NF RTN, NUPES data-free) are measured once; data-driven rows "
        f"GPTQ uniform, GPTQ-power and NUPES data-driven once per calibration seed {list(SEEDS)}, shown as "
        "mean ± std; the fake-quant data-driven baselines (GPTQ on the reference's asymmetric grid, k-means) "
        "at seed 0 only (the 'seeds' column says so: their spread is not measured, so a verdict against them "
        "uses NUPES's spread alone). Every data-driven row is "
        f"sequential (a layer sees the inputs of the partly quantized network) with target '{TARGET}' (it matches "
        "the float network's output from those inputs; objective.py), so all of them optimize the same layer "
        f"objective. NUPES data-driven: {args.steps} dsq steps per layer from GPTQ-power (same seed), then exact "
        "coordinate descent over the whole code range and an exponent refinement; it keeps its start where it does "
        "not lower the layer loss. NUPES data-free: PowerQuant start, weight-error objective (no data-free "
        "statistics yet: with that objective the nearest code is optimal, so only the exponent can change). "
        "'[fake quant]' rows have no integer format in the simulator (a zero-point weight format and a codebook "
        "format are separate work); NF is NormalFloat with absmax per channel/group, k-means is one 2^b-entry "
        "codebook per output channel weighted by diag(XᵀX). A verdict is a win or a loss only when the mean "
        "difference exceeds the sum of the two standard deviations. Symmetric signed codes [-M, M] for the power "
        "and uniform formats; per-channel scales unless 'g64'/'g128'.",
        "",
    ]
    if "fashion" in results:
        f = results["fashion"]
        L += [
            "## Fashion-MNIST ResNet (top-1 %, higher is better)",
            "",
            f"Float: **{f['float']:.2f} %** on {f['n_test']} test images; calibration: 256 training images per seed.",
            "",
        ]
        L += _table(f["weight_only"], "top-1 %") + [""] + _verdicts(f["weight_only"], True, 2) + [""]
        L += _per_layer(f["weight_only"])
        if f.get("activations"):
            L += [
                "### Weights and activations through the integer simulator",
                "",
                f"On the first {f['n_act']} test images, calibration seed 0. Activations are power-quantized per "
                "tensor by the exporter (exponent searched on 256 calibration images; RTN rows use uniform "
                "activations, a = 1); the weight quantizers saw float activations. `fake-quant` is the float64 "
                "PyTorch twin, `integer` the Numba CPU simulator (48-bit saturating accumulators), `agreement` "
                "the fraction of identical top-1 predictions.",
                "",
                "| setting | method | fake-quant % | integer % | agreement % | overflows | quantize s | simulate s | act. exponents |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in f["activations"]:
                L.append(
                    f"| {r['setting']} | {r['method']} | {r['fake_quant']:.2f} | {r['integer']:.2f} | "
                    f"{r['agreement']:.2f} | {r['overflow']} | {r['seconds']:.1f} | {r['sim_seconds']:.1f} | "
                    f"{r['act_exponents']} |"
                )
            L.append("")
    if "charlm" in results:
        c = results["charlm"]
        L += [
            "## KJV character-level transformer (held-out perplexity, lower is better)",
            "",
            f"Float: **{c['float']:.4f}** on {c['held_out_chars']} held-out characters; calibration: 128 windows "
            "per seed.",
            "",
        ]
        L += (
            _table(c["rows"], "perplexity", 3)
            + [""]
            + _verdicts(c["rows"], False, 3)
            + [""]
            + _per_layer(c["rows"])
        )
    if "minilm" in results:
        m = results["minilm"]
        L += [
            "## all-MiniLM-L6-v2 (pretrained), all 36 linear layers",
            "",
            f"Mean cosine of the sentence embedding to the float model on {m['n_sentences']} KJV verses; "
            "calibration: 128 other verses of 24 tokens per seed.",
            "",
        ]
        L += (
            _table(m["rows"], "cosine", 4)
            + [""]
            + _verdicts(m["rows"], True, 4)
            + [""]
            + _per_layer(m["rows"])
        )
    if "sweep" in results:
        L += [
            "### PowerQuant exponent sweep (Fashion-MNIST, data-free, top-1 % on the full test set)",
            "",
            "The data-free search minimizes the weight reconstruction error; this table shows how well that "
            "proxies accuracy.",
            "",
            "| weight bits | exponent | top-1 % |",
            "|---:|---|---:|",
        ]
        for r in results["sweep"]["rows"]:
            L.append(f"| {r['wbits']} | {r['exponent']} | {r['top1']:.2f} |")
        L.append("")
    for name, err in results.get("_errors", {}).items():
        L += [f"## {name}: not measured", "", f"    {err}", ""]
    return "\n".join(L)


def _write(out, text):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, out)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="nupes-sim eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nupes-sim eval\n  nupes-sim eval --quick --only fashion",
    )
    p.add_argument("--quick", action="store_true", help="fewer settings and test samples (minutes, not tens)")
    p.add_argument("--only", default="fashion,charlm,minilm,sweep", help="comma-separated subset")
    p.add_argument("--steps", type=int, default=15, help="NUPES dsq steps per layer")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file to (re)write atomically")
    p.add_argument("--json", default=None, help="also write the raw numbers as JSON here (after every row)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the sections and rows already in --json (the header counts reused rows)",
    )
    p.add_argument("--no-activations", action="store_true", help="skip the Fashion integer-simulator rows")
    args = p.parse_args(argv)
    ACTIVATIONS["on"] = not args.no_activations
    torch.manual_seed(0)
    t0 = time.perf_counter()
    results, errors = {}, {}
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    for name in names:
        if name not in ("fashion", "sweep", "charlm", "minilm"):
            p.error(f"--only: unknown section {name!r}; choose from fashion, sweep, charlm, minilm")
    if args.resume and args.json and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        _CHECKPOINT["rows"].update(saved.get("_rows", {}))
        results = {k: v for k, v in saved.items() if not k.startswith("_")}
        COUNTS["reused"] += sum(len(v.get("rows", v.get("weight_only", []))) for v in results.values())

    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps(dict(results, _rows=_CHECKPOINT["rows"]), indent=1, default=str)
            )

    _CHECKPOINT["save"] = save
    out = Path(args.out)
    for i, name in enumerate(names):
        if name in results:
            _log(f"[{name}] taken from {args.json}")
            continue
        fn = {"fashion": fashion, "sweep": sweep, "charlm": charlm, "minilm": minilm}[name]
        try:
            results[name] = fn(args.quick, args.steps)
        except FileNotFoundError as e:  # a data package is missing: say so in the report
            errors[name] = str(e)
            _log(f"[{name}] skipped: {e}")
        save()
        results["_errors"] = errors
        pending = [n for n in names[i + 1 :] if n not in results]
        _write(out, render(results, args, time.perf_counter() - t0, pending))  # an honest partial report
        del results["_errors"]
    results["_errors"] = errors
    text = render(results, args, time.perf_counter() - t0)
    _write(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
