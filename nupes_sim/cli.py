"""`nupes-sim` command line: demo, quantize, simulate, golden, hex, verify, diff, audit, bench, eval.

Exit codes: 0 ok, 1 mismatch or failed check, 2 usage error or bad input (one line on
stderr, no traceback).
"""

import argparse
import importlib
import json
import os
import sys

import numpy as np

from .cli_checks import (
    CliError,
    OneLineParser,
    existing_file,
    float_in,
    int_in,
    load_array,
    memory_arg,
    output_folder_exists,
    refuse_overwrite,
    shape_arg,
)

BACKENDS = ("numpy", "cpu", "cuda")
SEED = int_in(0, 2**63 - 1, "seed")


def _progress(args):
    if args.quiet or args.json:
        return None
    from tqdm import tqdm

    return lambda it, total=None: tqdm(it, total=total, unit="vec", file=sys.stderr, leave=False)


def _say(args, text):
    if not args.quiet and not args.json:
        print(text)


def _emit_json(args, obj):
    if args.json:
        print(json.dumps(obj, indent=1, default=str))


def _lazy(module, attr, what):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise CliError(f"{what} needs {module}, which is not available in this install ({e})") from None
        raise
    if not hasattr(mod, attr):
        raise CliError(f"{what} needs {module}.{attr}, which this version of {module} does not provide")
    return getattr(mod, attr)


def _load_inputs(path, dataset=None):
    """Integer input codes (N, ...) from .npy/.h5: kind, dtype and size checked from the
    header before reading; values must fit int64."""
    from .memory import budget

    x = load_array(path, dataset, "input", "iu", budget())
    if x.dtype == np.uint64 and x.size and int(x.max()) > 2**63 - 1:
        raise CliError(f"input {path}: code {int(x.max())} does not fit int64")
    return x.astype(np.int64)


def _load_model(path):
    from .serialize import load_model

    existing_file(path, "model file")
    return load_model(path, full=True)


def _input_shape(args, m):
    if getattr(args, "shape", None):
        return tuple(args.shape)
    if m.input_shape is not None:
        return tuple(m.input_shape)
    first = m.graph.nodes[0].layer
    if hasattr(first, "k") and type(first).__name__ == "Linear":
        return (first.k,)
    raise CliError("the model file does not record its input shape; give --shape C,H,W")


def _check_vectors_fit(m, shape, n, per_vector_only=False):
    """Refuse (one line, before allocating) inputs/runs that cannot fit the memory budget."""
    from .memory import check_fits, elements, run_bytes

    inputs = 0 if per_vector_only else 8 * n * elements(shape)
    check_fits(f"{n} input vectors of shape {tuple(shape)}", inputs)
    try:
        vb = run_bytes(m.graph, shape)
    except ValueError as e:
        raise CliError(f"input shape {tuple(shape)} does not fit the model: {e}") from None
    check_fits(f"{n} input vectors of shape {tuple(shape)}", inputs + vb)


def _inputs_for(args, m):
    from .golden import random_inputs

    if args.input and args.random is not None:
        raise CliError("give either --input FILE or --random N, not both")
    if args.input:
        x = _load_inputs(args.input, getattr(args, "dataset", None))
        _check_vectors_fit(m, x.shape[1:], len(x), per_vector_only=True)
        return x, {"input_file": os.path.basename(args.input)}
    if args.random is None:
        raise CliError(
            "give --input FILE or --random N" + (" (or --stress)" if hasattr(args, "stress") else "")
        )
    shape = _input_shape(args, m)
    _check_vectors_fit(m, shape, args.random)
    return random_inputs(m.graph, args.random, args.seed, shape), {
        "input_seed": args.seed,
        "n_random": args.random,
    }


# ---- verbs ----------------------------------------------------------------------------


