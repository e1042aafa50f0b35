"""CPU backend benchmark: Numba/BLAS backend vs the NumPy oracle vs PyTorch fp32 fake-quant.

    nupes-sim bench --backend cpu -- [--repeats N] [--quick] [--tiny] [--write docs/PERFORMANCE.md]
    (or python -m nupes_sim.bench.cpu ...; needs torch: pip install 'nupes-sim[reference]')

Layers (both datapaths each): (a) Linear 1024x1024 at batch 256; (b) Conv2d 3x3 64->64 on a
16x64x32x32 input, padding 1. W4 signed power weights with per-channel scales, A8 unsigned
power activations (per tensor), wrap 32-bit accumulator, threshold requantization.

Timings are wall-clock medians over --repeats runs after a warm-up run (which compiles the
Numba kernels). The oracle is far too slow for the full layers: it is timed on a slice
(1 sample of the linear batch; 1 image cropped to 8x8 for the conv) and scaled to the full
layer by the ratio of MACs. PyTorch times only F.linear / F.conv2d in float32 on the
decoded (fake-quantized) weights and activations, with torch.set_num_threads(cores).
"""

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from nupes_sim import cpu, oracle
from nupes_sim.extras import require
from nupes_sim.formats import PowerFormat
from nupes_sim.layers import Accumulator, Conv2d, Linear

SEED = 0
FLOAT = cpu.CpuOptions(int8=False)  # the exact float32/float64 chunked GEMM path (gemm.py)


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine():
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return model


def median_time(fn, repeats):
    fn()  # warm-up (JIT compilation, page faults)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def formats(out_channels, per_tensor=False):
    rng = np.random.default_rng(SEED)
    if per_tensor:
        wf = PowerFormat(4, True, 2.0, np.array([0.05**2 / 7]))
    else:
        wf = PowerFormat(4, True, 2.0, rng.uniform(0.5, 1.5, out_channels) * (0.05**2 / 7), "channel")
    xf = PowerFormat(8, False, 2.0, np.array([2.0**2 / 255]))
    of = PowerFormat(8, False, 2.0, np.array([4.0**2 / 255]))
    return wf, xf, of


LUTS = {  # magnitude bits of the largest weight / activation / product table entry
    "default": None,  # Linear.build's fixed fractional bits (12 / 8 / 16)
    "demo": (20, 16, 24),  # reference.export.ExportConfig, what `nupes-sim demo` uses
    "8-bit": (7, 7, 7),  # int8 table entries, what hardware usually has
}


def _frac_bits(max_abs, bits):
    """As reference.export: round(max_abs·2^F) < 2^bits."""
    return int(min(40, max(0, bits - 1 - math.floor(math.log2(max_abs)))))


def lut_kwargs(luts, wf, xf):
    if LUTS[luts] is None:
        return {}
    wb, xb, pb = LUTS[luts]
    wmax = float((np.max(wf.scale) * 7) ** (1 / wf.exponent))
    xmax = float((np.max(xf.scale) * 255) ** (1 / xf.exponent))
    return dict(
        w_frac_bits=_frac_bits(wmax, wb),
        x_frac_bits=_frac_bits(xmax, xb),
        product_frac_bits=_frac_bits(wmax * xmax, pb),
    )


def build(kind, datapath, per_tensor=False, tiny=False, luts="default", shape=None):
    rng = np.random.default_rng(SEED + 1)
    acc = Accumulator(32, "wrap") if luts != "demo" else Accumulator(48, "saturate")
    if kind == "linear":
        O, K, B = shape or ((32, 48, 8) if tiny else (1024, 1024, 256))
        wf, xf, of = formats(O, per_tensor)
        w = rng.integers(-7, 8, (O, K))
        kw = lut_kwargs(luts, wf, xf)
        layer = Linear.build("fc", w, wf, xf, datapath=datapath, acc=acc, out_fmt=of, relu=True, **kw)
        x = rng.integers(0, 256, (B, K))
        macs = B * O * K
        return layer, x, x[:1], macs, macs // B
    O, C, H, W, B = (8, 8, 8, 8, 2) if tiny else (64, 64, 32, 32, 16)
    wf, xf, of = formats(O, per_tensor)
    w = rng.integers(-7, 8, (O, C, 3, 3))
    kw = lut_kwargs(luts, wf, xf)
    layer = Conv2d.build(
        "conv", w, wf, xf, datapath=datapath, acc=acc, out_fmt=of, relu=True, padding=1, **kw
    )
    x = rng.integers(0, 256, (B, C, H, W))
    macs = B * O * H * W * C * 9
    xs = x[:1, :, :8, :8]
    return layer, x, xs, macs, O * 8 * 8 * C * 9


