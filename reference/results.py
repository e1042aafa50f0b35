"""Regenerate docs/RESULTS.md: every method on every model, measured in one run.

    python -m nupes_sim.reference.results [--quick] [--only fashion,charlm,minilm] [--out docs/RESULTS.md]

(also `nupes-sim eval`). Whatever is measured is written, including where NUPES loses.
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

METHODS = [  # (label, method, needs data, extra kwargs)
    ("RTN (uniform)", "rtn", False, {}),
    ("GPTQ (uniform)", "gptq", True, {}),
    ("PowerQuant", "powerquant", False, {}),
    ("GPTQ (power grid)", "gptq_power", True, {}),
    ("NUPES data-free", "nupes", False, {"nupes_init": "powerquant"}),
    ("NUPES data-driven", "nupes", True, {"nupes_init": "gptq_power"}),
]


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def _quantize(model, method, wbits, calib, extra, **kw):
    from .api import quantize_model
    t0 = time.perf_counter()
    qmodel, report = quantize_model(model, method=method, wbits=wbits, calib=calib, progress=False, **extra, **kw)
    return qmodel, report, time.perf_counter() - t0


def _exponents(report):
    ex = [r["exponent"] for r in report["layers"] if r.get("exponent") is not None]
    if not ex:
        return "-"
    if len(set(round(e, 4) for e in ex)) == 1:
        return f"{ex[0]:.3f}"
    return f"{min(ex):.3f}–{statistics.median(ex):.3f}–{max(ex):.3f}"


def _method_rows(name, model, evaluate, calib, settings, steps):
    """Rows (setting, method, metric, seconds, exponents) for every method and setting."""
    rows, reports = [], {}
    for setting in settings:
        for label, method, needs_data, extra in METHODS:
            _log(f"[{name}] {setting['label']} {label} ...")
            kw = dict(granularity=setting.get("granularity", "channel"), group_size=setting.get("group_size"))
            if method == "nupes":
                kw["steps"] = steps
            qmodel, report, secs = _quantize(model, method, setting["wbits"], calib if needs_data else None, extra, **kw)
            metric = evaluate(qmodel)
            rows.append(dict(setting=setting["label"], method=label, metric=metric, seconds=secs,
                             exponents=_exponents(report)))
            reports[(setting["label"], label)] = report
            _log(f"    {metric} in {secs:.1f}s")
    return rows, reports


# ------------------------------------------------------------------------------ Fashion

def fashion(quick, steps):
    from .data import fashion_tensors
    from .evaluate import fashion_top1, load_fashion_model
    from .export import ExportConfig, export_model
    from .fold import fold_batchnorm

    model = fold_batchnorm(load_fashion_model())
    xtr, _ = fashion_tensors("train")
    xte, yte = fashion_tensors("test")
    if quick:
        xte, yte = xte[:2000], yte[:2000]
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:256]]

    def top1(m):
        return 100.0 * fashion_top1(m, xte, yte)

    out = {"float": top1(model), "n_test": len(xte)}
    settings = [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}]
    rows, reports = _method_rows("fashion", model, top1, calib, settings, steps)
    out["weight_only"] = rows
    # weight + activation quantization through the integer simulator (exporter)
    n_act = 1000 if quick else 2000
    out["n_act"] = n_act
    act_rows = []
    for wbits, abits in ((8, 8), (4, 8), (4, 4)):
        for label, method, needs_data, extra in (METHODS[0], METHODS[2], METHODS[5]):
            _log(f"[fashion] W{wbits}A{abits} {label} (integer simulator) ...")
            kw = {"steps": steps} if method == "nupes" else {}
            qmodel, report, secs = _quantize(model, method, wbits, calib if needs_data else None, extra, **kw)
            act_exp = 1.0 if method == "rtn" else None
            ex = export_model(qmodel, calib, ExportConfig(act_bits=abits, act_exponent=act_exp))
            xs, y = xte[:n_act], yte[:n_act].numpy()
            fq = ex.fake_quant(xs).numpy()
            t0 = time.perf_counter()
            r = ex.graph.run(ex.encode_input(xs.numpy()), backend="cpu")
            sim_secs = time.perf_counter() - t0
            logits = r.output * ex.logit_unit()
            act_rows.append(dict(setting=f"W{wbits}A{abits}", method=label,
                                 fake_quant=100.0 * float((fq.argmax(1) == y).mean()),
                                 integer=100.0 * float((logits.argmax(1) == y).mean()),
                                 agreement=100.0 * float((fq.argmax(1) == logits.argmax(1)).mean()),
                                 overflow=int(sum(r.overflow.values())), seconds=secs, sim_seconds=sim_secs,
                                 act_exponents=_act_exponents(ex)))
            _log(f"    {act_rows[-1]}")
    out["activations"] = act_rows
    out["nupes_layers"] = reports.get(("W4 per-channel", "NUPES data-driven"), {}).get("layers", [])
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
            rows.append(dict(wbits=wbits, exponent=f"searched per {search}: {_exponents(rep)}",
                             top1=100.0 * fashion_top1(q, xte, yte)))
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
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, ids.numel() - ctx - 1, (128,), generator=g)
    calib = torch.stack([ids[s:s + ctx] for s in starts.tolist()])

    def ppl(m):
        return char_perplexity(m, held)

    out = {"float": ppl(model), "held_out_chars": len(held)}
    settings = [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3},
                {"label": "W4 g64", "wbits": 4, "granularity": "group", "group_size": 64},
                {"label": "W3 g64", "wbits": 3, "granularity": "group", "group_size": 64}]
    if quick:
        settings = settings[1:2] + settings[3:]
    out["rows"], _ = _method_rows("charlm", model, ppl, calib, settings, steps)
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
    n_eval = 500 if quick else 2000
    eval_s = [verses[i] for i in pick[:n_eval]]
    cal_s = [verses[i] for i in pick[2000:2000 + 128]]
    enc = [tok.encode(s).ids for s in cal_s]
    L = 24
    cls, sep = enc[0][0], enc[0][-1]
    calib = torch.tensor([(e[:L - 1] + [sep])[:L] if len(e) >= L else e[:-1] + [sep] * (L - len(e) + 1)
                          for e in enc], dtype=torch.long)
    calib[:, 0] = cls
    wrapped = _IdsOnly(model).eval()
    ref = embed(model, tok, eval_s)

    def agree(m):
        d = embedding_agreement(ref, embed(m.model, tok, eval_s))
        return f"cos {d['mean_cos']:.4f} / NN {100 * d['nn_agreement']:.1f}%"

    settings = [{"label": "W4 per-channel", "wbits": 4}, {"label": "W3 per-channel", "wbits": 3}]
    if quick:
        settings = settings[:1]
    rows, _ = _method_rows("minilm", wrapped, agree, calib, settings, steps)
    return {"rows": rows, "n_sentences": n_eval}


# ------------------------------------------------------------------------------ report

def _table(rows, metric_name, digits=2):
    lines = [f"| setting | method | {metric_name} | seconds | exponent(s) min–median–max |", "|---|---|---:|---:|---|"]
    for r in rows:
        m = r["metric"]
        m = f"{m:.{digits}f}" if isinstance(m, float) else m
        lines.append(f"| {r['setting']} | {r['method']} | {m} | {r['seconds']:.1f} | {r['exponents']} |")
    return lines


def _score(metric, higher_better):
    """A comparable number: the metric itself, or the cosine of 'cos X / NN Y%' strings."""
    v = float(metric.split()[1]) if isinstance(metric, str) else float(metric)
    return v if higher_better else -v


def _wins(rows, higher_better):
    """Per setting: NUPES data-driven against the best other method (wins and losses alike)."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]
        nupes = next((r for r in rs if r["method"] == "NUPES data-driven"), None)
        others = [r for r in rs if not r["method"].startswith("NUPES")]
        if nupes is None or not others:
            continue
        best = max(others, key=lambda r: _score(r["metric"], higher_better))
        verdict = "wins" if _score(nupes["metric"], higher_better) > _score(best["metric"], higher_better) else \
            ("ties" if _score(nupes["metric"], higher_better) == _score(best["metric"], higher_better) else "**loses**")
        out.append(f"- {setting}: NUPES data-driven {verdict} against the best other method, "
                   f"{best['method']} ({nupes['metric'] if isinstance(nupes['metric'], str) else round(nupes['metric'], 4)} vs "
                   f"{best['metric'] if isinstance(best['metric'], str) else round(best['metric'], 4)})")
    return out


