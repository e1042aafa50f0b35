"""`nupes-sim` command line: demo, quantize, simulate, golden, hex, verify, diff, audit, bench, eval.

This module assembles the parser and maps errors to exit codes; each verb lives in
nupes_sim/cli_<job>.py (its options next to its code; shared parts in cli_common.py).

Exit codes: 0 ok, 1 mismatch or failed check, 2 usage error or bad input (one line on
stderr, no traceback).
"""

import argparse
import os
import sys

from . import cli_audit, cli_golden, cli_passthrough, cli_quantize, cli_simulate, cli_verify
from .cli_checks import CliError, OneLineParser

# Order of the verbs in `nupes-sim --help`.
REGISTER = (
    cli_passthrough.register_demo,
    cli_quantize.register,
    cli_simulate.register,
    cli_golden.register,
    cli_verify.register,
    cli_golden.register_hex,
    cli_audit.register,
    cli_passthrough.register_tools,
)


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

    def add(name, help_, fn, example):
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_,
            parents=[common],
            epilog="example:\n  " + example,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(fn=fn)
        return sp

    for register in REGISTER:
        register(add)
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