def cmd_simulate(args):
    from .atomic import save_npy
    from .memory import check_fits, run_bytes

    out = args.out
    if not out.endswith((".npy", ".h5", ".hdf5")):
        raise CliError("--out must end in .npy or .h5")
    if out.endswith(".npy") and args.intermediates:
        raise CliError("--intermediates needs an .h5 output")
    refuse_overwrite(out, [("model file", args.model), ("input file", args.input)])
    output_folder_exists(out)
    m = _load_model(args.model)
    x = _load_inputs(args.input, args.dataset)
    try:
        need = run_bytes(m.graph, x.shape[1:], len(x))
    except ValueError as e:
        raise CliError(f"input shape {x.shape[1:]} does not fit the model: {e}") from None
    check_fits(f"simulating {len(x)} vectors of shape {x.shape[1:]}", need)
    r = m.graph.run(x, backend=args.backend, intermediates=args.intermediates)
    if out.endswith(".npy"):
        save_npy(out, np.asarray(r.output))
    else:
        from .serialize import atomic_h5

        with atomic_h5(out) as f:
            f.create_dataset("output", data=np.asarray(r.output), track_times=False)
            for name, st in r.stages.items():
                g = f.create_group(f"stages/{name.replace('/', '_')}")
                for s, a in st.items():
                    g.create_dataset(s, data=np.asarray(a), track_times=False)
            f.attrs["overflow"] = json.dumps(r.overflow)
    _say(args, f"wrote {out}: output shape {tuple(np.shape(r.output))}; overflow counts {r.overflow}")
    _emit_json(args, {"out": out, "shape": list(np.shape(r.output)), "overflow": r.overflow})
    return 0


def cmd_golden(args):
    from .golden import export_hex, write_golden

    ins = [("model file", args.model), ("input file", args.input)]
    refuse_overwrite(args.out, ins)
    output_folder_exists(args.out)
    if args.hex:
        refuse_overwrite(args.hex, ins + [("golden output", args.out)], "--hex")
        output_folder_exists(args.hex, "--hex")
    m = _load_model(args.model)
    if args.stress:
        from .stress import stress_inputs

        rnd = args.input or args.random is not None
        x, seeds = _inputs_for(args, m) if rnd else (None, {})
        shape = x.shape[1:] if x is not None else _input_shape(args, m)
        xs = stress_inputs(m.graph, shape, seed=args.seed, max_vectors=args.stress_max)
        x = xs if x is None else np.concatenate([xs, x])
        seeds = dict(seeds, stress_seed=args.seed, n_stress=len(xs))
    else:
        x, seeds = _inputs_for(args, m)
    n = write_golden(
        m.graph,
        x,
        args.out,
        backend=args.backend,
        seeds=seeds,
        compression=None if args.no_compress else "gzip",
        progress=_progress(args),
    )
    res = {"out": args.out, "vectors": n, "model_hash": m.model_hash}
    from .golden import read_golden
    from .stress import coverage, coverage_lines

    cov = coverage(read_golden(args.out))
    res["coverage"] = cov
    for line in coverage_lines(cov):
        _say(args, line)
    if args.hex:
        man = export_hex(args.out, args.hex, layers=args.hex_layers.split(",") if args.hex_layers else None)
        res["hex"] = {"dir": args.hex, "tensors": len(man["tensors"])}
    _say(
        args,
        f"wrote {n} golden vectors to {args.out}" + (f" and hex files to {args.hex}" if args.hex else ""),
    )
    _emit_json(args, res)
    return 0


def cmd_hex(args):
    from .golden import export_hex

    man = export_hex(
        args.golden,
        args.out,
        layers=args.layers.split(",") if args.layers else None,
        vectors=_int_list(args.vectors, "--vectors") if args.vectors else None,
    )
    _say(
        args,
        f"wrote {len(man['tensors'])} hex files, {len(man['layers'])} layer headers and manifest.json "
        f"to {args.out} (model {man['model_hash']})",
    )
    _emit_json(
        args,
        {
            "out": args.out,
            "tensors": len(man["tensors"]),
            "layers": list(man["layers"]),
            "vectors": man["vectors_exported"],
            "model_hash": man["model_hash"],
        },
    )
    return 0


def _report(args, rep):
    _emit_json(args, rep.to_dict())
    if not args.json and not (args.quiet and rep.ok):
        print(rep.format_text())
    return 0 if rep.ok else 1


