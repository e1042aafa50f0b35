"""`results --jobs N`: the sections' settings measured in N worker processes.

Each unit of work is one setting of one section (results_models.setting_labels), measured by
a fresh `spawn` process (after torch or numba ran, a forked child can hang) that parses the
same command line (results.configure) and runs the section with results_models.UNIT set to
that setting. The parent merges a section's units in setting order once all are in, so the
report is the one a single process writes; it is rewritten after every unit. A unit that
raises is reported in the file and does not stop the others. Each worker checkpoints its rows
to `<json>.part-<section>-<setting>.json`, which --resume also reads.
"""

import json
import multiprocessing as mp
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from .results_run import _log


def _part_path(json_path, name, label):
    tag = (label or "all").replace(" ", "_")
    return Path(f"{json_path}.part-{name}-{tag}.json")


def _unit(argv, name, label):
    """Worker: measure setting `label` of section `name` (None: the whole section)."""
    import torch

    from . import results as cli
    from . import results_run as run
    from .results_models import UNIT

    args, _ = cli.configure(argv)
    UNIT["setting"] = label
    part = _part_path(args.json, name, label) if args.json else None
    if args.resume and part is not None:
        for f in (Path(args.json), part):
            if f.is_file():
                run._CHECKPOINT["rows"].update(json.loads(f.read_text()).get("_rows", {}))

    def save():
        if part is not None:
            cli._write_json(part, {"_rows": run._CHECKPOINT["rows"]})

    run._CHECKPOINT["save"] = save
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        result, error = cli.SECTIONS[name](args.quick, args.steps), None
    except FileNotFoundError as e:  # a data package is missing: the report says so
        result, error = None, str(e)
    return dict(
        result=result,
        error=error,
        rows=run._CHECKPOINT["rows"],
        measured=run.COUNTS["measured"],
        reused=run.COUNTS["reused"],
        seconds=time.perf_counter() - t0,
    )


def merge(parts):
    """One section's result from its units' results (in setting order): the row lists are
    concatenated, every other field is the same in each unit and taken from the first."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    out = dict(parts[0])
    for key in ("rows", "weight_only"):
        if key in out:
            out[key] = [r for p in parts for r in p[key]]
    return out


def run_parallel(args, names, results, errors, save, report):
    """Measure `names` in args.jobs workers; fill `results` / `errors` as units finish, calling
    save() and report(pending sections) after each."""
    from . import results_run as run
    from .results_models import setting_labels

    labels = {n: setting_labels(n, args.quick) for n in names}
    parts = {n: {} for n in names}
    units = [(n, label) for n in names for label in labels[n]]
    _log(f"--jobs {args.jobs}: {len(units)} units: " + ", ".join(f"{n}/{lb or 'all'}" for n, lb in units))
    # a fresh process per unit: no counts, checkpoint rows or scopes carried between units
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as ex:
        futures = {ex.submit(_unit, args.argv, n, label): (n, label) for n, label in units}
        for fut in as_completed(futures):
            n, label = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # noqa: BLE001 - a crashed unit is reported, the others go on
                _log(f"[{n}] {label or ''} crashed:\n{traceback.format_exc()}")
                errors[n] = errors.get(n, "") + f"{label or n} not measured: {type(e).__name__}: {e}. "
                parts[n][label] = None
            else:
                run.COUNTS["measured"] += r["measured"]
                run.COUNTS["reused"] += r["reused"]
                run._CHECKPOINT["rows"].update(r["rows"])
                if r["error"]:
                    errors[n] = r["error"]
                parts[n][label] = r["result"]
                _log(f"[{n}] {label or 'all'} done in {r['seconds']:.0f}s")
            if len(parts[n]) == len(labels[n]):
                merged = merge([parts[n][lb] for lb in labels[n]])
                if merged is not None:
                    results[n] = merged
            save()
            report([m for m in names if len(parts[m]) < len(labels[m])])
