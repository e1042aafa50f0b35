"""What several verbs share: output helpers, model/input loading, shared option groups."""

import importlib
import json
import os
import sys

import numpy as np

from .cli_checks import CliError, existing_file, int_in, load_array, memory_arg, shape_arg

BACKENDS = ("numpy", "cpu", "cuda")
SEED = int_in(0, 2**63 - 1, "seed")


def progress(args):
    if args.quiet or args.json:
        return None
    from tqdm import tqdm

    return lambda it, total=None: tqdm(it, total=total, unit="vec", file=sys.stderr, leave=False)


def say(args, text):
    if not args.quiet and not args.json:
        print(text)


def emit_json(args, obj):
    if args.json:
        print(json.dumps(obj, indent=1, default=str))


def lazy(module, attr, what):
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise CliError(f"{what} needs {module}, which is not available in this install ({e})") from None
        raise
    if not hasattr(mod, attr):
        raise CliError(f"{what} needs {module}.{attr}, which this version of {module} does not provide")
    return getattr(mod, attr)


def load_inputs(path, dataset=None):
    """Integer input codes (N, ...) from .npy/.h5: kind, dtype and size checked from the
    header before reading; values must fit int64."""
    from .memory import budget

    x = load_array(path, dataset, "input", "iu", budget())
    if x.dtype == np.uint64 and x.size and int(x.max()) > 2**63 - 1:
        raise CliError(f"input {path}: code {int(x.max())} does not fit int64")
    return x.astype(np.int64)


def load_model(path):
    from .serialize import load_model as _load

    existing_file(path, "model file")
    return _load(path, full=True)


def input_shape(args, m):
    if getattr(args, "shape", None):
        return tuple(args.shape)
    if m.input_shape is not None:
        return tuple(m.input_shape)
    first = m.graph.nodes[0].layer
    if hasattr(first, "k") and type(first).__name__ == "Linear":
        return (first.k,)
    raise CliError("the model file does not record its input shape; give --shape C,H,W")


def check_vectors_fit(m, shape, n, per_vector_only=False):
    """Refuse (one line, before allocating) inputs/runs that cannot fit the memory budget."""
    from .memory import check_fits, elements, run_bytes

    inputs = 0 if per_vector_only else 8 * n * elements(shape)
    check_fits(f"{n} input vectors of shape {tuple(shape)}", inputs)
    try:
        vb = run_bytes(m.graph, shape)
    except ValueError as e:
        raise CliError(f"input shape {tuple(shape)} does not fit the model: {e}") from None
    check_fits(f"{n} input vectors of shape {tuple(shape)}", inputs + vb)


def load_float_inputs(m, path, dataset=None, model_path="the model file"):
    """Input codes encoded (float64, on the host) from real inputs with the model file's
    stored input format (nupes_sim.float_io)."""
    from .float_io import FloatIOError, encode_inputs
    from .memory import budget

    if m.input_format is None:
        raise CliError(
            f"--float-input: {model_path} (model format version {m.version}) stores no input format; "
            "re-save it with nupes-sim quantize (or save_model(..., input_format=...)), "
            "or give integer codes with --input"
        )
    x = load_array(path, dataset, "float input", "f", budget())
    try:
        return encode_inputs(m.input_format, x)
    except FloatIOError as e:
        raise CliError(f"float input {path}: {e}") from None


def decoded_summary(m, y, limit=4, values=8):
    """(lines, JSON) describing the real values of outputs y (None when the model file
    stores no output unit)."""
    from .float_io import decode_outputs

    if m.output_unit is None:
        return [], None
    r = decode_outputs(m.output_unit, y)
    flat = r.reshape(len(r), -1)
    lines = [f"decoded outputs (real values, model's output_unit): shape {tuple(r.shape)}"]
    for v in range(min(limit, len(flat))):
        head = ", ".join(f"{t:.6g}" for t in flat[v, :values])
        more = ", ..." if flat.shape[1] > values else ""
        lines.append(f"  vector {v}: [{head}{more}] argmax {int(np.argmax(flat[v]))}")
    if len(flat) > limit:
        lines.append(f"  ... ({len(flat) - limit} more vectors)")
    return lines, {"shape": list(r.shape), "argmax": np.argmax(flat, axis=1).tolist(), "values": r.tolist()}


def inputs_for(args, m):
    """Input codes from --input FILE, --float-input FILE or --random N, and the
    seeds/provenance to record."""
    from .golden import random_inputs

    given = [o for o, v in (("--input", args.input), ("--float-input", getattr(args, "float_input", None)),
                            ("--random", args.random)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise CliError(
            f"give one of --input FILE, --float-input FILE or --random N, not both {' and '.join(given)}"
        )
    if getattr(args, "float_input", None):
        x = load_float_inputs(m, args.float_input, getattr(args, "dataset", None), args.model)
        check_vectors_fit(m, x.shape[1:], len(x), per_vector_only=True)
        return x, {"float_input_file": os.path.basename(args.float_input)}
    if args.input:
        x = load_inputs(args.input, getattr(args, "dataset", None))
        check_vectors_fit(m, x.shape[1:], len(x), per_vector_only=True)
        return x, {"input_file": os.path.basename(args.input)}
    if args.random is None:
        raise CliError(
            "give --input FILE, --float-input FILE or --random N"
            + (" (or --stress)" if hasattr(args, "stress") else "")
        )
    shape = input_shape(args, m)
    check_vectors_fit(m, shape, args.random)
    return random_inputs(m.graph, args.random, args.seed, shape), {
        "input_seed": args.seed,
        "n_random": args.random,
    }


def int_list(text, what):
    """[0, 1, 2, 5] from '0-2,5'."""
    out = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise CliError(f"{what} {text!r}: expected indices like 0-3,7") from None
    return out


# ---- option groups shared by several verbs ------------------------------------------------


def add_float_input(sp):
    sp.add_argument(
        "--float-input",
        metavar="FILE",
        help="real inputs (.npy/.h5 floats, first axis = vectors), encoded with the input format the "
        "model file stores (float64 host encoding, as the Python API's encode_input)",
    )


def add_inputs(sp):
    sp.add_argument("--input", help="integer input codes (.npy, or .h5 with --dataset), first axis = vectors")
    add_float_input(sp)
    sp.add_argument("--dataset", help="dataset name inside an .h5 input (default 'input' or the only one)")
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
    add_memory(sp)


def add_memory(sp):
    sp.add_argument(
        "--max-memory",
        type=memory_arg,
        default=None,
        metavar="SIZE",
        help="memory budget, e.g. 4G (default: half of the machine's memory); work that cannot "
        "fit is refused before it starts, large layers are computed in chunks within it",
    )


def add_backend(sp, default="numpy"):
    sp.add_argument(
        "--backend", choices=BACKENDS, default=default, help=f"simulator backend (default {default})"
    )
