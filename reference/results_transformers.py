"""The results generator's integer-transformer sections (issue #10's acceptance): the char LM
and MiniLM quantized, exported to the integer graph and run on the Numba CPU simulator,
against their float64 fake-quant twin and the float model (transformer_results.py measures
each row). Targets: char LM W4A8 (NUPES data-driven) integer perplexity within 1 % of the
twin and 3 % of float; MiniLM W4A8 integer embedding cosine >= 0.97 to float and >= 0.995 to
the twin."""

from .results_run import _CHECKPOINT, COUNTS, _log

#: scope (command-line options of results.py): settings (weight bits, activation bits), weight
#: methods, held-out characters, MiniLM verses (of the 2000) and tokens per verse
TX_SCOPE = {
    "settings": ((4, 8), (8, 8)),
    "methods": ("powerquant", "gptq_power", "nupes"),
    "chars": 20480,
    "sentences": 2000,
    "tokens": 48,
}
#: weight codes [-2^(b-1), 2^(b-1)-1], as the weight sections' power and uniform rows
FULL_RANGE = True
TARGETS = {
    "charlm_twin_pct": 1.0,
    "charlm_float_pct": 3.0,
    "minilm_cos_float": 0.97,
    "minilm_cos_twin": 0.995,
}


def _rows(section, fn):
    rows = []
    from .results_models import UNIT

    for wbits, abits in TX_SCOPE["settings"]:
        if UNIT["setting"] not in (None, f"W{wbits}A{abits}"):
            continue
        for method in TX_SCOPE["methods"]:
            key = f"{section}|W{wbits}A{abits}|{method}"
            if key in _CHECKPOINT["rows"]:
                rows.append(_CHECKPOINT["rows"][key])
                COUNTS["reused"] += 1
                continue
            _log(f"[{section}] W{wbits}A{abits} {method} ...")
            r = dict(fn(wbits, abits, method), setting=f"W{wbits}A{abits}")
            _log(f"    {r}")
            rows.append(r)
            COUNTS["measured"] += 1
            _CHECKPOINT["rows"][key] = r
            if _CHECKPOINT["save"]:
                _CHECKPOINT["save"]()
    return rows


def charlm_int(quick, steps):
    from .transformer_results import charlm

    chars = 2048 if quick else TX_SCOPE["chars"]
    rows = _rows(
        "charlm_int",
        lambda w, a, m: charlm(
            w, m, chars, steps=steps if m == "nupes" else None, act_bits=a, full_range=FULL_RANGE
        ),
    )
    return {"rows": rows, "chars": chars}


def minilm_int(quick, steps):
    from .transformer_results import minilm

    n = 64 if quick else TX_SCOPE["sentences"]
    T = TX_SCOPE["tokens"]
    rows = _rows(
        "minilm_int",
        lambda w, a, m: minilm(
            w, m, n, T, act_bits=a, steps=steps if m == "nupes" else None, full_range=FULL_RANGE
        ),
    )
    return {"rows": rows, "sentences": n, "tokens": T}


def _codes(rows):
    full = {bool(r.get("full_range")) for r in rows}
    if full == {True}:
        return "[-2^(b-1), 2^(b-1)-1] (full range)"
    return "[-(2^(b-1)-1), 2^(b-1)-1] (symmetric)" if full == {False} else "full range on some rows only"


def _met(ok):
    return "met" if ok else "**missed**"


def render_transformers(results):
    L = []
    if "charlm_int" in results:
        c = results["charlm_int"]
        L += [
            "## Integer transformers: KJV char LM through the integer simulator (perplexity, lower is better)",
            "",
            f"Held-out perplexity on {c['rows'][0]['chars'] if c['rows'] else c['chars']} characters "
            "(non-overlapping windows of the model's context) of the float model, the float64 fake-quant twin "
            "and the integer graph on the Numba CPU backend (48-bit saturating accumulators); weight codes "
            f"{_codes(c['rows'])}; calibration: "
            "32 training windows for the activation formats, 128 for the data-driven weights. Targets (issue "
            f"#10, W4A8 NUPES data-driven): integer within {TARGETS['charlm_twin_pct']:.0f} % of the twin and "
            f"{TARGETS['charlm_float_pct']:.0f} % of float.",
            "",
            "| setting | weights | float | twin | integer | integer vs twin | integer vs float | quantize s | "
            "simulate s | targets |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in c["rows"]:
            t = abs(r["int_vs_twin_pct"]) <= TARGETS["charlm_twin_pct"]
            f = r["int_vs_float_pct"] <= TARGETS["charlm_float_pct"]
            L.append(
                f"| {r['setting']} | {r['method']} | {r['float']:.4f} | {r['twin']:.4f} | {r['integer']:.4f} | "
                f"{r['int_vs_twin_pct']:+.2f} % | {r['int_vs_float_pct']:+.2f} % | {r['seconds_quant']:.0f} | "
                f"{r['seconds_integer']:.0f} | twin {_met(t)}, float {_met(f)} |"
            )
        L.append("")
    if "minilm_int" in results:
        m = results["minilm_int"]
        L += [
            "## Integer transformers: all-MiniLM-L6-v2 through the integer simulator (sentence embeddings)",
            "",
            f"Mean cosine and nearest-neighbour agreement of the mean-pooled last hidden state on the first "
            f"{m['sentences']} of the 2000 evaluation verses, {m['tokens']} tokens each (padded/truncated; the "
            "float model sees the same tokens): integer graph on the Numba CPU backend against the float model and "
            "against the float64 fake-quant twin, and the twin against float. Weight codes "
            f"{_codes(m['rows'])}. Calibration: "
            f"{m['rows'][0].get('n_calib', 32) if m['rows'] else '-'} other verses (activation formats and "
            "data-driven weights). Targets (issue #10, W4A8): integer vs float cosine "
            f"≥ {TARGETS['minilm_cos_float']}, integer vs twin ≥ {TARGETS['minilm_cos_twin']}.",
            "",
            "| setting | weights | int vs float cos / NN | int vs twin cos / NN | twin vs float cos / NN | "
            "quantize s | simulate s | targets |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in m["rows"]:
            a = r["cos_integer_vs_float"] >= TARGETS["minilm_cos_float"]
            b = r["cos_integer_vs_twin"] >= TARGETS["minilm_cos_twin"]

            def p(x, y):
                return f"{r[f'cos_{x}_vs_{y}']:.4f} / {100 * r[f'nn_{x}_vs_{y}']:.1f} %"

            L.append(
                f"| {r['setting']} | {r['method']} | {p('integer', 'float')} | {p('integer', 'twin')} | "
                f"{p('twin', 'float')} | {r['seconds_quant']:.0f} | {r['seconds_eval']:.0f} | "
                f"float {_met(a)}, twin {_met(b)} |"
            )
        L.append("")
    return L
