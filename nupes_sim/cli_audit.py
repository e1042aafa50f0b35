"""`nupes-sim audit`: the numerical-stability report of a model on inputs."""

import sys

from .cli_checks import float_in, output_folder_exists, refuse_overwrite
from .cli_common import add_backend, add_inputs, emit_json, inputs_for, load_model


def cmd_audit(args):
    from .audit import audit

    refuse_overwrite(
        args.out,
        [("model file", args.model), ("input file", args.input), ("float input file", args.float_input)],
    )
    output_folder_exists(args.out)
    m = load_model(args.model)
    x, _ = inputs_for(args, m)
    rep = audit(
        m,
        x,
        args.out,
        fail_on=tuple(args.fail_on or ()),
        backend=args.backend,
        clip_tolerance=args.clip_tolerance,
    )
    emit_json(
        args,
        {
            "out": args.out,
            "failed": rep["failed"],
            "failures": rep["failures"],
            "layers": rep["layers"],
            "decoded_outputs": rep["decoded_outputs"],
        },
    )
    if not args.json and not args.quiet:
        print(f"wrote {args.out}/report.md, report.json and {len(rep['plots'])} plots")
        d = rep["decoded_outputs"]
        if d:
            print(
                f"decoded outputs (model's output_unit): shape {tuple(d['shape'])}, "
                f"min {d['min']:.6g}, max {d['max']:.6g}, argmax of the first vectors {d['argmax'][:8]}"
            )
    if rep["failed"]:
        if not args.json:  # one line naming each failing check, its layers and counts
            print(f"audit failed: {'; '.join(rep['failures'])}", file=sys.stderr)
        return 1
    return 0


def register(add):
    sp = add(
        "audit",
        "numerical-stability audit: ranges, headroom, overflow, clipping, float64 error",
        cmd_audit,
        "nupes-sim audit model.h5 --random 64 --out audit/ --fail-on overflow --fail-on clipping\n"
        "  nupes-sim audit model.h5 --float-input images.npy --out audit/",
    )
    sp.add_argument("model", help="quantized model file (.h5)")
    add_inputs(sp)
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
    add_backend(sp)
