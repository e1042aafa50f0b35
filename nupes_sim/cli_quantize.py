"""`nupes-sim quantize`: a float model (state dict, torch.export program, built-in) to a model file."""

import json
import os

import numpy as np

from .cli_checks import CliError, existing_file, int_in, output_folder_exists, refuse_overwrite
from .cli_common import SEED, emit_json, lazy, say
from .cli_transformer import TRANSFORMER_BUILTINS, cmd_quantize_transformer
from .cli_transformer import add_options as add_transformer_options


def cmd_quantize(args):
    """Quantize a user's model (state dict + --arch, a torch.export .pt2, or the shipped
    'fashion-resnet') and save the exported integer graph (nupes_sim.reference.pipeline);
    the shipped transformers 'charlm' and 'minilm' go through cli_transformer."""
    if args.model in TRANSFORMER_BUILTINS:
        return cmd_quantize_transformer(args)
    pipeline = lazy("nupes_sim.reference.pipeline", "quantize_to_graph", "quantize")
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
        full_range=args.full_range,
    )
    hist = {
        r["name"]: np.array([r["loss_before"], r["loss_after"]], np.float64)
        for r in report["layers"]
        if r.get("loss_before") is not None
    }
    from .float_io import graph_output_unit, input_format_json, output_unit_json

    fmt = ex.input_format
    out_unit = graph_output_unit(ex.graph)
    save_model(
        ex.graph,
        args.out,
        input_shape=tuple(calib.shape[1:]),
        loss_history=hist,
        input_format=fmt,
        output_unit=out_unit,
    )
    # repr(float) is the shortest text that reads back as the same float64: the exact value
    scale = float(fmt.scale[0]) if hasattr(fmt, "exponent") else float(fmt.scale)
    desc = (
        f"{fmt.bits}-bit power, exponent a={float(fmt.exponent)!r}, scale s={scale!r}"
        if hasattr(fmt, "exponent")
        else f"{fmt.bits}-bit uniform, scale s={scale!r}, zero_point {fmt.zero_point}"
    )
    unit = "none stored" if out_unit is None else (
        f"{float(np.asarray(out_unit).reshape(-1)[0])!r} per LSB" + (" (channel 0)" if np.size(out_unit) > 1 else "")
        if not hasattr(out_unit, "bits") else f"{out_unit.bits}-bit codes"
    )  # fmt: skip
    say(
        args,
        f"wrote quantized model {args.out} ({len(ex.graph.nodes)} layers; input format: {desc}; "
        f"output unit: {unit}; both stored in the model file for --float-input)",
    )
    emit_json(
        args,
        {
            "out": args.out,
            "layers": report["layers"],
            "input_format": json.loads(input_format_json(fmt)),
            "output_unit": None if out_unit is None else json.loads(output_unit_json(out_unit)),
        },
    )
    return 0


EXAMPLE = (
    "nupes-sim quantize fashion-resnet --calib calib.npy --method nupes --wbits 4 --abits 8 --out model.h5\n"
    "  nupes-sim quantize my_weights.pt --arch fashion-resnet --calib calib.h5 --data-free "
    "--method powerquant --out model.h5\n"
    "  nupes-sim quantize charlm --method powerquant --wbits 4 --seq-len 32 --out charlm.h5"
)


def register(add):
    sp = add(
        "quantize",
        "quantize a model and save its integer graph (nupes_sim.reference.pipeline)",
        cmd_quantize,
        EXAMPLE,
    )
    sp.add_argument(
        "model",
        help="state dict (.pt, with --arch), torch.export program (.pt2), 'fashion-resnet', "
        "or a shipped transformer: 'charlm' (KJV char LM), 'minilm' (all-MiniLM-L6-v2)",
    )
    sp.add_argument("--arch", help="built-in architecture of a state dict: fashion-resnet")
    sp.add_argument(
        "--calib",
        help="float calibration inputs (.npy or .h5), batch first; charlm/minilm: (N, T) token ids "
        "(optional: KJV text by default)",
    )
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
    sp.add_argument(
        "--full-range",
        action="store_true",
        help="signed weight codes [-2^(b-1), 2^(b-1)-1] (all 2^b levels, as int-b) instead of the "
        "symmetric [-(2^(b-1)-1), 2^(b-1)-1] (docs/ARITHMETIC.md §1)",
    )
    sp.add_argument("--steps", type=int_in(0, 10**6, "steps"), default=None, help="NUPES steps per layer")
    sp.add_argument("--datapath", default="operand", choices=("operand", "product"))
    sp.add_argument("--acc-width", type=int_in(8, 64, "bits"), default=48, help="accumulator bits, 8 to 64")
    sp.add_argument("--overflow", default="saturate", choices=("wrap", "saturate", "exact"))
    sp.add_argument("--seed", type=SEED, default=0)
    sp.add_argument("--out", required=True, help="model file to write (.h5)")
    add_transformer_options(sp)
