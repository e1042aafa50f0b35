"""Hex export of golden files ($readmemh-style, one two's complement word per line) and its reader."""

import json
import os

import numpy as np

from ..serialize import sha256_array
from .reader import read_golden
from .schema import (
    SCHEMA,
    SCHEMA_VERSION,
    GoldenFormatError,
    input_range,
    layer_key,
    out_code_range,
    vector_key,
)


def _min_width(a):
    if not a.size:
        return 8
    lo, hi = int(a.min()), int(a.max())
    w = max((lo if lo >= 0 else ~lo).bit_length(), (hi if hi >= 0 else ~hi).bit_length()) + 1
    return max(w, 2)


def _hex_lines(a, width, signed):
    digits = (width + 3) // 4
    mask = (1 << width) - 1
    return "".join(f"{(int(v) & mask):0{digits}x}\n" for v in a.reshape(-1))


def hex_tensors(golden):
    """[(tensor name, array, width, signed)] for every tensor of a Golden, in file order."""
    out = []
    g = golden.graph
    for i, n in enumerate(g.nodes):
        key = layer_key(i, n.name)
        L = n.layer
        for k, a in sorted(golden.layers[n.name]["datasets"].items()):
            width = L.param_width(k)  # the layer knows its codes' and bias' word widths
            out.append((f"layers/{key}/{k}", a) + (width or (_min_width(a), True)))
    rng = input_range(g)
    out_ranges = [out_code_range(g, i, rng) for i in range(len(g.nodes))]
    for v, vec in enumerate(golden.vectors):
        vk = vector_key(v)
        x = vec["input"]
        if rng is not None:
            w_in = max(_min_width(np.array(rng)) - (1 if rng[0] >= 0 else 0), 1)
            out.append((f"vectors/{vk}/input", x, w_in, rng[0] < 0))
        else:
            out.append((f"vectors/{vk}/input", x, _min_width(x), True))
        for i, n in enumerate(g.nodes):
            key = layer_key(i, n.name)
            L = n.layer
            for s, a in vec["stages"][n.name].items():
                if s == "acc_exact":
                    w, sg = 64, True
                elif s == "acc":
                    w, sg = L.acc.width, True  # an acc stage belongs to a layer with an accumulator
                else:
                    r = out_ranges[i] if s == "out" else L.stage_range(s, ())
                    if r is None:
                        w, sg = 64, True
                    elif r[0] >= 0:
                        w, sg = max(int(r[1]).bit_length(), 1), False
                    else:
                        w, sg = _min_width(np.array(r)), True
                out.append((f"vectors/{vk}/{key}/{s}", a, w, sg))
    return out


def _entry_note(golden, name, a, width):
    parts = name.split("/")
    if parts[0] == "layers" and parts[2] == "thresholds":
        info = golden.layers[golden.layer_order[int(parts[1][:3])]]["info"]
        n = info.get("acc_width", 64)
        if n < 64 and a.size and int(a.max()) == 2 ** (n - 1):
            return (
                f"holds 2^{n - 1} = 'never reached' (acc_max + 1): {width}-bit words (acc_width + 1); "
                f"a bench that declares {n} bits reads it as -2^{n - 1} and miscounts every code"
            )
    return None


def requant_table(golden, name):
    """The layer's `requant_table` dataset (schema.requant_table_array) as JSON, per threshold
    row: each threshold t the requantizer's input can reach with the expected code at value t
    and at t - 1 (code = out_qmin + #{j : value >= thr[row, j]}); None without thresholds."""
    ds = golden.layers[name]["datasets"]
    if "thresholds" not in ds:
        return None
    rows = [[] for _ in range(len(ds["thresholds"]))]
    for r, t, at_t, below in ds["requant_table"].tolist():
        rows[r].append({"threshold": t, "code_at_t": at_t, "code_at_t_minus_1": below})
    return rows