def _expected_model_hash(args):
    """The model hash `--model FILE` or `--model-hash HEX` asks for (None when neither)."""
    if getattr(args, "model", None) and getattr(args, "model_hash", None):
        raise CliError("give --model or --model-hash, not both")
    if getattr(args, "model", None):
        return _load_model(args.model).model_hash
    if getattr(args, "model_hash", None):
        from .verify import model_hash_arg

        return model_hash_arg(args.model_hash)
    return None


def _int_list(text, what):
    """[0, 1, 2, 5] from '0-2,5'."""
    out = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise CliError(f"{what} {text!r}: expected indices like 0-3,7") from None
    return out


def cmd_verify(args):
    from .verify import verify

    existing_file(args.golden, "golden file")
    return _report(
        args,
        verify(
            args.golden,
            backend=args.backend,
            progress=_progress(args),
            expect_model_hash=_expected_model_hash(args),
        ),
    )


def cmd_diff(args):
    from .verify import DUMP_STAGES, diff

    if not os.path.exists(args.observed):
        raise CliError(f"{args.observed} does not exist")
    return _report(
        args,
        diff(
            args.expected,
            args.observed,
            layers=args.layers.split(",") if args.layers else None,
            vectors=_int_list(args.vectors, "--vectors") if args.vectors else None,
            stages=tuple(args.stages.split(",")) if args.stages else DUMP_STAGES,
            partial=args.partial,
            allow_other_model=args.allow_other_model,
            expect_model_hash=_expected_model_hash(args),
        ),
    )


