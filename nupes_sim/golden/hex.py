"""Hex export of golden files ($readmemh-style, one two's complement word per line) and its reader."""
import json
import os

import numpy as np

from ..serialize import sha256_array
from .reader import read_golden
from .schema import SCHEMA, SCHEMA_VERSION, GoldenFormatError, input_range, layer_key, out_code_range, vector_key


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
                    r = out_ranges[i]
                    if r is None:
                        w, sg = 64, True
                    elif r[0] >= 0:
                        w, sg = max(int(r[1]).bit_length(), 1), False
                    else:
                        w, sg = _min_width(np.array(r)), True
                out.append((f"vectors/{vk}/{key}/{s}", a, w, sg))
    return out


def export_hex(golden_path, out_dir):
    """Write $readmemh-style files (one two's complement hex word per line, C order) for every
    tensor of a golden file, plus manifest.json describing each. Returns the manifest dict."""
    golden = read_golden(golden_path)
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for name, a, width, signed in hex_tensors(golden):
        fname = name.replace("/", "__") + ".hex"
        with open(os.path.join(out_dir, fname), "w") as fh:
            fh.write(_hex_lines(a, width, signed))
        entries.append({"tensor": name, "file": fname, "shape": list(a.shape), "width": int(width),
                        "signed": bool(signed), "order": "C (row-major, last index fastest), one word per line",
                        "encoding": "two's complement hex" if signed else "unsigned hex",
                        "sha256": sha256_array(np.asarray(a, np.int64))})
    manifest = {"schema": SCHEMA + "-hex", "schema_version": SCHEMA_VERSION, "source": os.path.basename(golden_path),
                "model_hash": golden.attrs["model_hash"], "n_vectors": golden.attrs["n_vectors"],
                "layer_order": golden.layer_order, "tensors": entries}
    tmp = os.path.join(out_dir, ".manifest.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(out_dir, "manifest.json"))
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
                v = int(w, 16) & ((1 << width) - 1)
                if signed and v >= 1 << (width - 1):
                    v -= 1 << width
                vals.append(v)
            tensors[e["tensor"]] = np.array(vals, dtype=np.int64).reshape(shape)
        return manifest, tensors
    except GoldenFormatError:
        raise
    except Exception as e:
        raise GoldenFormatError(f"{out_dir}: bad hex dump ({type(e).__name__}: {e})") from None


__all__ = ["hex_tensors", "export_hex", "read_hex_dir"]