def torch_time(layer, x, kind, repeats, wf, xf):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(cores())
    O = layer.out_channels
    idx = wf.scale_index(layer.w_codes.shape).reshape(layer.w_codes.shape)
    wr = torch.tensor(wf.decode_real(layer.w_codes.astype(np.float64), idx), dtype=torch.float32)
    xr = torch.tensor(xf.decode_real(x), dtype=torch.float32)
    b = torch.zeros(O)
    if kind == "linear":
        fn = lambda: F.linear(xr, wr, b)  # noqa: E731
    else:
        fn = lambda: F.conv2d(xr, wr, b, padding=1)  # noqa: E731
    with torch.inference_mode():
        return median_time(fn, repeats)


def run(repeats=5, quick=False, oracle_repeats=1, tiny=False, compare_float=False):
    rows = []
    # both layers, both datapaths, with three table widths (LUTS); then the product datapath
    # with per-tensor weight scales (one product table, like per-channel after factoring)
    configs = [(k, d, False, lu) for lu in LUTS for k in ("linear", "conv") for d in ("operand", "product")]
    configs += [(k, "product", True, "default") for k in ("linear", "conv")]
    for kind, datapath, per_tensor, luts in configs:
        layer, x, xs, macs, macs_slice = build(kind, datapath, per_tensor, tiny, luts)
        wf, xf, _ = formats(layer.out_channels, per_tensor)
        cpu.STATS.clear()
        t_cpu = median_time(lambda: cpu.run_layer(layer, x), repeats)
        path = ",".join(sorted(cpu.STATS))
        t_torch = torch_time(layer, x, kind, repeats, wf, xf)
        nan = float("nan")
        t_float = median_time(lambda: cpu.run_layer(layer, x, options=FLOAT), 1) if compare_float else nan
        if quick:
            t_or = float("nan")
        else:
            t_sl = median_time(lambda: oracle.run_layer(layer, xs), oracle_repeats)
            t_or = t_sl * macs / macs_slice
        rows.append(
            dict(
                layer=kind,
                datapath=datapath,
                scales="per-tensor" if per_tensor else "per-channel",
                luts=luts,
                macs=macs,
                cpu=t_cpu,
                torch=t_torch,
                oracle=t_or,
                float_path=t_float,
                path=path,
            )
        )
        print(
            f"{kind:6s} {datapath:7s} {'W/tensor ' if per_tensor else 'W/channel'} {luts:7s} cpu {t_cpu * 1e3:9.2f} ms  "
            f"({macs / t_cpu / 1e9:6.2f} GMAC/s)  torch {t_torch * 1e3:8.2f} ms  cpu/torch {t_cpu / t_torch:6.2f}x  "
            f"oracle~{t_or:9.2f} s  oracle/cpu {t_or / t_cpu:9.0f}x  [{path}]",
            flush=True,
        )
    return rows


SCALING = [(b, 1024) for b in (1, 16, 256, 4096)] + [(256, k) for k in (256, 512, 2048, 4096, 8192)]


def scaling(repeats=5, tiny=False):
    """The operand linear (1024 outputs, default tables) at several batches and K."""
    rows = []
    for B, K in SCALING if not tiny else [(1, 16), (4, 32)]:
        layer, x, _, macs, _ = build("linear", "operand", shape=(1024 if not tiny else 8, K, B))
        wf, xf, _ = formats(layer.out_channels)
        cpu.STATS.clear()
        t_cpu = median_time(lambda: cpu.run_layer(layer, x), repeats)
        path = ",".join(sorted(cpu.STATS))
        t_torch = torch_time(layer, x, "linear", repeats, wf, xf)
        rows.append(dict(batch=B, k=K, macs=macs, cpu=t_cpu, torch=t_torch, path=path))
        print(
            f"scaling batch {B:5d} K {K:5d}: cpu {t_cpu * 1e3:9.2f} ms  torch {t_torch * 1e3:8.2f} ms  "
            f"cpu/torch {t_cpu / t_torch:6.2f}x  [{path}]",
            flush=True,
        )
    return rows


def scaling_table(rows):
    lines = [
        "| batch | K | MACs | CPU backend (ms) | GMAC/s | PyTorch fp32 (ms) | CPU / PyTorch | path |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['k']} | {r['macs'] / 1e6:.1f} M | {r['cpu'] * 1e3:.2f} | "
            f"{r['macs'] / r['cpu'] / 1e9:.2f} | {r['torch'] * 1e3:.2f} | {r['cpu'] / r['torch']:.2f}x | {r['path']} |"
        )
    return "\n".join(lines)


