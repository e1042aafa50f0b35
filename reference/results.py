"""Regenerate docs/RESULTS.md: every method on every model, measured in one run.

    python -m nupes_sim.reference.results [--quick] [--only fashion,fashion_act,charlm,minilm,sweep,charlm_int,minilm_int] [--out docs/RESULTS.md]
                                          [--json raw.json [--resume]] [--jobs 2]

(also `nupes-sim eval`). Whatever is measured is written, including where NUPES loses.
RESULTS.md is rewritten after every section (with the sections still pending named at the
top) and finished rows are checkpointed to --json, so an interrupted run resumes with
--resume; the header counts rows reused that way.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import results_run as run
from .results_models import (
    ACT_SCOPE,
    MINILM_SCOPE,
    SIM_IMAGES,
    W2,
    charlm,
    fashion,
    fashion_act,
    minilm,
    sweep,
)
from .results_render import render
from .results_run import _CHECKPOINT, _log
from .results_transformers import TX_SCOPE, charlm_int, minilm_int

#: the sections in the order a run measures them: the most important first, so that an
#: interrupted run has them (the report orders them its own way, results_render.ALL_SECTIONS)
SECTIONS = {
    "fashion": fashion,
    "charlm": charlm,
    "minilm": minilm,
    "charlm_int": charlm_int,
    "minilm_int": minilm_int,
    "fashion_act": fashion_act,
    "sweep": sweep,
}
W2_MODELS = ("fashion", "charlm", "minilm")


def generator_commit():
    """The git commit of the generator's checkout, '+dirty' when tracked files differ from it
    (the header names it); None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _write(out, text):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, out)


