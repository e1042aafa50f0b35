"""`nupes-sim demo --model charlm|minilm`: the demo's job on a shipped transformer.

Quantize the KJV char LM or all-MiniLM-L6-v2 (PowerQuant data-free W4 per channel by default,
A8 power activations, 8-bit uniform attention scores), run the integer model with the Numba
CPU simulator on held-out inputs (char LM: perplexity; MiniLM: sentence-embedding cosine and
nearest-neighbour agreement) next to the float model and the float64 fake-quant twin, write
golden vectors for a few inputs, verify them with the NumPy oracle, write the
numerical-stability audit, and print a summary table. Sizes are small (T = 32 characters /
24 tokens, a few dozen sequences) so it runs in a few minutes on 2 cores.
"""

import json
import sys
import time
from pathlib import Path

DEFAULTS = {"charlm": dict(seq_len=32, n_eval=16), "minilm": dict(seq_len=24, n_eval=32)}


def add_arguments(p):
    p.add_argument("--seq-len", type=int, default=None, help="tokens per input (charlm 32, minilm 24)")
    p.add_argument("--n-calib", type=int, default=8, help="calibration sequences (default 8)")
    p.add_argument(
        "--n-eval", type=int, default=None, help="held-out sequences simulated (charlm 16, minilm 32)"
    )


def run(args):
    """The demo on args.model ('charlm' or 'minilm'); returns the exit status."""
    import torch

    from .audit import audit
    from .golden import write_golden
    from .reference.data import KJV_MISSING, kjv_available
    from .reference.evaluate import embedding_agreement
    from .reference.transformer_pipeline import builtin_inputs, pad_id, quantize_builtin
    from .serialize import save_model
    from .verify import verify

    def say(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    if not kjv_available():
        print(f"demo: {KJV_MISSING}", file=sys.stderr)
        return 2
    name = args.model
    T = args.seq_len or DEFAULTS[name]["seq_len"]
    n_eval = args.n_eval or DEFAULTS[name]["n_eval"]
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    say(
        f"[1/6] quantizing {name} with {args.method} (W{args.wbits} per-channel, A{args.abits}; {args.n_calib} x {T} calibration tokens)"
    )
    t = time.perf_counter()
    model, ex, _, tok = quantize_builtin(
        name,
        method=args.method,
        wbits=args.wbits,
        steps=args.steps,
        seq_len=T,
        n_calib=args.n_calib,
        act_bits=args.abits,
        progress=not args.quiet,
    )
    t_quant = time.perf_counter() - t

    say(f"[2/6] float model, float64 twin and integer simulator (Numba CPU) on {n_eval} held-out inputs")
    t = time.perf_counter()
    if name == "charlm":
        win = builtin_inputs(name, n_eval, T + 1, "eval", model)
        x, y = win[:, :T], win[:, 1:].reshape(-1)
        with torch.no_grad():
            logits = {
                "float (PyTorch fp32)": model(x).double().reshape(-1, len(model.vocab)),
                "fake-quant twin (float64)": ex.fake_quant(x).reshape(-1, len(model.vocab)),
                "integer simulator (Numba CPU)": torch.from_numpy(ex.integer(x.numpy(), backend="cpu")),
            }
        quality = {k: float(torch.exp(torch.nn.functional.cross_entropy(v, y))) for k, v in logits.items()}
        metric = f"perplexity on {y.numel()} held-out characters"
        rows_q = [(f"{k} {metric}", f"{v:.4f}") for k, v in quality.items()]
        inputs = x.numpy()
    else:
        x = builtin_inputs(name, n_eval, T, "eval", model, tok)
        m = (x != pad_id(tok)).double()[..., None]
        with torch.no_grad():
            hs = {
                "float": model(x, m[..., 0].long()).double(),
                "twin": ex.fake_quant(x).reshape(len(x), T, -1),
                "integer": torch.from_numpy(ex.integer(x.numpy(), backend="cpu")).reshape(len(x), T, -1),
            }
        emb = {k: (h * m).sum(1) / m.sum(1) for k, h in hs.items()}
        rows_q = []
        for a, b in (("integer", "float"), ("integer", "twin"), ("twin", "float")):
            d = embedding_agreement(emb[b], emb[a])
            rows_q.append((f"sentence-embedding cosine {a} vs {b} ({n_eval} verses)", f"{d['mean_cos']:.4f}"))
            rows_q.append((f"nearest-neighbour agreement {a} vs {b}", f"{100 * d['nn_agreement']:.1f} %"))
        inputs = x.numpy()
    t_sim = time.perf_counter() - t

    say("[3/6] saving the integer model")
    model_path = out / "model.h5"
    save_model(ex.graph, str(model_path), input_shape=(T,))

    say(f"[4/6] golden vectors for {args.golden} held-out inputs")
    golden_path = out / "golden.h5"
    write_golden(
        ex.graph, inputs[: args.golden], str(golden_path), backend="cpu", seeds={"demo_inputs": name}
    )
    say("[5/6] verifying them bit for bit with the NumPy oracle")
    t = time.perf_counter()
    ver = verify(str(golden_path), backend="numpy")
    t_verify = time.perf_counter() - t

    say(f"[6/6] numerical-stability audit on {args.audit} held-out inputs")
    audit_dir = out / "audit"
    rep = audit(str(model_path), inputs[: args.audit], str(audit_dir), backend="cpu")
    overflows = sum(r.get("overflow_count", 0) for r in rep["layers"])

    rows = rows_q + [
        ("accumulator overflows (audit inputs)", str(overflows)),
        ("golden vectors verified bit for bit", f"yes ({ver.compared} values)" if ver.ok else "NO"),
        ("quantize+export / simulate / verify seconds", f"{t_quant:.1f} / {t_sim:.1f} / {t_verify:.1f}"),
        ("model file", str(model_path)),
        ("golden file", str(golden_path)),
        ("audit report", str(audit_dir / "report.md")),
        ("total time", f"{time.perf_counter() - t_start:.1f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    print(f"\nnupes-sim demo: {name}, {args.method} W{args.wbits}A{args.abits}, {T} tokens per input")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    (out / "summary.json").write_text(json.dumps(dict(rows), indent=1))
    return 0 if ver.ok else 1


__all__ = ["run", "add_arguments", "DEFAULTS"]