def table(rows):
    lines = [
        "| layer | datapath | weight scales | tables | MACs | CPU backend (ms) | GMAC/s | PyTorch fp32 (ms) | "
        "CPU / PyTorch | float path instead (ms) | oracle, MAC-scaled (s) | oracle / CPU | integer path taken |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['datapath']} | {r['scales']} | {r['luts']} | {r['macs'] / 1e6:.0f} M | {r['cpu'] * 1e3:.1f} | "
            f"{r['macs'] / r['cpu'] / 1e9:.2f} | {r['torch'] * 1e3:.2f} | {r['cpu'] / r['torch']:.2f}x | "
            f"{r.get('float_path', float('nan')) * 1e3:.1f} | {r['oracle']:.1f} | {r['oracle'] / r['cpu']:.0f}x | {r['path']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the oracle timing")
    ap.add_argument("--tiny", action="store_true", help="tiny layers (a smoke test of the benchmark itself)")
    ap.add_argument(
        "--omp-wait",
        choices=("passive", "default"),
        default="passive",
        help="OpenMP wait policy of this run (default passive: nupes_sim.cpu.use_passive_omp_wait)",
    )
    ap.add_argument(
        "--compare-float",
        action="store_true",
        help="also time each layer on the float path (int8=False), once",
    )
    ap.add_argument(
        "--scaling", action="store_true", help="also the scaling table (batch 1..4096, K 256..8192)"
    )
    ap.add_argument("--model", action="store_true", help="also the whole Fashion ResNet (needs the data set)")
    ap.add_argument("--images", type=int, default=2000, help="test images of the --model run (default 2000)")
    ap.add_argument(
        "--write",
        metavar="PATH",
        help="write the CPU section of this Markdown file (e.g. docs/PERFORMANCE.md)",
    )
    args = ap.parse_args(argv)
    require("torch", "bench --backend cpu (PyTorch float32 timings)")
    if args.omp_wait == "passive":
        cpu.use_passive_omp_wait()  # before numba or torch start an OpenMP runtime
    env = os.environ.get("OPENBLAS_CORETYPE")
    head = (
        f"machine: {machine()}, {cores()} cores; numpy {np.__version__}; "
        f"OPENBLAS_CORETYPE={env if env else '(unset)'}; OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average before the run "
        f"{os.getloadavg()[0]:.2f} (other processes share the cores)"
    )
    print(head)
    print(
        "oracle: timed on a slice (linear: 1 of 256 samples; conv: 1 image cropped to 8x8) and "
        "scaled to the full layer by MACs"
    )
    rows = run(args.repeats, args.quick, tiny=args.tiny, compare_float=args.compare_float)
    md = table(rows)
    srows = scaling(args.repeats, args.tiny) if args.scaling else None
    mrow = None
    if args.model:
        from .model import run_model

        mrow = run_model(args.images if not args.tiny else 8, max(1, min(args.repeats, 3)))
    print(md)
    print(verdicts(rows, mrow))
    if args.write:
        write_section(args.write, render_doc(head, md, argv, rows, srows, mrow))
        print(f"wrote {args.write}")
    return 0


def write_section(path, text):
    """Replace the generated CPU section of `path` (up to the next '# ' or '## ' heading: the
    subsections others add under it, e.g. the transformer's, are kept) by `text`, atomically."""
    from nupes_sim.atomic import write_text

    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    rest = ""
    if old.startswith("# Performance of the CPU backend"):
        ends = [i for i in (old.find("\n# ", 1), old.find("\n## ", 1)) if i >= 0]
        rest = old[min(ends) + 1 :] if ends else ""
    elif old:
        rest = old
    write_text(path, text.rstrip("\n") + "\n\n" + rest if rest else text)


TARGETS = {"operand": 1.0, "product": 3.0}  # x PyTorch float32 (issue 13)


def verdicts(rows, mrow=None):
    """One line per row: the ratio against its target (operand <= 1x, product <= 3x PyTorch
    fp32; >= 100x faster than the oracle), met or missed; then the whole model's."""
    out = []
    for r in rows:
        lim = TARGETS[r["datapath"]]
        ratio, orc = r["cpu"] / r["torch"], r["oracle"] / r["cpu"]
        ok_o = not orc == orc or orc >= 100  # nan (--quick): not measured
        out.append(
            f"- {r['layer']} {r['datapath']} ({r['scales']}, {r.get('luts', 'default')} tables): {ratio:.2f}x "
            f"PyTorch, target <= {lim:g}x: {'met' if ratio <= lim else 'MISSED'}; "
            + (
                f"{orc:.0f}x the oracle, target >= 100x: {'met' if ok_o else 'MISSED'}"
                if orc == orc
                else "oracle not timed"
            )
        )
    if mrow:
        from .model import model_verdicts

        out.append(model_verdicts(mrow))
    return "\n".join(out)