def _nupes_vs_gptq(rows):
    out = []
    by = {(r["setting"], r["method"]): r for r in rows}
    for (setting, method), r in by.items():
        if method == "NUPES data-driven" and (setting, "GPTQ (uniform)") in by:
            g = by[(setting, "GPTQ (uniform)")]["seconds"]
            out.append(f"{setting}: NUPES data-driven {r['seconds']:.1f}s = {r['seconds'] / g:.1f}× GPTQ ({g:.1f}s)")
    return out


def render(results, args, seconds):
    L = ["# Results", "",
         f"Generated by `python -m nupes_sim.reference.results{' --quick' if args.quick else ''}` "
         f"(nupes-sim {__import__('nupes_sim').__version__}) on {platform.node() or 'this machine'}: "
         f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
         f"this invocation took {seconds / 60:.1f} min (sections reused with --resume keep their own seconds). NUPES: {args.steps} steps per layer; data-free NUPES starts from "
         "PowerQuant, data-driven NUPES from GPTQ on the power grid (it keeps its start when hardening does "
         "not lower the layer loss). Weight-only unless stated; symmetric signed codes; per-channel scales unless 'g64'.", ""]
    if "fashion" in results:
        f = results["fashion"]
        L += ["## Fashion-MNIST ResNet (top-1 %, higher is better)", "",
              f"Float: **{f['float']:.2f} %** on {f['n_test']} test images.", ""]
        L += _table(f["weight_only"], "top-1 %") + [""]
        L += ["### Weights and activations through the integer simulator", "",
              f"On the first {f['n_act']} test images. Activations are power-quantized per tensor (exponent searched on 256 calibration images; RTN rows use "
              "uniform activations, a = 1). `fake-quant` is the float64 PyTorch twin, `integer` the Numba CPU "
              "simulator (48-bit saturating accumulators), `agreement` the fraction of identical top-1 predictions.", "",
              "| setting | method | fake-quant % | integer % | agreement % | overflows | quantize s | simulate s | act. exponents |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in f["activations"]:
            L.append(f"| {r['setting']} | {r['method']} | {r['fake_quant']:.2f} | {r['integer']:.2f} | "
                     f"{r['agreement']:.2f} | {r['overflow']} | {r['seconds']:.1f} | {r['sim_seconds']:.1f} | "
                     f"{r['act_exponents']} |")
        L.append("")
        if f.get("nupes_layers"):
            L += ["### Learned exponents per layer (W4 per-channel, NUPES data-driven)", "",
                  "| layer | exponent | loss before | loss after | seconds |", "|---|---:|---:|---:|---:|"]
            for r in f["nupes_layers"]:
                L.append(f"| {r['name']} | {r['exponent']:.4f} | {r['loss_before']:.3e} | {r['loss_after']:.3e} | "
                         f"{r['seconds']:.2f} |")
            L.append("")
        L += _wins(f["weight_only"], True) + [f"- {s}" for s in _nupes_vs_gptq(f["weight_only"])] + [""]
    if "sweep" in results:
        L += ["### PowerQuant exponent sweep (Fashion-MNIST, data-free, top-1 % on the full test set)", "",
              "The data-free search minimizes the weight reconstruction error; this table shows how well that "
              "proxies accuracy.", "", "| weight bits | exponent | top-1 % |", "|---:|---|---:|"]
        for r in results["sweep"]["rows"]:
            L.append(f"| {r['wbits']} | {r['exponent']} | {r['top1']:.2f} |")
        L.append("")
    if "charlm" in results:
        c = results["charlm"]
        L += ["## KJV character-level transformer (held-out perplexity, lower is better)", "",
              f"Float: **{c['float']:.4f}** on {c['held_out_chars']} held-out characters.", ""]
        L += _table(c["rows"], "perplexity", 3) + [""] + _wins(c["rows"], False) + \
            [f"- {s}" for s in _nupes_vs_gptq(c["rows"])] + [""]
    if "minilm" in results:
        m = results["minilm"]
        L += ["## all-MiniLM-L6-v2 (pretrained), all 36 linear layers", "",
              f"Mean cosine of the sentence embedding to the float model, and nearest-neighbour agreement, on "
              f"{m['n_sentences']} KJV verses; calibration: 128 verses of 24 tokens.", ""]
        L += _table(m["rows"], "cosine / NN agreement") + [""] + _wins(m["rows"], True) + \
            [f"- {s}" for s in _nupes_vs_gptq(m["rows"])] + [""]
    for name, err in results.get("_errors", {}).items():
        L += [f"## {name}: not measured", "", f"    {err}", ""]
    return "\n".join(L)


def main(argv=None):
    p = argparse.ArgumentParser(prog="nupes-sim eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  nupes-sim eval\n  nupes-sim eval --quick --only fashion")
    p.add_argument("--quick", action="store_true", help="fewer settings and test samples (minutes, not tens)")
    p.add_argument("--only", default="fashion,sweep,charlm,minilm", help="comma-separated subset")
    p.add_argument("--steps", type=int, default=50, help="NUPES steps per layer")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file to (re)write atomically")
    p.add_argument("--json", default=None, help="also write the raw numbers as JSON here (after each section)")
    p.add_argument("--resume", action="store_true", help="reuse the sections already in --json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    results, errors = {}, {}
    if args.resume and args.json and Path(args.json).is_file():
        results = {k: v for k, v in json.loads(Path(args.json).read_text()).items() if not k.startswith("_")}
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        if name in results:
            _log(f"[{name}] taken from {args.json}")
            continue
        fn = {"fashion": fashion, "sweep": sweep, "charlm": charlm, "minilm": minilm}.get(name)
        if fn is None:
            p.error(f"--only: unknown section {name!r}; choose from fashion, sweep, charlm, minilm")
        try:
            results[name] = fn(args.quick, args.steps)
        except FileNotFoundError as e:  # a data package is missing: say so in the report
            errors[name] = str(e)
            _log(f"[{name}] skipped: {e}")
        if args.json:  # after every section, so a long run can be resumed
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    results["_errors"] = errors
    text = render(results, args, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
