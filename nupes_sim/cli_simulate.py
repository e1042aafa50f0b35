"""`nupes-sim simulate`: run a model file on inputs and write its outputs."""

import json

import numpy as np

from .cli_checks import CliError, output_folder_exists, refuse_overwrite
from .cli_common import (
    add_backend,
    add_float_input,
    add_memory,
    decoded_summary,
    emit_json,
    load_float_inputs,
    load_inputs,
    load_model,
    say,
)
from .float_io import decode_outputs


def cmd_simulate(args):
    from .atomic import save_npy
    from .memory import check_fits, run_bytes

    out = args.out
    if not out.endswith((".npy", ".h5", ".hdf5")):
        raise CliError("--out must end in .npy or .h5")
    if out.endswith(".npy") and args.intermediates:
        raise CliError("--intermediates needs an .h5 output")
    ins = [("model file", args.model), ("input file", args.input), ("float input file", args.float_input)]
    refuse_overwrite(out, ins)
    output_folder_exists(out)
    if args.real_out:
        if not args.real_out.endswith(".npy"):
            raise CliError(f"--real-out {args.real_out}: must end in .npy")
        refuse_overwrite(args.real_out, ins + [("--out", out)], "--real-out")
        output_folder_exists(args.real_out, "--real-out")
    if (args.input is None) == (args.float_input is None):
        raise CliError("give exactly one of --input FILE (codes) or --float-input FILE (real values)")
    m = load_model(args.model)
    if args.float_input:
        x = load_float_inputs(m, args.float_input, args.dataset, args.model)
    else:
        x = load_inputs(args.input, args.dataset)
    if args.real_out and m.output_unit is None:
        raise CliError(f"--real-out: {args.model} stores no output unit (model format version {m.version})")
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
            if m.output_unit is not None:  # real values of the outputs (float64, host decoding)
                f.create_dataset(
                    "output_real", data=decode_outputs(m.output_unit, r.output), track_times=False
                )
    if args.real_out:
        save_npy(args.real_out, decode_outputs(m.output_unit, r.output))
    lines, decoded = decoded_summary(m, np.asarray(r.output))
    say(args, f"wrote {out}: output shape {tuple(np.shape(r.output))}; overflow counts {r.overflow}")
    for line in lines:
        say(args, line)
    res = {"out": out, "shape": list(np.shape(r.output)), "overflow": r.overflow}
    if decoded is not None:
        res["decoded"] = decoded
    emit_json(args, res)
    return 0


def register(add):
    sp = add(
        "simulate",
        "run a saved model on input codes and write its outputs",
        cmd_simulate,
        "nupes-sim simulate model.h5 --input x.npy --out y.npy\n"
        "  nupes-sim simulate model.h5 --float-input images.npy --out y.npy --real-out logits.npy\n"
        "  nupes-sim simulate model.h5 --input x.h5 --out run.h5 --intermediates --backend cpu",
    )
    sp.add_argument("model", help="quantized model file (.h5, see save_model)")
    sp.add_argument("--input", help="input codes (.npy or .h5)")
    add_float_input(sp)
    sp.add_argument("--dataset", help="dataset name inside an .h5 input")
    sp.add_argument(
        "--out",
        required=True,
        help="output file: .npy (final output codes) or .h5 (+ output_real when the model stores its output unit)",
    )
    sp.add_argument(
        "--real-out", metavar="FILE.npy", help="also write the decoded real outputs (float64) here"
    )
    sp.add_argument("--intermediates", action="store_true", help="also store every stage (needs .h5)")
    add_memory(sp)
    add_backend(sp)
