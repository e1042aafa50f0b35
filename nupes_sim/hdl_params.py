"""Generated Verilog headers: one `params.vh` per layer of a golden file's hex export.

The header holds `localparam`s (sizes, code ranges, accumulator width and mode, tile, LUT code
offsets, ROM widths and depths, requantizer, file names) meant to be `include`d inside the
module that implements the layer (hdl/nupes_linear_top.v does so); docs/GOLDEN.md lists every
name. File names are prefixed with the macro NUPES_HEX_DIR (default "./"), so a bench can
point $readmemh at the export folder with +define+NUPES_HEX_DIR=\\"/path/\\".
"""

import os

import numpy as np

from .dumps import tensor_file
from .golden import layer_key

OVERFLOW_IDS = {"wrap": 0, "saturate": 1, "exact": 2}
REQUANT_IDS = {"none": 0, "thresholds": 1, "rescale": 2}
# ROM file parameters of a MAC layer -> dataset; absent datasets are written as "none"
FILES = (
    ("W_CODES_FILE", "weight_codes"),
    ("W_INDEX_FILE", "weight_table_index"),
    ("W_LUT_FILE", "w_lut"),
    ("X_LUT_FILE", "x_lut"),
    ("P_LUT_FILE", "p_lut"),
    ("A_LUT_FILE", "a_lut"),
    ("B_LUT_FILE", "b_lut"),
    ("BIAS_FILE", "bias"),
    ("THR_FILE", "thresholds"),
    ("MULT_FILE", "multiplier"),
    ("SHIFT_FILE", "shift"),
    ("RQ_TABLE_FILE", "requant_table"),
)


def _vlit(v):
    if isinstance(v, str):
        return f'{{`NUPES_HEX_DIR, "{v}"}}' if v.endswith(".hex") else f'"{v}"'
    v = int(v)
    return str(v) if v >= 0 else f"-{-v}"


