"""`nupes-sim verify` (recompute a golden file) and `nupes-sim diff` (golden file vs a dump)."""

import os

from .cli_checks import CliError, existing_file
from .cli_common import add_backend, add_memory, emit_json, int_list, load_model, progress


def report(args, rep):
    emit_json(args, rep.to_dict())
    if not args.json and not (args.quiet and rep.ok):
        print(rep.format_text())
    return 0 if rep.ok else 1


def expected_model_hash(args):
    """The model hash `--model FILE` or `--model-hash HEX` asks for (None when neither)."""
    if getattr(args, "model", None) and getattr(args, "model_hash", None):
        raise CliError("give --model or --model-hash, not both")
    if getattr(args, "model", None):
        return load_model(args.model).model_hash
    if getattr(args, "model_hash", None):
        from .verify import model_hash_arg

        return model_hash_arg(args.model_hash)
    return None


def cmd_verify(args):
    from .verify import verify

    existing_file(args.golden, "golden file")
    return report(
        args,
        verify(
            args.golden,
            backend=args.backend,
            progress=progress(args),
            expect_model_hash=expected_model_hash(args),
        ),
    )


def cmd_diff(args):
    from .verify import DUMP_STAGES, diff

    if not os.path.exists(args.observed):
        raise CliError(f"{args.observed} does not exist")
    return report(
        args,
        diff(
            args.expected,
            args.observed,
            layers=args.layers.split(",") if args.layers else None,
            vectors=int_list(args.vectors, "--vectors") if args.vectors else None,
            stages=tuple(args.stages.split(",")) if args.stages else DUMP_STAGES,
            partial=args.partial,
            allow_other_model=args.allow_other_model,
            expect_model_hash=expected_model_hash(args),
        ),
    )


def add_model_pin(sp):
    sp.add_argument("--model", help="fail unless the golden file was made from this model file (.h5)")
    sp.add_argument(
        "--model-hash",
        metavar="HEX",
        help="fail unless the golden file's model_hash is this SHA-256 (at least 12 leading hex digits)",
    )


def register(add):
    sp = add(
        "verify",
        "recompute a golden file's intermediates and compare bit for bit",
        cmd_verify,
        "nupes-sim verify golden.h5 --backend cpu --model model.h5",
    )
    sp.add_argument("golden", help="golden file (.h5)")
    add_memory(sp)
    add_backend(sp)
    add_model_pin(sp)
    sp = add(
        "diff",
        "strictly compare a golden file with a hardware dump; report the first divergence",
        cmd_diff,
        "nupes-sim diff golden.h5 hw_dump.h5\n  nupes-sim diff golden.h5 hw_hex_dir/ --json --model-hash 3fa9c2...\n"
        "  nupes-sim diff golden.h5 rtl_dump/ --layers fc --stages out --vectors 0-3",
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
    add_model_pin(sp)