def export_hex(golden_path, out_dir, layers=None, vectors=None, headers=True):
    """Write $readmemh-style files (one two's complement hex word per line, C order) for the
    tensors of a golden file, manifest.json (every layer's full `info`, each file's width and
    signedness, requantizer tables) and a Verilog header per layer (`layers__NNN_x__params.vh`).
    layers/vectors: names (or NNN_name keys) / indices to export (default all). The folder is
    written to a temporary sibling and renamed into place: `out_dir` must not exist or be empty.
    Returns the manifest dict."""
    from ..dumps import expected_layout
    from ..hdl_params import layer_header

    golden = read_golden(golden_path)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(
            f"hex folder {out_dir} exists and is not empty; give a new or empty folder "
            f"(stale files of an earlier export would sit next to the new manifest)"
        )
    names = golden.layer_order
    keys = {layer_key(i, n): n for i, n in enumerate(names)}
    lsel = set(names) if layers is None else {keys.get(x, x) for x in layers}
    bad = sorted(lsel - set(names))
    if bad:
        raise ValueError(f"hex --layers: no layer {bad[0]!r} in {golden_path} (layers: {', '.join(names)})")
    vsel = set(range(len(golden.vectors))) if vectors is None else {int(v) for v in vectors}
    if not vsel or not lsel or any(not 0 <= v < len(golden.vectors) for v in vsel):
        raise ValueError(f"hex --vectors: choose among 0-{len(golden.vectors) - 1}")
    layout = expected_layout(golden)
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    from .. import atomic

    atomic.clean_stale(out_dir)  # temporaries of killed exports (their writer pid is gone)
    tmp_dir = atomic.temp_name(out_dir)
    os.mkdir(tmp_dir)
    try:
        entries = []
        for name, a, width, signed in hex_tensors(golden):
            parts = name.split("/")
            lname = (
                keys.get(parts[1])
                if parts[0] == "layers"
                else (keys.get(parts[2]) if len(parts) > 3 else None)
            )
            if parts[0] == "vectors" and int(parts[1]) not in vsel:
                continue
            if lname is not None and lname not in lsel:
                continue
            fname = name.replace("/", "__") + ".hex"
            with open(os.path.join(tmp_dir, fname), "w") as fh:
                fh.write(_hex_lines(a, width, signed))
            e = {
                "tensor": name,
                "file": fname,
                "shape": list(a.shape),
                "width": int(width),
                "signed": bool(signed),
                "order": "C (row-major, last index fastest), one word per line",
                "encoding": "two's complement hex" if signed else "unsigned hex",
                "sha256": sha256_array(np.asarray(a, np.int64)),
            }
            note = _entry_note(golden, name, a, width)
            if note:
                e["note"] = note
            entries.append(e)
        lays = {}
        for i, n in enumerate(names):
            if n not in lsel:
                continue
            key = layer_key(i, n)
            d = {"info": golden.layers[n]["info"]}
            rt = requant_table(golden, n)
            if rt is not None:
                d["requant_table"] = rt
            if headers:
                hname = f"layers__{key}__params.vh"
                with open(os.path.join(tmp_dir, hname), "w") as fh:
                    fh.write(layer_header(golden, i, layout))
                d["header"] = hname
            lays[key] = d
        manifest = {
            "schema": SCHEMA + "-hex",
            "schema_version": SCHEMA_VERSION,
            "source": os.path.basename(golden_path),
            "model_hash": golden.attrs["model_hash"],
            "n_vectors": golden.attrs["n_vectors"],
            "vectors_exported": sorted(vsel),
            "layer_order": golden.layer_order,
            "layers_exported": [n for n in names if n in lsel],
            "input_shape": golden.attrs["input_shape"],
            "layers": lays,
            "tensors": entries,
        }
        with open(os.path.join(tmp_dir, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); a racing writer makes this fail loudly
        os.replace(tmp_dir, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return manifest


def read_hex_dir(out_dir):
    """{tensor name: int64 array} from a folder written by export_hex (or a hardware dump in
    the same layout). Raises GoldenFormatError for a bad manifest or file."""
    mpath = os.path.join(out_dir, "manifest.json")
    try:
        with open(mpath) as fh:
            manifest = json.load(fh)
        tensors = {}
        for e in manifest["tensors"]:
            width, signed, shape = int(e["width"]), bool(e["signed"]), tuple(int(s) for s in e["shape"])
            with open(os.path.join(out_dir, e["file"])) as fh:
                words = [ln.strip() for ln in fh if ln.strip() and not ln.startswith("//")]
            n = int(np.prod(shape)) if shape else 1
            if len(words) != n:
                raise GoldenFormatError(f"{out_dir}/{e['file']}: {len(words)} words; shape {shape} needs {n}")
            vals = []
            for w in words:
                v = int(w, 16)
                if not 0 <= v < 1 << width:  # never masked: a wider word is an error
                    raise GoldenFormatError(f"{out_dir}/{e['file']}: word {w!r} does not fit {width} bits")
                if signed and v >= 1 << (width - 1):
                    v -= 1 << width
                vals.append(v)
            tensors[e["tensor"]] = np.array(vals, dtype=np.int64).reshape(shape)
        return manifest, tensors
    except GoldenFormatError:
        raise
    except Exception as e:
        raise GoldenFormatError(f"{out_dir}: bad hex dump ({type(e).__name__}: {e})") from None


__all__ = ["hex_tensors", "export_hex", "read_hex_dir", "requant_table"]
