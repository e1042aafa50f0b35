"""Peak memory and time of `nupes-sim golden`, `verify` and `audit` on realistic layer sizes
(issue #19): a Linear 4096x4096 and a Conv2d 3x3 256->256 on 56x56, each in its own model
file, measured per command with `/usr/bin/time -v` (peak RSS of the command's process tree
as GNU time reports it, wall time, exit status).

    nice python benchmarks/bench_memory.py --work /tmp/nupes-bench-mem --vectors 2 --max-memory 4G

prints a Markdown table (and --json FILE writes the raw figures). The layers carry no
real-format metadata (`meta=None`), so the audit's float reference takes the LUT path, the
one that used to ask for 55 GiB. Weights and biases are random (seed 0); W4 signed power
codes with per-channel scales, A8 unsigned inputs, 48-bit saturating accumulators,
threshold requantization. A command running past --timeout is ended by `timeout` (its row
says so, with the peak RSS reached until then).
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

# (model, verb, backend); a model's golden file comes from its first golden row.
DEFAULT_RUNS = (
    ("linear", "golden", "numpy"),
    ("linear", "golden", "cpu"),
    ("linear", "verify", "numpy"),
    ("linear", "verify", "cpu"),
    ("linear", "audit", "numpy"),
    ("linear", "audit", "cpu"),
    ("conv", "golden", "cpu"),
    ("conv", "golden", "numpy"),
    ("conv", "verify", "numpy"),
    ("conv", "verify", "cpu"),
    ("conv", "audit", "cpu"),
)
MODELS = {
    "linear": "Linear 4096x4096 (input 4096)",
    "conv": "Conv2d 3x3 256->256, padding 1 (input 256x56x56)",
}


def build_models(work):
    """The two model files of issue #19 (written once; reused when present)."""
    import dataclasses

    import numpy as np

    from nupes_sim.formats import PowerFormat
    from nupes_sim.graph import Graph
    from nupes_sim.layers import Accumulator, Conv2d, Linear
    from nupes_sim.serialize import save_model

    paths = {name: work / f"{name}.h5" for name in MODELS}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    xf = PowerFormat(8, False, 0.7, 0.02)
    of = PowerFormat(8, False, 0.7, 0.5)
    acc = Accumulator(48, "saturate")
    wl = PowerFormat(4, True, 0.7, np.full(4096, 0.05), "channel")
    lin = Linear.build(
        "fc", rng.integers(-7, 8, (4096, 4096)), wl, xf, acc=acc, out_fmt=of,
        bias=rng.normal(size=4096), w_frac_bits=12, x_frac_bits=8,
    )  # fmt: skip
    wc = PowerFormat(4, True, 0.7, np.full(256, 0.05), "channel")
    conv = Conv2d.build(
        "conv", rng.integers(-7, 8, (256, 256, 3, 3)), wc, xf, padding=1, acc=acc, out_fmt=of,
        bias=rng.normal(size=256), w_frac_bits=12, x_frac_bits=8,
    )  # fmt: skip
    save_model(Graph([dataclasses.replace(lin, meta=None)]), paths["linear"], input_shape=(4096,))
    save_model(Graph([dataclasses.replace(conv, meta=None)]), paths["conv"], input_shape=(256, 56, 56))
    return paths


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def timed(cmd, timeout, log):
    """Run cmd under `/usr/bin/time -v timeout T`; (rc, peak RSS bytes, wall seconds)."""
    full = ["/usr/bin/time", "-v", "timeout", str(timeout)] + cmd
    t0 = time.monotonic()
    r = subprocess.run(full, capture_output=True, text=True)
    wall = time.monotonic() - t0
    log.write_text("$ " + " ".join(full) + "\n" + r.stdout + r.stderr)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    rc = r.returncode
    st = re.search(r"Exit status: (\d+)", r.stderr)
    if st:
        rc = int(st.group(1))
    return rc, int(m.group(1)) * 1024 if m else None, wall


def fmt_bytes(n):
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_time(s):
    m, s = divmod(int(round(s)), 60)
    return f"{m}:{s:02d}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/nupes-bench-mem", help="folder for models, golden files, logs")
    ap.add_argument("--vectors", type=int, default=2, help="random input vectors per golden file (default 2)")
    ap.add_argument("--max-memory", default="4G", help="--max-memory given to every command (default 4G)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per command before it is ended")
    ap.add_argument("--only", help="comma-separated model:verb:backend rows (default: all)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    models = build_models(work)
    runs = DEFAULT_RUNS
    if a.only:
        runs = tuple(tuple(r.split(":")) for r in a.only.split(","))
    cli = [sys.executable, "-m", "nupes_sim.cli"]
    rows = []
    load0 = os.getloadavg()[0]
    for model, verb, backend in runs:
        golden = work / f"golden_{model}.h5"
        common = ["--backend", backend, "--max-memory", a.max_memory, "-q"]
        if verb == "golden":
            out = work / f"golden_{model}_{backend}.h5"
            out.unlink(missing_ok=True)
            cmd = cli + ["golden", str(models[model]), "--random", str(a.vectors), "--out", str(out)] + common
        elif verb == "verify":
            if not golden.exists():
                raise SystemExit(f"no golden file for {model}: run a {model}:golden:* row first")
            cmd = cli + ["verify", str(golden), "--model", str(models[model])] + common
        else:
            out = work / f"audit_{model}_{backend}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            cmd = cli + ["audit", str(models[model]), "--random", str(a.vectors), "--out", str(out)] + common
        rc, rss, wall = timed(cmd, a.timeout, work / f"{model}_{verb}_{backend}.log")
        if verb == "golden" and rc == 0 and not golden.exists():
            os.link(out, golden)
        row = dict(model=model, verb=verb, backend=backend, rc=rc, peak_rss=rss, wall_s=round(wall, 1))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    info = dict(
        machine=machine(),
        load_before=round(load0, 2),
        load_after=round(os.getloadavg()[0], 2),
        vectors=a.vectors,
        max_memory=a.max_memory,
        nice=os.nice(0),
        threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
    )
    if a.json:
        Path(a.json).write_text(json.dumps(dict(info, rows=rows), indent=1))
    print(
        f"machine: {info['machine']}; load average {info['load_before']} before, {info['load_after']} after"
    )
    print(
        f"{a.vectors} random vectors, --max-memory {a.max_memory}, nice {info['nice']}, {info['threads']}\n"
    )
    print("| model | command | backend | peak RSS | wall time | exit |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        ex = "timeout" if r["rc"] == 124 else str(r["rc"])
        print(
            f"| {MODELS[r['model']]} | {r['verb']} | {r['backend']} | {fmt_bytes(r['peak_rss'])} "
            f"| {fmt_time(r['wall_s'])} | {ex} |"
        )
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