def header_params(golden, i, layout):
    """[(name, value, comment)] of layer i's header."""
    n = golden.graph.nodes[i]
    key = layer_key(i, n.name)
    lay = golden.layers[n.name]
    info, ds = lay["info"], lay["datasets"]
    v0 = golden.vectors[0]["stages"][n.name] if golden.vectors else {}
    p = [("LAYER_INDEX", i, f"execution index of layer '{n.name}' ({info['type']})")]

    def width(dsname):
        e = layout.get(f"layers/{key}/{dsname}")
        return (e.width, int(e.signed)) if e is not None else (1, 0)

    def rom(prefix, dsname, what):
        a = ds[dsname]
        rows, cols = (
            (a.shape[0], int(np.prod(a.shape[1:]))) if a.ndim > 1 else (1, a.shape[0] if a.ndim else 1)
        )
        w, s = width(dsname)
        p.extend(
            [
                (f"{prefix}_ROWS", rows, f"{what}: rows"),
                (f"{prefix}_COLS", cols, "entries per row"),
                (f"{prefix}_W", w, "word width (two's complement)" if s else "word width (unsigned)"),
                (f"{prefix}_DEPTH", rows * cols, "ROM depth = ROWS*COLS, index = row*COLS + col"),
            ]
        )

    if "weight_codes" in ds:
        wc = ds["weight_codes"]
        O = wc.shape[0]
        p += [
            ("K", int(np.prod(wc.shape[1:])), "products per output (dot-product length, k ascending)"),
            ("O", O, "output channels"),
        ]
        wr, xr = info["weight_range"], info["input_range"]
        p += [
            ("X_BITS", xr["bits"], "input code bits"),
            ("X_SIGNED", int(xr["signed"]), ""),
            ("X_QMIN", xr["qmin"], "smallest input code"),
            ("X_QMAX", xr["qmax"], "largest input code"),
            ("W_BITS", wr["bits"], "weight code bits"),
            ("W_SIGNED", int(wr["signed"]), ""),
            ("W_QMIN", wr["qmin"], "smallest weight code"),
            ("W_QMAX", wr["qmax"], ""),
            ("PRODUCT", int(info["datapath"] == "product"), "0: operand decode, 1: product domain"),
        ]
        p.append(
            ("WIDX_W", width("weight_table_index")[0], "word width of weight_table_index (LUT row t(o,k))")
        )
        unused = [
            (f"{r}_{f}", 2 if f == "W" else 1, "unused by this datapath")
            for r in ("W_LUT", "X_LUT", "P_LUT")
            for f in ("ROWS", "COLS", "W", "DEPTH")
        ]
        if info["datapath"] == "operand":
            rom("W_LUT", "w_lut", "weight LUT")
            rom("X_LUT", "x_lut", "input LUT")
            p += [
                ("W_LUT_QMIN", info["w_lut_qmin"], "column of weight code q: q - W_LUT_QMIN"),
                ("X_LUT_QMIN", info["x_lut_qmin"], "column of input code q: q - X_LUT_QMIN"),
            ]
            p += [u for u in unused if u[0].startswith("P_LUT")]
            p += [("P_BY_PRODUCT", 0, "unused by this datapath"), ("P_MX", 0, "unused by this datapath")]
        else:
            rom("P_LUT", "p_lut", "product LUT")
            p += [
                (
                    "P_BY_PRODUCT",
                    int(info["p_lut_by_product"]),
                    "1: idx = |qw||qx|; 0: idx = |qw|(P_MX+1) + |qx|",
                ),
                ("P_MX", info["p_lut_mx"], "largest input code magnitude"),
            ]
            p += [u for u in unused if not u[0].startswith("P_LUT")]
            p += [("W_LUT_QMIN", 0, "unused by this datapath"), ("X_LUT_QMIN", 0, "unused by this datapath")]
        if "kernel" in info and "stride" in info and "groups" in info:
            out = v0.get("out")
            p += [
                ("KH", info["kernel"][0], ""),
                ("KW", info["kernel"][1], ""),
                ("STRIDE_H", info["stride"][0], ""),
                ("STRIDE_W", info["stride"][1], ""),
                ("PAD_H", info["padding"][0], "padded taps add 0 and still count as a step"),
                ("PAD_W", info["padding"][1], ""),
                ("DIL_H", info["dilation"][0], ""),
                ("DIL_W", info["dilation"][1], ""),
                ("GROUPS", info["groups"], ""),
            ]
            if out is not None and out.ndim == 4:
                p += [("HO", out.shape[2], "output rows"), ("WO", out.shape[3], "output columns")]
    elif "a_lut" in ds:
        rom("A_LUT", "a_lut", "operand a LUT")
        rom("B_LUT", "b_lut", "operand b LUT")
    elif "x_lut" in ds:
        rom("X_LUT", "x_lut", "input LUT")
        p.append(
            ("WINDOW", info.get("window", 0), "window size (the division is folded into the requantizer)")
        )
    if "acc_width" in info:
        p += [
            ("ACC_W", info["acc_width"], "accumulator bits (signed)"),
            ("OVERFLOW", OVERFLOW_IDS[info["overflow"]], f"0 wrap, 1 saturate, 2 exact ({info['overflow']})"),
            ("SATURATE", int(info["overflow"] == "saturate"), "clamp after every addition"),
            ("TILE", info["tile"], "saturate: products per zeroed partial (0: none)"),
        ]
    if "bias" in ds:
        p.append(("BIAS_W", width("bias")[0], "bias word width (= ACC_W)"))
    rq = info.get("requant")
    if rq is not None:
        p.append(("REQUANT", REQUANT_IDS[rq], f"0 none, 1 thresholds, 2 rescale ({rq})"))
    if rq in ("thresholds", "rescale"):
        lo, hi = info["out_qmin"], info["out_qmax"]
        e = layout.get(f"vectors/000000/{key}/out")
        p += [
            ("OUT_QMIN", lo, "smallest output code (ReLU folded)"),
            ("OUT_QMAX", hi, "largest output code"),
            ("OUT_BITS", e.width if e else 0, "output word width"),
            ("OUT_SIGNED", int(e.signed) if e else 0, ""),
        ]
    if rq == "thresholds":
        thr = ds["thresholds"]
        w = width("thresholds")[0]
        never = int(info.get("acc_width", 64) < 64 and (thr == 2 ** (info["acc_width"] - 1)).any())
        p += [
            ("N_THR", thr.shape[1], "thresholds per row: code = OUT_QMIN + #{j : acc >= thr[row][j]}"),
            ("THR_ROWS", thr.shape[0], "1: shared; O: one row per output channel"),
            (
                "THR_W",
                w,
                "threshold word width" + (" (ACC_W + 1: holds 2^(ACC_W-1) = never reached)" if never else ""),
            ),
            ("THR_NEVER", never, "1 if some threshold is 2^(ACC_W-1), which no ACC_W-bit acc reaches"),
        ]
        if "requant_table" in ds:
            p.append(
                (
                    "RQ_TABLE_ROWS",
                    ds["requant_table"].shape[0],
                    "rows of RQ_TABLE_FILE, 4 words each: row, t, code at t, code at t-1",
                )
            )
    elif rq == "rescale":
        p += [
            ("MULT_ROWS", ds["multiplier"].shape[0], ""),
            ("MULT_W", width("multiplier")[0], ""),
            ("SHIFT_W", width("shift")[0], ""),
            ("ZERO_POINT", info["zero_point"], ""),
            ("MULT_BITS", info["mult_bits"], ""),
            ("RESCALE_ROUNDING", info["rescale_rounding_id"], info["rescale_rounding"]),
        ]
    for pname, dsname in FILES:
        p.append((pname, tensor_file(f"layers/{key}/{dsname}") if dsname in ds else "none", ""))
    p.append(("N_VECTORS", len(golden.vectors), "vectors in the export"))
    p.append(("IN_FILE_FMT", tensor_file("vectors/%06d/input"), "$sformatf with the vector index"))
    for s in v0:  # the layer's stages, in its order
        p.append((f"{s.upper()}_FILE_FMT", tensor_file(f"vectors/%06d/{key}/{s}"), ""))
    return p


def layer_header(golden, i, layout):
    """Text of layer i's params.vh."""
    n = golden.graph.nodes[i]
    # The file's base name only: an absolute path would make the header depend on the machine.
    src = os.path.basename(str(golden.source))
    lines = [
        f"// Generated by nupes-sim from {src} (model {golden.attrs['model_hash']}).",
        f"// Layer {layer_key(i, n.name)}: include inside the module implementing it. Do not edit.",
        "`ifndef NUPES_HEX_DIR",
        '`define NUPES_HEX_DIR "./"',
        "`endif",
    ]
    for name, v, c in header_params(golden, i, layout):
        lines.append(
            f"localparam {'integer ' if not isinstance(v, str) else ''}{name} = {_vlit(v)};"
            + (f"  // {c}" if c else "")
        )
    return "\n".join(lines) + "\n"


__all__ = ["header_params", "layer_header"]
