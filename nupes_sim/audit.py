"""Numerical-stability audit of an integer graph on given input codes.

Per layer with an accumulator: observed range of the exact sums vs the analytic worst case
(`layer.bound`) and the configured width (headroom in bits, minimal safe width), overflow
counts, how many results the configured mode / wrap / saturate change relative to the exact
sum, fractions of zero and clipped output codes, the error of the integer accumulator against
a float64 execution in accumulator LSBs (histogram), the formats' exponents/scales when known
(layer.meta), and a per-layer loss history if the model file carries one.

Float64 reference: operands are decoded with the formats' real values
(sign(q)(s|q|)^(1/a), or s(q - z)) and the real bias when the layer carries `meta`
(built by the builders); otherwise with the integer LUT values times their unit (then the
error only shows accumulator overflow/saturation effects, not table rounding).
"""

import dataclasses
import json
import os

import numpy as np

from .atomic import atomic_dir
from .graph import INPUT, get_backend
from .layers import Accumulator
from .serialize import load_model, model_hash
from .tables import Rescale

FAIL_CHOICES = ("overflow", "saturation", "clipping")


def bits_needed(m):
    """Smallest two's complement width holding [-m, m]."""
    return int(m).bit_length() + 1


def reference_sum(layer, inputs):
    """Float64 exact result in accumulator LSBs for a layer with an accumulator, and which
    reference was used ('real formats' or 'LUT values x unit'); (None, None) otherwise.
    Each layer type defines its own (`Layer.float_reference`)."""
    return layer.float_reference(inputs)


def _changed_under(layer, mode, inputs, be, exact):
    """Elements whose accumulator under `mode` differs from the exact sum."""
    if layer.no_overflow_possible():
        return 0
    tile = layer.acc.tile if mode == "saturate" else 0
    alt = dataclasses.replace(layer, acc=Accumulator(layer.acc.width, mode, tile), requant=None)
    st = be.run_layer(alt, *inputs)
    return int((st["acc"] != exact).sum())


def _clipped(layer, out):
    rq = getattr(layer, "requant", None)
    if rq is None:
        return 0
    floor = rq.zero_point if isinstance(rq, Rescale) else 0
    hi = out == rq.qmax
    lo = (out == rq.qmin) if rq.qmin < floor else np.zeros(out.shape, bool)
    return int((hi | lo).sum())


