"""`nupes-sim quantize charlm|minilm`: the shipped transformers (reference/transformer_pipeline.py)
to a model file; the integer graph reads token ids of the fixed length --seq-len."""

from .cli_checks import CliError, int_in, load_array, output_folder_exists, refuse_overwrite
from .cli_common import emit_json, lazy, say

TRANSFORMER_BUILTINS = ("charlm", "minilm")
_positive = int_in(1, 4096, "count")


def cmd_quantize_transformer(args):
    quantize = lazy("nupes_sim.reference.transformer_pipeline", "quantize_builtin", "quantize")
    from .serialize import save_model

    if args.arch:
        raise CliError(f"--arch is for state dicts; {args.model} is a built-in model")
    if args.granularity != "channel" or args.group_size is not None:
        raise CliError(f"--granularity/--group-size: {args.model} is quantized per channel")
    refuse_overwrite(args.out, [("calibration file", args.calib)])
    output_folder_exists(args.out)
    calib = None
    if args.calib:
        calib = load_array(args.calib, args.dataset, "calibration file", "iu", 2**30)
        if calib.ndim != 2:
            raise CliError(f"calibration file {args.calib}: shape {calib.shape}; expected (N, T) token ids")
    if args.data_free and args.method in ("gptq", "gptq_power", "nupes"):
        raise CliError(f"--data-free: method {args.method} needs data; use rtn or powerquant")
    _, ex, ids, _ = quantize(
        args.model,
        method=args.method,
        wbits=args.wbits,
        steps=args.steps,
        seq_len=args.seq_len if calib is None else calib.shape[1],
        n_calib=args.n_calib,
        datapath=args.datapath,
        acc_width=args.acc_width,
        overflow=args.overflow,
        seed=args.seed,
        progress=not args.quiet,
        calib_ids=calib,
        act_bits=args.abits,
        full_range=args.full_range,
    )
    T = int(ids.shape[1])
    save_model(ex.graph, args.out, input_shape=(T,))
    say(
        args,
        f"wrote quantized model {args.out} ({len(ex.graph.nodes)} layers; input: {T} token ids "
        f"per vector; {args.method} W{args.wbits}, A{args.abits}, calibrated on {len(ids)} sequences)",
    )
    emit_json(
        args,
        {"out": args.out, "layers": len(ex.graph.nodes), "input_shape": [T], "calibration": list(ids.shape)},
    )
    return 0


def add_options(sp):
    """The options only built-in transformers take."""
    sp.add_argument(
        "--seq-len",
        type=_positive,
        default=32,
        help="charlm/minilm: tokens per input (fixed in the integer graph; default 32)",
    )
    sp.add_argument(
        "--n-calib",
        type=_positive,
        default=16,
        help="charlm/minilm: KJV calibration sequences when --calib is not given (default 16)",
    )


__all__ = ["TRANSFORMER_BUILTINS", "cmd_quantize_transformer", "add_options"]