def configure(argv=None):
    """Parse the command line and set the sections' scopes (module-level dicts) from it; a
    --jobs worker calls it with the same argv. Returns (args, section names to run)."""
    p = argparse.ArgumentParser(
        prog="nupes-sim eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nupes-sim eval\n  nupes-sim eval --quick --only fashion",
    )
    p.add_argument("--quick", action="store_true", help="fewer settings and test samples (minutes, not tens)")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}"
    )
    p.add_argument("--steps", type=int, default=15, help="NUPES dsq steps per layer")
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown file to (re)write atomically")
    p.add_argument("--json", default=None, help="also write the raw numbers as JSON here (after every row)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the sections and rows already in --json (the header counts reused rows)",
    )
    p.add_argument(
        "--no-activations", action="store_true", help="skip the Fashion integer-simulator rows (fashion_act)"
    )
    p.add_argument(
        "--sim-images",
        type=int,
        default=SIM_IMAGES["n"],
        help="Fashion test images run through the integer simulator in fashion_act (CPU time)",
    )
    p.add_argument("--act-images", type=int, default=2000, help="fashion_act: fake-quant test images")
    p.add_argument(
        "--act-settings", default="W4A8,W4A4,W3A8", help="fashion_act: comma-separated WxAy settings"
    )
    p.add_argument("--act-seeds", type=int, default=3, help="fashion_act: calibration seeds 0..N-1")
    p.add_argument(
        "--tx-settings", default="W4A8,W8A8", help="charlm_int/minilm_int: comma-separated WxAy settings"
    )
    p.add_argument(
        "--tx-methods",
        default=",".join(TX_SCOPE["methods"]),
        help="charlm_int/minilm_int: weight methods (powerquant, gptq, gptq_power, nupes)",
    )
    p.add_argument("--tx-chars", type=int, default=TX_SCOPE["chars"], help="charlm_int: held-out characters")
    p.add_argument(
        "--tx-sentences",
        type=int,
        default=TX_SCOPE["sentences"],
        help="minilm_int: evaluation verses (<= 2000)",
    )
    p.add_argument("--tx-tokens", type=int, default=TX_SCOPE["tokens"], help="minilm_int: tokens per verse")
    p.add_argument(
        "--minilm-sentences",
        type=int,
        default=MINILM_SCOPE["sentences"],
        help="minilm: evaluation verses of the weight-only rows (<= 2000)",
    )
    p.add_argument(
        "--w2",
        default=",".join(W2_MODELS),
        help="weight sections with W2 rows: comma-separated subset of fashion,charlm,minilm, or 'none'",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes (spawn) measuring settings of the sections in parallel (results_jobs.py)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the header shows the command
    args.commit = generator_commit()
    w2 = tuple(m.strip() for m in args.w2.split(",") if m.strip() and m.strip() != "none")
    if any(m not in W2_MODELS for m in w2):
        p.error(f"--w2: expected a subset of {','.join(W2_MODELS)} or 'none', got {args.w2!r}")
    W2["models"] = w2
    if not 2 <= args.minilm_sentences <= 2000:
        p.error(f"--minilm-sentences must be in [2, 2000], got {args.minilm_sentences}")
    MINILM_SCOPE["sentences"] = args.minilm_sentences
    if args.sim_images < 1:
        p.error(f"--sim-images must be >= 1, got {args.sim_images}")
    SIM_IMAGES["n"] = args.sim_images
    try:
        settings = tuple(
            (int(w), int(a))
            for w, a in (t.strip().upper()[1:].split("A") for t in args.act_settings.split(","))
        )
    except ValueError:
        p.error(f"--act-settings: expected e.g. W4A4,W3A8, got {args.act_settings!r}")
    if args.act_images < 1 or args.act_seeds < 1:
        p.error(f"--act-images and --act-seeds must be >= 1, got {args.act_images} and {args.act_seeds}")
    try:
        tx_settings = tuple(
            (int(w), int(a))
            for w, a in (t.strip().upper()[1:].split("A") for t in args.tx_settings.split(","))
        )
    except ValueError:
        p.error(f"--tx-settings: expected e.g. W4A8,W8A8, got {args.tx_settings!r}")
    if not 1 <= args.tx_sentences <= 2000 or args.tx_chars < 1 or args.tx_tokens < 2:
        p.error(
            f"--tx-sentences must be in [1, 2000], --tx-chars >= 1 and --tx-tokens >= 2; got "
            f"{args.tx_sentences}, {args.tx_chars}, {args.tx_tokens}"
        )
    TX_SCOPE.update(
        settings=tx_settings,
        methods=tuple(m.strip() for m in args.tx_methods.split(",") if m.strip()),
        chars=args.tx_chars,
        sentences=args.tx_sentences,
        tokens=args.tx_tokens,
    )
    ACT_SCOPE.update(images=args.act_images, settings=settings, seeds=tuple(range(args.act_seeds)))
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    for name in names:
        if name not in SECTIONS:
            p.error(f"--only: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
    if args.no_activations:
        names = [n for n in names if n != "fashion_act"]
    return args, names


def _write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None):
    args, names = configure(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    results, errors = {}, {}
    if args.resume and args.json and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        _CHECKPOINT["rows"].update(saved.get("_rows", {}))
        results = {k: v for k, v in saved.items() if not k.startswith("_")}
        run.COUNTS["reused"] += sum(len(v.get("rows", v.get("weight_only", []))) for v in results.values())

    def save():
        if args.json:
            _write_json(args.json, dict(results, _rows=_CHECKPOINT["rows"]))

    _CHECKPOINT["save"] = save
    out = Path(args.out)
    if args.jobs > 1:
        from .results_jobs import run_parallel

        def report(pending):
            results["_errors"] = errors
            _write(out, render(results, args, time.perf_counter() - t0, pending))
            del results["_errors"]

        for name in names:
            if name in results:
                _log(f"[{name}] taken from {args.json}")
        run_parallel(args, [n for n in names if n not in results], results, errors, save, report)
        names = []
    for i, name in enumerate(names):
        if name in results:
            _log(f"[{name}] taken from {args.json}")
            continue
        fn = SECTIONS[name]
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