def audit(model, input_codes, out_dir, fail_on=(), backend="numpy", clip_tolerance=0.0, plots=True):
    """Audit `model` (Graph, model file path) on input codes (N, ...) and write report.md,
    report.json and PNG plots into out_dir. Returns the report dict; report['failed'] lists
    the fail_on checks that triggered (the CLI exits 1 when it is non-empty)."""
    for c in fail_on:
        if c not in FAIL_CHOICES:
            raise ValueError(f"fail_on={c!r} is not allowed; choose from {FAIL_CHOICES}")
    history, out_unit = {}, None
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, full=True)
    if hasattr(model, "graph"):
        graph, history = model.graph, getattr(model, "loss_history", {}) or {}
        out_unit = getattr(model, "output_unit", None)
    else:
        graph = model
    x = np.asarray(input_codes)
    be = get_backend(backend)
    res = graph.run(x, backend=backend, intermediates=True)
    values = {INPUT: x}
    layers, errors = [], {}
    for n in graph.nodes:
        L, st = n.layer, res.stages[n.name]
        inputs = [values[i] for i in n.inputs]
        values[n.name] = st["out"]
        rec = {"name": n.name, "type": type(L).__name__}
        out = np.asarray(st["out"])
        if "acc" in L.stages():
            exact, acc = np.asarray(st["acc_exact"]), np.asarray(st["acc"])
            omax = int(np.abs(exact).max(initial=0))
            bound = int(np.asarray(L.bound).max(initial=0))
            rec.update(
                acc_width=L.acc.width,
                overflow_mode=L.acc.overflow,
                tile=L.acc.tile,
                observed_min=int(exact.min(initial=0)),
                observed_max=int(exact.max(initial=0)),
                observed_bits=bits_needed(omax),
                bound=bound,
                min_safe_width=bits_needed(bound),
                headroom_bits=L.acc.width - bits_needed(omax),
                bound_headroom_bits=L.acc.width - bits_needed(bound),
                overflow_count=int(res.overflow[n.name]),
                changed_configured=int((acc != exact).sum()),
                changed_if_wrap=_changed_under(L, "wrap", inputs, be, exact),
                changed_if_saturate=_changed_under(L, "saturate", inputs, be, exact),
            )
            ref, kind = reference_sum(L, inputs)
            if ref is not None:
                err = acc.astype(np.float64) - ref
                errors[n.name] = err.reshape(-1)
                rec.update(
                    reference=kind,
                    err_lsb_mean=float(err.mean()),
                    err_lsb_max_abs=float(np.abs(err).max()),
                    err_lsb_rms=float(np.sqrt((err**2).mean())),
                    unit=np.asarray(L.unit, dtype=np.float64).tolist(),
                )
            rq = L.requant
            rec["requant"] = None if rq is None else type(rq).__name__
            if rq is not None:
                rec.update(out_qmin=int(rq.qmin), out_qmax=int(rq.qmax))
        zeros, clipped = int((out == 0).sum()), _clipped(L, out)
        rec.update(
            elements=int(out.size),
            zero_count=zeros,
            zero_fraction=zeros / out.size if out.size else 0.0,
            clipped_count=clipped,
            clipped_fraction=clipped / out.size if out.size else 0.0,
        )
        meta = getattr(L, "meta", None)
        if meta:
            rec["formats"] = {
                k: {kk: v[kk] for kk in ("kind", "bits", "exponent", "scale", "zero_point") if kk in v}
                for k, v in meta.items()
                if k.endswith("_format") and v
            }
        if n.name in history:
            rec["loss_history"] = [float(v) for v in history[n.name]]
        layers.append(rec)
    failed, failures = [], []
    checks = {  # check: (failing layers, their count, what is counted)
        "overflow": ([r for r in layers if r.get("overflow_count", 0)], "overflow_count", "overflowing sums"),
        "saturation": ([r for r in layers if r.get("changed_configured", 0)], "changed_configured", "changed sums"),
        "clipping": ([r for r in layers if r["clipped_fraction"] > clip_tolerance], "clipped_count", "clipped codes"),
    }  # fmt: skip
    for c in FAIL_CHOICES:
        bad, key, what = checks[c]
        if c in fail_on and bad:
            failed.append(c)
            detail = "; ".join(f"{r['name']}: {r[key]} of {r['elements']} {what}" for r in bad)
            tol = f", tolerance {100 * clip_tolerance:g} %" if c == "clipping" else ""
            failures.append(f"{c} in {len(bad)} layer(s) ({detail}{tol})")
    decoded = None
    if out_unit is not None:
        from .float_io import decode_outputs

        real = decode_outputs(out_unit, res.output)
        flat = real.reshape(len(real), -1)
        decoded = {
            "shape": list(real.shape),
            "min": float(real.min()),
            "max": float(real.max()),
            "argmax": np.argmax(flat, axis=1).tolist(),
            "vector_0": flat[0, :16].tolist(),
        }
    report = {
        "model_hash": model_hash(graph),
        "n_vectors": int(x.shape[0]),
        "backend": backend,
        "reference_note": __doc__.split("Float64 reference: ")[1].strip().replace("\n", " "),
        "definitions": {
            "headroom_bits": "acc_width - bits needed for the largest observed |exact sum|",
            "min_safe_width": "bits needed for the analytic worst case bound (no overflow possible)",
            "changed_*": "elements whose accumulator result differs from the exact sum under that mode",
            "clipped_count": "out codes at qmax, or at qmin when qmin is below the zero code (not ReLU)",
            "clipped_fraction": "clipped_count / elements (report.md shows both: count (percent))",
            "err_lsb": "integer accumulator minus float64 reference, in accumulator LSBs",
        },
        "layers": layers,
        "fail_on": list(fail_on),
        "failed": failed,
        "failures": failures,
        "decoded_outputs": decoded,
        "plots": [],
    }
    # the whole report folder appears at once (nupes_sim.atomic); an existing folder is
    # replaced only if it is empty or holds a previous audit report
    with atomic_dir(out_dir, may_replace=lambda p: os.path.isfile(os.path.join(p, "report.json"))) as tmp:
        if plots:
            report["plots"] = _plots(layers, errors, history, tmp)
        with open(os.path.join(tmp, "report.json"), "w") as fh:
            json.dump(report, fh, indent=1)
        with open(os.path.join(tmp, "report.md"), "w") as fh:
            fh.write(_markdown(report))
    return report


