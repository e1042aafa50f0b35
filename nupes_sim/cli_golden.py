"""`nupes-sim golden` (write golden vectors) and `nupes-sim hex` (export a golden file as hex)."""

import numpy as np

from .cli_checks import int_in, output_folder_exists, refuse_overwrite
from .cli_common import (
    add_backend,
    add_inputs,
    decoded_summary,
    emit_json,
    input_shape,
    inputs_for,
    int_list,
    load_model,
    progress,
    say,
)


def cmd_golden(args):
    from .golden import export_hex, write_golden

    ins = [("model file", args.model), ("input file", args.input), ("float input file", args.float_input)]
    refuse_overwrite(args.out, ins)
    output_folder_exists(args.out)
    if args.hex:
        refuse_overwrite(args.hex, ins + [("golden output", args.out)], "--hex")
        output_folder_exists(args.hex, "--hex")
    m = load_model(args.model)
    if args.stress:
        from .stress import stress_inputs

        rnd = args.input or args.float_input or args.random is not None
        x, seeds = inputs_for(args, m) if rnd else (None, {})
        shape = x.shape[1:] if x is not None else input_shape(args, m)
        xs = stress_inputs(m.graph, shape, seed=args.seed, max_vectors=args.stress_max)
        x = xs if x is None else np.concatenate([xs, x])
        seeds = dict(seeds, stress_seed=args.seed, n_stress=len(xs))
    else:
        x, seeds = inputs_for(args, m)
    n = write_golden(
        m.graph,
        x,
        args.out,
        backend=args.backend,
        seeds=seeds,
        compression=None if args.no_compress else "gzip",
        progress=progress(args),
    )
    res = {"out": args.out, "vectors": n, "model_hash": m.model_hash}
    from .golden import read_golden
    from .stress import coverage, coverage_lines

    gold = read_golden(args.out)
    cov = coverage(gold)
    res["coverage"] = cov
    for line in coverage_lines(cov):
        say(args, line)
    last = m.graph.nodes[-1].name
    lines, decoded = decoded_summary(m, np.concatenate([v["stages"][last]["out"] for v in gold.vectors]))
    for line in lines:
        say(args, line)
    if decoded is not None:
        res["decoded"] = decoded
    if args.hex:
        man = export_hex(args.out, args.hex, layers=args.hex_layers.split(",") if args.hex_layers else None)
        res["hex"] = {"dir": args.hex, "tensors": len(man["tensors"])}
    say(
        args,
        f"wrote {n} golden vectors to {args.out}" + (f" and hex files to {args.hex}" if args.hex else ""),
    )
    emit_json(args, res)
    return 0


def cmd_hex(args):
    from .golden import export_hex

    man = export_hex(
        args.golden,
        args.out,
        layers=args.layers.split(",") if args.layers else None,
        vectors=int_list(args.vectors, "--vectors") if args.vectors else None,
    )
    say(
        args,
        f"wrote {len(man['tensors'])} hex files, {len(man['layers'])} layer headers and manifest.json "
        f"to {args.out} (model {man['model_hash']})",
    )
    emit_json(
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


def register(add):
    sp = add(
        "golden",
        "write golden vectors (HDF5, docs/GOLDEN.md) for a model",
        cmd_golden,
        "nupes-sim golden model.h5 --random 16 --seed 3 --out golden.h5 --hex golden_hex/\n"
        "  nupes-sim golden model.h5 --input codes.npy --out golden.h5\n"
        "  nupes-sim golden model.h5 --float-input images.npy --out golden.h5 --hex golden_hex/\n"
        "  nupes-sim golden model.h5 --stress --random 16 --out stress.h5 --hex stress_hex/",
    )
    sp.add_argument("model", help="quantized model file (.h5)")
    add_inputs(sp)
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
    add_backend(sp)


def register_hex(add):
    sp = add(
        "hex",
        "export a golden file as $readmemh hex files, manifest.json and per-layer Verilog headers",
        cmd_hex,
        "nupes-sim hex golden.h5 --out golden_hex/\n"
        "  nupes-sim hex golden.h5 --out fc_hex/ --layers fc --vectors 0-3",
    )
    sp.add_argument("golden", help="golden file (.h5)")
    sp.add_argument("--out", required=True, help="new (or empty) folder to write")
    sp.add_argument("--layers", help="only these layers (comma-separated names)")
    sp.add_argument("--vectors", help="only these vectors, e.g. 0-3,7")
