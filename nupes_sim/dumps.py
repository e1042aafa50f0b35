"""The observed side of `diff`: tensor names, the dump layouts, and their strict readers.

Every tensor of a golden file has a name: `vectors/VVVVVV/input`,
`vectors/VVVVVV/NNN_<layer>/<stage>` and `layers/NNN_<layer>/<dataset>`. In a hex folder the
tensor lives in the file named by `tensor_file` ('/' -> '__', + '.hex'), one word per line
in C order, each word the hex of the value's `width`-bit two's complement (signed) or
unsigned representation, as `export_hex` writes them and `$writememh` reads/writes them.
The width and signedness of every tensor come from the golden file (`expected_layout`), so
a test bench can write a dump with plain `$writememh`/`$fwrite` and no manifest
(docs/GOLDEN.md, "Dumps").

Readers never mask: a word that is not hex (`x`, `z`, garbage) or whose value does not fit
its declared width is kept as an invalid word and `diff` reports it as a mismatch; a file
with the wrong number of words, a tensor name the golden file does not hold, or a manifest
that declares another width is a problem `diff` fails on.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .golden import hex_tensors, layer_key, read_golden, stage_names, vector_key

HEX_SUFFIX = ".hex"
MANIFEST = "manifest.json"


def tensor_file(name):
    """File name of a tensor in a hex folder: 'vectors/000001/000_conv/acc' -> 'vectors__000001__000_conv__acc.hex'."""
    return name.replace("/", "__") + HEX_SUFFIX


def file_tensor(fname):
    """Inverse of tensor_file (None for a name that is not a .hex file)."""
    if not fname.endswith(HEX_SUFFIX):
        return None
    return fname[: -len(HEX_SUFFIX)].replace("__", "/")


def vector_tensor(v, i=None, layer=None, stage=None):
    """Name of a vector tensor: the input codes (i None) or stage `stage` of node i."""
    return f"vectors/{vector_key(v)}/" + ("input" if i is None else f"{layer_key(i, layer)}/{stage}")


@dataclass
class Expected:
    """One golden tensor as a dump must hold it."""

    name: str
    values: np.ndarray
    width: int
    signed: bool
    vector: int = None  # None for layer parameters
    layer: str = None  # None for the input codes
    node: int = None
    stage: str = None  # 'codes' for the input; the dataset name for parameters


def expected_layout(golden):
    """{tensor name: Expected} for every tensor of a Golden, in golden order (vectors in
    execution order; see verify.STAGE_ORDER), with its hex width and signedness."""
    out = {}
    index = {layer_key(i, n.name): (i, n.name) for i, n in enumerate(golden.graph.nodes)}
    for name, a, width, signed in hex_tensors(golden):
        parts = name.split("/")
        if parts[0] == "layers":
            i, lname = index[parts[1]]
            out[name] = Expected(name, a, width, signed, None, lname, i, parts[2])
        elif parts[2] == "input":
            out[name] = Expected(name, a, width, signed, int(parts[1]), None, None, "codes")
        else:
            i, lname = index[parts[2]]
            out[name] = Expected(name, a, width, signed, int(parts[1]), lname, i, parts[3])
    return out


@dataclass
class Observed:
    """A dump tensor: int64 values and the words that were not valid `width`-bit values
    ({flat index: word as written}); those positions hold 0 in `values` and never match."""

    values: np.ndarray
    invalid: dict = field(default_factory=dict)


@dataclass
class Dump:
    """What a dump holds: tensors by name, problems that make `diff` fail (missing files,
    wrong word counts, unknown names, declared widths), the model hash it names (or None),
    the vector count it declares (or None), and layer `info` dicts (HDF5 dumps)."""

    source: str
    kind: str  # 'hdf5', 'hex folder + manifest', 'hex folder'
    tensors: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    model_hash: str = None
    n_vectors: int = None
    infos: dict = field(default_factory=dict)


def parse_words(text, width, signed, n, where):
    """Observed from $readmemh-style text (one word per line; blank lines and // comments
    skipped). Returns (Observed or None, problem or None); never masks a wide word."""
    words = []
    for ln in text.splitlines():
        w = ln.split("//", 1)[0].strip()
        if w:
            words.extend(w.split())
    if len(words) != n:
        return None, f"{where}: {len(words)} words; the tensor has {n} elements"
    vals = np.zeros(n, np.int64)
    invalid = {}
    lim = 1 << width
    for k, w in enumerate(words):
        try:
            v = int(w, 16) if all(c in "0123456789abcdefABCDEF" for c in w) else None
        except ValueError:
            v = None
        if v is None or v >= lim:
            invalid[k] = w
            continue
        if signed and v >= lim >> 1:
            v -= lim
        vals[k] = v
    return Observed(vals, invalid), None


def format_words(values, width, signed):
    """Text of a hex file (inverse of parse_words): one zero-padded word per line."""
    digits = (width + 3) // 4
    mask = (1 << width) - 1
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, mask)
    a = np.asarray(values, np.int64).reshape(-1)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(
            f"value {int(a.min()) if int(a.min()) < lo else int(a.max())} does not fit "
            f"{width}-bit {'signed' if signed else 'unsigned'} words"
        )
    return "".join(f"{(int(v) & mask):0{digits}x}\n" for v in a)


def load_hex_dump(golden, folder, layout=None):
    """Dump of a hex folder: with manifest.json (export_hex layout) or without (files named by
    tensor_file; widths from the golden file)."""
    layout = expected_layout(golden) if layout is None else layout
    folder = os.fspath(folder)
    mpath = os.path.join(folder, MANIFEST)
    files = sorted(f for f in os.listdir(folder) if f.endswith(HEX_SUFFIX))
    dump = Dump(folder, "hex folder")
    entries = {}  # tensor name -> file
    if os.path.exists(mpath):
        dump.kind = "hex folder + manifest"
        try:
            with open(mpath) as fh:
                man = json.load(fh)
            listed = man["tensors"]
        except Exception as e:  # noqa: BLE001 - any unreadable manifest is one problem
            dump.problems.append(f"{mpath}: unreadable manifest ({type(e).__name__}: {e})")
            return dump
        dump.model_hash = man.get("model_hash")
        dump.n_vectors = man.get("n_vectors")
        for e in listed:
            t = e.get("tensor")
            if t not in layout:
                dump.problems.append(f"manifest entry {t!r}: the golden file holds no such tensor")
                continue
            ex = layout[t]
            if "width" in e and (int(e["width"]), bool(e.get("signed", ex.signed))) != (ex.width, ex.signed):
                dump.problems.append(
                    f"{t}: manifest declares {e['width']}-bit "
                    f"{'signed' if e.get('signed') else 'unsigned'} words; the golden file's are "
                    f"{ex.width}-bit {'signed' if ex.signed else 'unsigned'}"
                )
                continue
            if "shape" in e and tuple(e["shape"]) != ex.values.shape:
                dump.problems.append(f"{t}: manifest shape {tuple(e['shape'])}; expected {ex.values.shape}")
                continue
            entries[t] = e.get("file", tensor_file(t))
        unlisted = sorted(set(files) - set(entries.values()))
        for f in unlisted:
            dump.problems.append(f"{f}: hex file not listed in the manifest")
    else:
        for f in files:
            t = file_tensor(f)
            if t not in layout:
                dump.problems.append(
                    f"{f}: names no tensor of the golden file (expected names like "
                    f"{tensor_file(next(iter(layout)))})"
                )
                continue
            entries[t] = f
    for t, f in entries.items():
        ex = layout[t]
        p = os.path.join(folder, f)
        if not os.path.isfile(p):
            dump.problems.append(f"{f}: listed in the manifest but absent")
            continue
        with open(p, errors="replace") as fh:
            obs, prob = parse_words(fh.read(), ex.width, ex.signed, ex.values.size, f)
        if prob:
            dump.problems.append(prob)
        else:
            obs.values = obs.values.reshape(ex.values.shape)
            dump.tensors[t] = obs
    return dump


def load_h5_dump(golden, path, layout=None):
    """Dump of an HDF5 file in the golden schema (read without checksum or range checks)."""
    layout = expected_layout(golden) if layout is None else layout
    obs = read_golden(path, strict=False)
    dump = Dump(
        os.fspath(path),
        "hdf5",
        model_hash=str(obs.attrs["model_hash"]),
        n_vectors=int(obs.attrs["n_vectors"]),
    )
    onames = [n.name for n in obs.graph.nodes]
    for i, n in enumerate(obs.graph.nodes):
        key = layer_key(i, n.name)
        lay = obs.layers[n.name]
        dump.infos[key] = lay["info"]
        for k, a in lay["datasets"].items():
            dump.tensors[f"layers/{key}/{k}"] = Observed(np.asarray(a, np.int64))
    for v, vec in enumerate(obs.vectors):
        dump.tensors[vector_tensor(v)] = Observed(np.asarray(vec["input"], np.int64))
        for i, name in enumerate(onames):
            for s, a in vec["stages"][name].items():
                dump.tensors[vector_tensor(v, i, name, s)] = Observed(np.asarray(a, np.int64))
    for t in list(dump.tensors):
        if t not in layout:
            dump.problems.append(f"{t}: the golden file holds no such tensor")
            del dump.tensors[t]
    return dump


def load_dump(golden, path, layout=None):
    """Dump from an HDF5 file or a hex folder."""
    return (load_hex_dump if os.path.isdir(path) else load_h5_dump)(golden, path, layout)


def write_dump(folder, tensors, golden):
    """Write observed tensors ({tensor name: int array}) as a hex dump folder (no manifest),
    with the golden file's widths; values that do not fit raise ValueError. For test benches
    that collect values in Python (see nupes_sim.tb)."""
    layout = expected_layout(golden)
    os.makedirs(folder, exist_ok=True)
    for t, a in tensors.items():
        if t not in layout:
            raise ValueError(f"tensor {t!r}: the golden file holds no such tensor")
        ex = layout[t]
        a = np.asarray(a, np.int64)
        if a.shape != ex.values.shape:
            raise ValueError(f"tensor {t}: shape {a.shape}; expected {ex.values.shape}")
        tmp = os.path.join(folder, "." + tensor_file(t) + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(format_words(a, ex.width, ex.signed))
        os.replace(tmp, os.path.join(folder, tensor_file(t)))


def stage_tensors(golden, v, i):
    """Names of node i's stage tensors in vector v."""
    n = golden.graph.nodes[i]
    return [vector_tensor(v, i, n.name, s) for s in stage_names(n.layer)]


__all__ = [
    "tensor_file",
    "file_tensor",
    "vector_tensor",
    "expected_layout",
    "Expected",
    "Observed",
    "Dump",
    "parse_words",
    "format_words",
    "load_hex_dump",
    "load_h5_dump",
    "load_dump",
    "write_dump",
]