def _plots(layers, errors, history, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    acc_layers = [r for r in layers if "acc_width" in r]
    if acc_layers:
        fig, ax = plt.subplots(figsize=(max(4, len(acc_layers) * 1.2), 3.5))
        idx = np.arange(len(acc_layers))
        ax.bar(idx - 0.25, [r["observed_bits"] for r in acc_layers], 0.25, label="observed")
        ax.bar(idx, [r["min_safe_width"] for r in acc_layers], 0.25, label="worst-case bound")
        ax.bar(idx + 0.25, [r["acc_width"] for r in acc_layers], 0.25, label="configured width")
        ax.set_xticks(idx, [r["name"] for r in acc_layers], rotation=30)
        ax.set_ylabel("bits")
        ax.legend(fontsize=7)
        _save(fig, out_dir, "acc_bits.png", files)
    for name, err in errors.items():
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.hist(err, bins=50)
        ax.set_title(f"{name}: integer - float64 (acc LSB)", fontsize=8)
        _save(fig, out_dir, f"err_{_safe(name)}.png", files)
    if history:
        fig, ax = plt.subplots(figsize=(4, 3))
        for name, h in history.items():
            ax.plot(np.asarray(h), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        _save(fig, out_dir, "loss_history.png", files)
    return files


def _save(fig, out_dir, name, files):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=80)
    plt.close(fig)
    files.append(name)


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _count_pct(count, total):
    """'2 (0.20 %)': the count, then a percentage that never rounds a non-zero count to 0."""
    if not total:
        return "0"
    pct = 100 * count / total
    if count and pct < 0.01:
        return f"{count} (<0.01 %)"
    return f"{count} ({pct:.2f} %)"


def _markdown(rep):
    lines = [
        "# nupes-sim audit",
        "",
        f"model_hash `{rep['model_hash']}`, {rep['n_vectors']} vectors, backend {rep['backend']}",
        "",
        "Float64 reference: " + rep["reference_note"],
        "",
        "| layer | type | width | mode | observed bits | bound bits (min safe width) | headroom | overflow | "
        "changed (configured/wrap/saturate) | zero codes (%) | clipped codes (%) | err LSB max / rms | reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["layers"]:
        if "acc_width" in r:
            err = f"{r['err_lsb_max_abs']:.3g} / {r['err_lsb_rms']:.3g}" if "err_lsb_rms" in r else "-"
            lines.append(
                f"| {r['name']} | {r['type']} | {r['acc_width']} | {r['overflow_mode']} | {r['observed_bits']} | "
                f"{r['min_safe_width']} | {r['headroom_bits']} | {r['overflow_count']} | "
                f"{r['changed_configured']}/{r['changed_if_wrap']}/{r['changed_if_saturate']} | "
                f"{_count_pct(r['zero_count'], r['elements'])} | {_count_pct(r['clipped_count'], r['elements'])} | "
                f"{err} | "
                f"{r.get('reference', '-')} |"
            )
        else:
            lines.append(
                f"| {r['name']} | {r['type']} | - | - | - | - | - | - | - | "
                f"{_count_pct(r['zero_count'], r['elements'])} | {_count_pct(r['clipped_count'], r['elements'])} | - | - |"
            )
    lines += ["", "## Formats (exponent, scale)", ""]
    for r in rep["layers"]:
        for k, f in r.get("formats", {}).items():
            sc = f.get("scale")
            sc = sc if not isinstance(sc, list) or len(sc) <= 8 else f"{sc[:8]}... ({len(sc)} entries)"
            lines.append(
                f"- {r['name']}.{k}: {f.get('kind')} {f.get('bits')} bits, exponent {f.get('exponent', '-')}, "
                f"scale {sc}"
            )
    hist = [r for r in rep["layers"] if "loss_history" in r]
    if hist:
        lines += ["", "## Loss history", ""]
        for r in hist:
            h = r["loss_history"]
            lines.append(f"- {r['name']}: {len(h)} steps, first {h[0]:.4g}, last {h[-1]:.4g}")
    lines += ["", "## Definitions", ""] + [f"- {k}: {v}" for k, v in rep["definitions"].items()]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in rep["plots"]]
    d = rep.get("decoded_outputs")
    if d:
        lines += ["", "## Decoded outputs (model file's output_unit)", ""]
        lines.append(f"shape {d['shape']}, min {d['min']:.6g}, max {d['max']:.6g}; argmax of vectors 0-"
                     f"{min(len(d['argmax']), 32) - 1}: {d['argmax'][:32]}")  # fmt: skip
    lines += ["", f"Checks requested: {rep['fail_on'] or 'none'}; failed: {rep['failed'] or 'none'}"]
    lines += [f"- {f}" for f in rep.get("failures", [])] + [""]
    return "\n".join(lines)


__all__ = ["audit", "reference_sum", "bits_needed", "FAIL_CHOICES"]
