"""`nupes-sim demo` (`make demo`): the project's main job, end to end on a real model.

On the shipped Fashion-MNIST ResNet (data/fashion_resnet.pt): quantize with NUPES
(data-driven, W4 per-channel weights, A8 power activations), run the integer model with the
Numba CPU simulator on the test set, write golden vectors for a few test images, verify them
with the NumPy oracle, write the numerical-stability audit, and print a summary table.
`--model charlm|minilm` runs the same job on a shipped transformer (nupes_sim/demo_transformer.py).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _batches(n, size):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="nupes-sim demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  nupes-sim demo\n  nupes-sim demo --n-test 1000 --method powerquant --out out/pq\n"
        "  nupes-sim demo --model charlm --out out/charlm\n  nupes-sim demo --model minilm --out out/minilm",
    )
    p.add_argument(
        "--model",
        default="fashion",
        choices=("fashion", "charlm", "minilm"),
        help="fashion (ResNet, default), charlm (KJV char LM) or minilm (all-MiniLM-L6-v2)",
    )
    p.add_argument("--out", default="out/demo", help="folder for the files written (default out/demo)")
    p.add_argument(
        "--method",
        default=None,
        choices=("rtn", "powerquant", "gptq", "gptq_power", "nupes"),
        help="default: nupes (fashion), powerquant (charlm, minilm: data-free, minutes not hours)",
    )
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--abits", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="NUPES steps per layer")
    p.add_argument("--n-test", type=int, default=10000, help="test images to simulate (default: all 10000)")
    p.add_argument(
        "--golden", type=int, default=None, help="inputs written as golden vectors (4; charlm 2, minilm 1)"
    )
    p.add_argument("--audit", type=int, default=None, help="inputs used by the audit (64; charlm/minilm 4)")
    p.add_argument("--quiet", action="store_true")
    from .demo_transformer import add_arguments

    add_arguments(p)
    args = p.parse_args(argv)
    tx = args.model != "fashion"
    args.method = args.method or ("powerquant" if tx else "nupes")
    # the oracle verifies a MiniLM vector in about 2 minutes on a loaded 2-core machine
    args.golden = (
        args.golden if args.golden is not None else {"fashion": 4, "charlm": 2, "minilm": 1}[args.model]
    )
    args.audit = args.audit if args.audit is not None else (4 if tx else 64)
    if tx:
        from .cpu import use_passive_omp_wait
        from .demo_transformer import run

        use_passive_omp_wait()
        return run(args)

    from .cpu import use_passive_omp_wait

    use_passive_omp_wait()  # this program's choice, before torch or numba start OpenMP (cpu/threads.py)
    import torch
    from tqdm import tqdm

    from .audit import audit
    from .golden import write_golden
    from .reference.data import FASHION_MISSING, fashion_available, fashion_tensors
    from .reference.evaluate import fashion_top1, load_fashion_model
    from .reference.pipeline import quantize_to_graph
    from .serialize import save_model
    from .verify import verify

    def say(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if not fashion_available():
        print(f"demo: {FASHION_MISSING}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    xtr, _ = fashion_tensors("train")
    xte, yte = fashion_tensors("test")
    xte, yte = xte[: args.n_test], yte[: args.n_test].numpy()
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:256]]

    say("[1/6] float model")
    float_acc = 100.0 * fashion_top1(load_fashion_model(), xte, torch.from_numpy(yte))

    say(
        f"[2/6] quantizing with {args.method} (W{args.wbits} per-channel, A{args.abits}, 256 calibration images)"
    )
    t = time.perf_counter()
    ex, report = quantize_to_graph(
        "fashion-resnet",
        calib=calib,
        method=args.method,
        wbits=args.wbits,
        abits=args.abits,
        steps=args.steps,
        progress=not args.quiet,
    )
    t_quant = time.perf_counter() - t

    say("[3/6] float64 fake-quantized twin and integer simulator (Numba CPU) on the test set")
    fq_pred, int_pred, overflow = [], [], 0
    t = time.perf_counter()
    for a, b in tqdm(_batches(len(xte), 500), desc="simulate", disable=args.quiet, file=sys.stderr):
        fq_pred.append(ex.fake_quant(xte[a:b]).numpy().argmax(1))
        r = ex.graph.run(ex.encode_input(xte[a:b].numpy()), backend="cpu")
        int_pred.append((r.output * ex.logit_unit()).argmax(1))
        overflow += sum(r.overflow.values())
    t_sim = time.perf_counter() - t
    fq_pred, int_pred = np.concatenate(fq_pred), np.concatenate(int_pred)

    say("[4/6] saving the integer model")
    model_path = out / "model.h5"
    hist = {
        r["name"]: np.array([r["loss_before"], r["loss_after"]], np.float64)
        for r in report["layers"]
        if r.get("loss_before") is not None
    }
    save_model(ex.graph, str(model_path), input_shape=tuple(xte.shape[1:]), loss_history=hist)

    say(f"[5/6] golden vectors for {args.golden} test images, verified with the NumPy oracle")
    golden_path = out / "golden.h5"
    codes = ex.encode_input(xte[: args.golden].numpy())
    write_golden(
        ex.graph, codes, str(golden_path), backend="cpu", seeds={"demo_images": list(range(args.golden))}
    )
    t = time.perf_counter()
    ver = verify(str(golden_path), backend="numpy")
    t_verify = time.perf_counter() - t

    say(f"[6/6] numerical-stability audit on {args.audit} test images")
    audit_dir = out / "audit"
    audit(str(model_path), ex.encode_input(xte[: args.audit].numpy()), str(audit_dir), backend="cpu")

    rows = [
        ("float accuracy (PyTorch fp32)", f"{float_acc:.2f} %"),
        ("fake-quantized accuracy (float64 twin)", f"{100 * (fq_pred == yte).mean():.2f} %"),
        ("integer-simulator accuracy (Numba CPU)", f"{100 * (int_pred == yte).mean():.2f} %"),
        (
            "top-1 agreement integer vs fake-quant",
            f"{100 * (int_pred == fq_pred).mean():.2f} % of {len(yte)}",
        ),
        ("accumulator overflows", str(overflow)),
        ("golden vectors verified bit for bit", "yes" if ver.ok else "NO"),
        ("quantize / simulate / verify seconds", f"{t_quant:.1f} / {t_sim:.1f} / {t_verify:.1f}"),
        ("model file", str(model_path)),
        ("golden file", str(golden_path)),
        ("audit report", str(audit_dir / "report.md")),
        ("total time", f"{time.perf_counter() - t_start:.1f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"\nnupes-sim demo: Fashion-MNIST ResNet, {args.method} W{args.wbits}A{args.abits}")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    (out / "summary.json").write_text(json.dumps(dict(rows), indent=1))
    return 0 if ver.ok else 1


if __name__ == "__main__":
    sys.exit(main())
