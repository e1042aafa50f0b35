"""The results generator's runner: the method rows, seeds, timing and the --json checkpoint.

Every model section (results_models.py) measures its rows through `_method_rows`; the
report is written by results_render.py; the command line is results.py.
"""

import statistics
import sys
import time

#: signed codes [-2^(b-1), 2^(b-1)-1] (all 2^b levels, ARITHMETIC.md §1) for every power and
#: symmetric-uniform row, like the IST-DASLab reference's symmetric grid; the codebook (NF,
#: k-means) and asymmetric rows keep their own grids
FULL = {"full_range": True}
METHODS = [  # (label, method, needs data, extra kwargs); data-driven rows all use target 'float'
    ("RTN (uniform, full range)", "rtn", False, FULL),
    ("PowerQuant", "powerquant", False, FULL),
    ("NF RTN", "nf", False, {}),
    ("NUPES data-free", "nupes", False, {"nupes_init": "powerquant", **FULL}),
    ("GPTQ (uniform, full range)", "gptq", True, FULL),
    ("GPTQ (standard asymmetric grid)", "gptq_asym", True, {}),
    ("k-means, Hessian-weighted", "kmeans", True, {}),
    ("GPTQ (power grid)", "gptq_power", True, FULL),
    ("NUPES data-driven", "nupes", True, {"nupes_init": "gptq_power", **FULL}),
]
SEEDS = (0, 1, 2)  # calibration-sampling seeds of the data-driven rows
#: data-driven baselines measured at seed 0 only (CPU time); their spread is not measured
ONE_SEED = {"gptq_asym", "kmeans"}
TARGET = "float"  # every data-driven row matches the float network's output from quantized inputs

#: rows measured by this invocation / reused from --json with --resume (reported in the header)
COUNTS = {"measured": 0, "reused": 0}
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


def _grid(method, wbits, extra):
    """The weight grid of a row, for the table: its code range, or its codebook."""
    if method == "nf":
        return f"NF codebook, {2**wbits} values"
    if method == "kmeans":
        return f"k-means codebook, {2**wbits} values"
    if method == "gptq_asym":
        return f"[0, {2**wbits - 1}] + zero point"
    m = 2 ** (wbits - 1) - 1
    return f"[{-m - 1}, {m}]" if extra.get("full_range") else f"[{-m}, {m}]"


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


def _method_rows(name, model, evaluate, calib_fn, settings, steps, extra_methods=()):
    """Rows for every setting and method (METHODS, then a model's extra_methods, same
    layout): data-free once, data-driven once per seed in SEEDS (mean ± std). Each finished
    row is checkpointed (and reused with --resume)."""
    rows = []
    methods = list(METHODS)
    for m in extra_methods:  # after the data-free rows
        methods.insert(1 + max(i for i, x in enumerate(methods) if not x[2]), m)
    caches = {seed: {} for seed in SEEDS}  # float-network layer inputs, shared across methods and settings
    calibs = {seed: calib_fn(seed) for seed in SEEDS}
    own = {}  # label -> {seed: (inputs, float-input cache, seconds to make)} of rows with a "calib_fn"
    for setting in settings:
        for label, method, needs_data, extra in methods:
            key = f"{name}|{setting['label']}|{label}"
            row_calib = extra.get("calib_fn")  # the row's own calibration inputs per seed
            extra = {k: v for k, v in extra.items() if k != "calib_fn"}
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
                calib, cache = (calibs[seed], caches[seed]) if needs_data else (None, None)
                if row_calib is not None:  # made once per seed, shared across settings
                    made = own.setdefault(label, {})
                    if seed not in made:
                        t0 = time.perf_counter()
                        made[seed] = (row_calib(seed), {}, time.perf_counter() - t0)
                        _log(f"    {label}: calibration inputs of seed {seed} made in {made[seed][2]:.1f}s")
                    calib, cache, _ = made[seed]
                if needs_data:
                    kw.update(target=TARGET, float_inputs=cache, seed=seed)
                qmodel, report, sec = _quantize(model, method, setting["wbits"], calib, extra, **kw)
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
                grid=_grid(method, setting["wbits"], extra),
            )
            if layers is not None:
                row["layers"] = layers
            if row_calib is not None:  # seconds to make its inputs (once per seed, not in 'seconds')
                row["calib_seconds"] = statistics.mean(v[2] for v in own[label].values())
            rows.append(row)
            COUNTS["measured"] += 1
            _CHECKPOINT["rows"][key] = row
            if _CHECKPOINT["save"]:
                _CHECKPOINT["save"]()
    return rows