def render_doc(head, md, argv, rows=None, srows=None, mrow=None):
    from .model import model_table

    cmd = "nupes-sim bench --backend cpu -- " + " ".join(argv if argv is not None else sys.argv[1:])
    scal = (
        "Scaling (operand linear, 1024 outputs, default tables; batch at K = 1024, then K at batch 256):\n\n"
        + scaling_table(srows)
        if srows
        else "(scaling table not measured in this run: --scaling)"
    )
    model = (
        "Whole model (`nupes_sim/bench/model.py`: the demo's integer configuration, weights by RTN):\n\n"
        + model_table(mrow)
        if mrow
        else "(whole model not measured in this run: --model)"
    )
    return f"""# Performance of the CPU backend

Measured with

```
{cmd.strip()}
```

{head}.

Layers: (a) Linear 1024x1024, batch 256; (b) Conv2d 3x3, 64->64, input 16x64x32x32, padding 1.
W4 signed power weights (exponent 2, per-channel scales), A8 unsigned power activations
(exponent 2, per tensor), threshold requantization (+ReLU). Tables: `default` = Linear.build's
fractional bits (weights 12, activations 8, products 16; 32-bit wrap accumulator); `demo` = the
exporter's (`reference.export.ExportConfig`: largest weight entry 20 bits, activation 16,
product 24; 48-bit saturating accumulator, which no clamp can reach here); `8-bit` = int8 table
entries (largest magnitude 7 bits), what hardware usually has. Times are medians of the repeats
after a warm-up (JIT compilation excluded). The CPU backend time is a whole
`nupes_sim.cpu.run_layer` call (input checks, decode, MACs, requantization, all three
outputs; the weight-side plan is built at the warm-up and then served by the per-layer plan
cache, `nupes_sim/cpu/plancache.py`, as in any repeated use of a layer). PyTorch: `F.linear`/`F.conv2d` in float32 on the decoded
weights and activations, `torch.set_num_threads({cores()})`. The oracle is timed on a slice
(linear: 1 of the 256 samples; conv: 1 image cropped to 8x8) and scaled by the MAC ratio.
"float path instead" (`--compare-float`): the same call with `CpuOptions(int8=False)`, the
exact float32/float64 chunked GEMMs that were the default before the int8 path (one run).

{md}

Targets (issue 13): operand datapath <= 1.0x PyTorch fp32, product datapath <= 3x, whole model
<= 1.5x and its fake-quant twin <= 2x; all >= 100x faster than the oracle. In this run:

{verdicts(rows, mrow) if rows else "(not evaluated)"}

{scal}

{model}

Caveat: the project machine is shared; when other jobs load its two cores (see the load
average above) every number here, PyTorch's included, slows down several-fold and two-thread
regions suffer most. Compare ratios from one run only.

Where the time goes. The MACs of linear and conv run on the fused path
(`nupes_sim/cpu/fused.py`). Default: the exact int8-limb path (`nupes_sim/cpu/intmm.py`,
claim (I)): the decoded activation values (operand) or the one-hot product columns (product
datapath) and the weight values are split into balanced base-256 int8 limbs, as many as the
layer's used table entries need (8-bit tables: one limb each, one GEMM), each limb pair is a
`torch._int_mm` (oneDNN, VNNI) in k-chunks of at most 2^16 with every int32 partial provably
below 2^31, and one int64 pass adds the limb products with their shifts and the bias and
writes `acc_exact`, `acc` and the threshold codes. The rule (in intmm.py): int8 when the limb
pairs are at most `int8_max_pairs` (9), else the exact float32/float64 chunked GEMMs
(`nupes_sim/cpu/gemm.py`, claim (E)); without torch the float path runs. The product
datapath's one-hot decomposition has 7 columns per k for W4 (one per weight magnitude), so it
costs 7x the operand datapath's GEMM columns times its limbs (3 for products of 2^18-2^24).
Saturating accumulators that can clamp keep the sequential integer kernels (order matters).

Paths: `gemm_int8` = int8-limb path, `gemm_float32`/`gemm_float64` = fused exact float GEMM
path, `chunked` = its k axis was cut into several exact chunks, `product_gemm` = one-hot
decomposition of the product datapath, `gemm_f64`/`gemm_f32`/`gemm_split` = the older unfused
exact GEMM path, `int_sum`/`int_saturate` = integer kernels.
"""


if __name__ == "__main__":
    sys.exit(main())
