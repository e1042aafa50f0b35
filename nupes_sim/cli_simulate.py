"""`nupes-sim simulate`: run a model file on inputs and write its outputs."""

import json

import numpy as np

from .cli_checks import CliError, output_folder_exists, refuse_overwrite
from .cli_common import add_backend, add_memory, emit_json, load_inputs, load_model, say


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
    m = load_model(args.model)
    x = load_inputs(args.input, args.dataset)
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
    say(args, f"wrote {out}: output shape {tuple(np.shape(r.output))}; overflow counts {r.overflow}")
    emit_json(args, {"out": out, "shape": list(np.shape(r.output)), "overflow": r.overflow})
    return 0


def register(add):
    sp = add(
        "simulate",
        "run a saved model on input codes and write its outputs",
        cmd_simulate,
        "nupes-sim simulate model.h5 --input x.npy --out y.npy\n"
        "  nupes-sim simulate model.h5 --input x.h5 --out run.h5 --intermediates --backend cpu",
    )
    sp.add_argument("model", help="quantized model file (.h5, see save_model)")
    sp.add_argument("--input", required=True, help="input codes (.npy or .h5)")
    sp.add_argument("--dataset", help="dataset name inside an .h5 input")
    sp.add_argument("--out", required=True, help="output file: .npy (final output) or .h5")
    sp.add_argument("--intermediates", action="store_true", help="also store every stage (needs .h5)")
    add_memory(sp)
    add_backend(sp)