def cmd_audit(args):
    from .audit import audit

    refuse_overwrite(args.out, [("model file", args.model), ("input file", args.input)])
    output_folder_exists(args.out)
    m = _load_model(args.model)
    x, _ = _inputs_for(args, m)
    rep = audit(
        m,
        x,
        args.out,
        fail_on=tuple(args.fail_on or ()),
        backend=args.backend,
        clip_tolerance=args.clip_tolerance,
    )
    _emit_json(args, {"out": args.out, "failed": rep["failed"], "layers": rep["layers"]})
    if not args.json and not args.quiet:
        print(f"wrote {args.out}/report.md, report.json and {len(rep['plots'])} plots")
    if rep["failed"]:
        if not args.json:
            print(f"audit failed: {', '.join(rep['failed'])}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args):
    rest = list(args.rest)
    if args.backend == "cpu":
        return int(_lazy("nupes_sim.bench.cpu", "main", "bench --backend cpu")(rest) or 0)
    return int(_lazy("nupes_sim.cuda.bench", "main", "bench --backend cuda")(rest) or 0)


def cmd_demo(args):
    return int(_lazy("nupes_sim.demo", "main", "demo")(list(args.rest)) or 0)


def cmd_eval(args):
    return int(_lazy("nupes_sim.reference.results", "main", "eval")(list(args.rest)) or 0)


def cmd_quantize(args):
    """Quantize a user's model (state dict + --arch, a torch.export .pt2, or the shipped
    'fashion-resnet') and save the exported integer graph (nupes_sim.reference.pipeline)."""
    pipeline = _lazy("nupes_sim.reference.pipeline", "quantize_to_graph", "quantize")
    from nupes_sim.reference.pipeline import load_calibration

    from .serialize import save_model

    if not args.calib:
        raise CliError(
            "--calib is required: activation formats are calibrated on a few inputs "
            "(with --data-free the weights still ignore them)"
        )
    refuse_overwrite(
        args.out,
        [("model", args.model if os.path.exists(args.model) else None), ("calibration file", args.calib)],
    )
    output_folder_exists(args.out)
    existing_file(args.calib, "calibration file")
    calib = load_calibration(args.calib, args.dataset)
    ex, report = pipeline(
        args.model,
        arch=args.arch,
        calib=None if args.data_free else calib,
        export_calib=calib,
        method=args.method,
        wbits=args.wbits,
        abits=args.abits,
        granularity=args.granularity,
        group_size=args.group_size,
        steps=args.steps,
        datapath=args.datapath,
        acc_width=args.acc_width,
        overflow=args.overflow,
        seed=args.seed,
        progress=not args.quiet,
    )
    hist = {
        r["name"]: np.array([r["loss_before"], r["loss_after"]], np.float64)
        for r in report["layers"]
        if r.get("loss_before") is not None
    }
    save_model(ex.graph, args.out, input_shape=tuple(calib.shape[1:]), loss_history=hist)
    _say(
        args,
        f"wrote quantized model {args.out} ({len(ex.graph.nodes)} layers; input format: "
        f"{ex.input_format.bits}-bit power, a={ex.input_format.exponent:.3f}, s={float(ex.input_format.scale[0]):.6g})",
    )
    _emit_json(
        args,
        {
            "out": args.out,
            "layers": report["layers"],
            "input_format": {
                "bits": ex.input_format.bits,
                "signed": ex.input_format.signed,
                "exponent": ex.input_format.exponent,
                "scale": float(ex.input_format.scale[0]),
            },
        },
    )
    return 0


# ---- parser ------------------------------------------------------------------------------

EXAMPLES = {
    "demo": "nupes-sim demo                      # the project's main job (nupes_sim.demo)",
    "quantize": "nupes-sim quantize fashion-resnet --calib calib.npy --method nupes --wbits 4 --abits 8 --out model.h5\n  nupes-sim quantize my_weights.pt --arch fashion-resnet --calib calib.h5 --data-free --method powerquant --out model.h5",
    "simulate": "nupes-sim simulate model.h5 --input x.npy --out y.npy\n"
    "  nupes-sim simulate model.h5 --input x.h5 --out run.h5 --intermediates --backend cpu",
    "golden": "nupes-sim golden model.h5 --random 16 --seed 3 --out golden.h5 --hex golden_hex/\n"
    "  nupes-sim golden model.h5 --input codes.npy --out golden.h5\n"
    "  nupes-sim golden model.h5 --stress --random 16 --out stress.h5 --hex stress_hex/",
    "verify": "nupes-sim verify golden.h5 --backend cpu --model model.h5",
    "diff": "nupes-sim diff golden.h5 hw_dump.h5\n  nupes-sim diff golden.h5 hw_hex_dir/ --json --model-hash 3fa9c2...\n"
    "  nupes-sim diff golden.h5 rtl_dump/ --layers fc --stages out --vectors 0-3",
    "hex": "nupes-sim hex golden.h5 --out golden_hex/\n  nupes-sim hex golden.h5 --out fc_hex/ --layers fc --vectors 0-3",
    "audit": "nupes-sim audit model.h5 --random 64 --out audit/ --fail-on overflow --fail-on clipping",
    "bench": "nupes-sim bench --backend cpu -- --help",
    "eval": "nupes-sim eval -- --help        # nupes_sim.reference.results",
}


def build_parser():
    common = OneLineParser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
    common.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p = OneLineParser(
        prog="nupes-sim",
        description="Bit-exact integer simulator of power-quantized "
        "networks: golden vectors, verification, numerical audit.",
        epilog="exit codes: 0 ok, 1 mismatch/failed check, 2 usage or bad input",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    sub.required = True

    def add(name, help_, fn):
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[common],
            epilog="example:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(fn=fn)
        return sp

    def inputs(sp):
        sp.add_argument(
            "--input", help="integer input codes (.npy, or .h5 with --dataset), first axis = vectors"
        )
        sp.add_argument(
            "--dataset", help="dataset name inside an .h5 input (default 'input' or the only one)"
        )
        sp.add_argument(
            "--random",
            type=int_in(1, None, "N"),
            metavar="N",
            help="draw N random valid input vectors instead (N >= 1)",
        )
        sp.add_argument("--seed", type=SEED, default=0, help="seed for --random (default 0; 0 to 2^63-1)")
        sp.add_argument(
            "--shape",
            type=shape_arg,
            help="per-vector input shape for --random, e.g. 3,32,32 (default: from the model)",
        )
        memory(sp)

    def memory(sp):
        sp.add_argument(
            "--max-memory",
            type=memory_arg,
            default=None,
            metavar="SIZE",
            help="memory budget, e.g. 4G (default: half of the machine's memory); work that cannot "
            "fit is refused before it starts, large layers are computed in chunks within it",
        )

    def model_pin(sp):
        sp.add_argument("--model", help="fail unless the golden file was made from this model file (.h5)")
        sp.add_argument(
            "--model-hash",
            metavar="HEX",
            help="fail unless the golden file's model_hash is this SHA-256 (at least 12 leading hex digits)",
        )

    def backend(sp, default="numpy"):
        sp.add_argument(
            "--backend", choices=BACKENDS, default=default, help=f"simulator backend (default {default})"
        )

    sp = add("demo", "run the project's demo (nupes_sim.demo.main)", cmd_demo)
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the demo")
    sp = add(
        "quantize", "quantize a model and save its integer graph (nupes_sim.reference.pipeline)", cmd_quantize
    )
    sp.add_argument(
        "model", help="state dict (.pt, with --arch), torch.export program (.pt2), or 'fashion-resnet'"
    )
    sp.add_argument("--arch", help="built-in architecture of a state dict: fashion-resnet")
    sp.add_argument("--calib", help="float calibration inputs (.npy or .h5), batch first")
    sp.add_argument("--dataset", help="dataset name inside an .h5 calibration file")
    sp.add_argument(
        "--data-free",
        action="store_true",
        help="quantize weights data-free (calib only sets activation formats)",
    )
    sp.add_argument("--method", default="nupes", choices=("rtn", "powerquant", "gptq", "gptq_power", "nupes"))
    sp.add_argument("--wbits", type=int_in(2, 8, "bits"), default=4, help="weight bits, 2 to 8 (default 4)")
    sp.add_argument(
        "--abits", type=int_in(2, 8, "bits"), default=8, help="activation bits, 2 to 8 (default 8)"
    )
    sp.add_argument("--granularity", default="channel", choices=("tensor", "channel", "group"))
    sp.add_argument(
        "--group-size",
        type=int_in(1, None, "size"),
        default=None,
        help="input elements per weight scale with --granularity group",
    )
    sp.add_argument("--steps", type=int_in(0, 10**6, "steps"), default=None, help="NUPES steps per layer")
    sp.add_argument("--datapath", default="operand", choices=("operand", "product"))
    sp.add_argument("--acc-width", type=int_in(8, 64, "bits"), default=48, help="accumulator bits, 8 to 64")
    sp.add_argument("--overflow", default="saturate", choices=("wrap", "saturate", "exact"))
    sp.add_argument("--seed", type=SEED, default=0)
    sp.add_argument("--out", required=True, help="model file to write (.h5)")
    sp = add("simulate", "run a saved model on input codes and write its outputs", cmd_simulate)
    sp.add_argument("model", help="quantized model file (.h5, see save_model)")
    sp.add_argument("--input", required=True, help="input codes (.npy or .h5)")
    sp.add_argument("--dataset", help="dataset name inside an .h5 input")
    sp.add_argument("--out", required=True, help="output file: .npy (final output) or .h5")
    sp.add_argument("--intermediates", action="store_true", help="also store every stage (needs .h5)")
    memory(sp)
    backend(sp)
    sp = add("golden", "write golden vectors (HDF5, docs/GOLDEN.md) for a model", cmd_golden)
    sp.add_argument("model", help="quantized model file (.h5)")
    inputs(sp)
    sp.add_argument("--out", required=True, help="golden file to write (.h5)")
    sp.add_argument("--hex", metavar="DIR", help="also export $readmemh hex files + manifest.json into DIR")
    sp.add_argument("--hex-layers", metavar="A,B", help="with --hex: export only these layers' tensors")
    sp.add_argument(
        "--stress",
        action="store_true",
        help="corner-case inputs: saturation/wrap patterns and accumulators on and next to every "
        "threshold of layers reading the input (nupes_sim.stress); --random N adds random ones",
    )
    sp.add_argument(
        "--stress-max",
        type=int_in(1, 10**6, "N"),
        default=1024,
        metavar="N",
        help="at most N stress vectors (default 1024)",
    )
    sp.add_argument("--no-compress", action="store_true", help="no gzip compression of datasets")
    backend(sp)
    sp = add("verify", "recompute a golden file's intermediates and compare bit for bit", cmd_verify)
    sp.add_argument("golden", help="golden file (.h5)")
    memory(sp)
    backend(sp)
    model_pin(sp)
    sp = add(
        "diff", "strictly compare a golden file with a hardware dump; report the first divergence", cmd_diff
    )
    sp.add_argument("expected", help="golden file (.h5)")
    sp.add_argument(
        "observed",
        help="dump: .h5 in the golden schema, or a folder of hex files "
        "(named as the golden ones, manifest.json optional; docs/GOLDEN.md 'Dumps')",
    )
    sp.add_argument("--layers", help="compare only these layers (comma-separated names), for a partial dump")
    sp.add_argument("--vectors", help="compare only these vectors, e.g. 0-3,7, for a partial dump")
    sp.add_argument(
        "--stages",
        help="stages the dump must hold (comma-separated of input,acc_exact,acc,out; "
        "default input,acc,out; acc_exact is compared whenever present)",
    )
    sp.add_argument(
        "--partial",
        action="store_true",
        help="allow golden tensors absent from the dump (listed; at least one must be compared)",
    )
    sp.add_argument(
        "--allow-other-model",
        action="store_true",
        help="compare a dump that names another model hash instead of failing",
    )
    model_pin(sp)
    sp = add(
        "hex",
        "export a golden file as $readmemh hex files, manifest.json and per-layer Verilog headers",
        cmd_hex,
    )
    sp.add_argument("golden", help="golden file (.h5)")
    sp.add_argument("--out", required=True, help="new (or empty) folder to write")
    sp.add_argument("--layers", help="only these layers (comma-separated names)")
    sp.add_argument("--vectors", help="only these vectors, e.g. 0-3,7")
    sp = add(
        "audit", "numerical-stability audit: ranges, headroom, overflow, clipping, float64 error", cmd_audit
    )
    sp.add_argument("model", help="quantized model file (.h5)")
    inputs(sp)
    sp.add_argument("--out", required=True, help="folder for report.md, report.json and plots")
    sp.add_argument(
        "--fail-on",
        action="append",
        choices=("overflow", "saturation", "clipping"),
        help="exit 1 if this happens (repeatable)",
    )
    sp.add_argument(
        "--clip-tolerance",
        type=float_in(0.0, 1.0, "fraction"),
        default=0.0,
        help="fraction of clipped codes tolerated by --fail-on clipping (default 0)",
    )
    backend(sp)
    sp = add("bench", "benchmarks (nupes_sim.bench.cpu or nupes_sim.cuda.bench)", cmd_bench)
    sp.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    sp = add("eval", "evaluation tables of the reference (nupes_sim.reference.results.main)", cmd_eval)
    sp.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed on")
    return p


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] in ("demo", "eval") and argv[1] != "--":
        argv.insert(1, "--")  # everything after these verbs belongs to their own parser
    args = parser.parse_args(argv)
    from .memory import set_budget

    set_budget(getattr(args, "max_memory", None))
    if hasattr(args, "rest") and args.rest[:1] == ["--"]:
        args.rest = args.rest[1:]
    if os.environ.get("NUPES_OMP_PASSIVE", "0").strip() not in ("", "0"):  # opt-in, nupes_sim.cpu.threads
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .extras import Unavailable, missing_extra
    from .golden import GoldenFormatError
    from .serialize import ModelFormatError

    try:
        return args.fn(args)
    except (CliError, GoldenFormatError, ModelFormatError, Unavailable, ValueError, TypeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"nupes-sim {args.verb}: error: {msg}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional extra (torch, matplotlib, ...) is missing
        err = missing_extra(e, args.verb)
        if err is None:
            raise
        print(f"nupes-sim {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"nupes-sim {args.verb}: error: out of memory (lower --max-memory or use fewer/smaller vectors)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("nupes-sim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
