"""Lossless conversion of a Graph to/from named numpy arrays + JSON-able attributes.

`graph_to_dict(graph)` returns `(arrays, attrs)`: `arrays` maps keys such as
``"n0/w_codes"`` or ``"n2/requant/thr"`` to C-contiguous little-endian numpy arrays, and
`attrs` is a JSON-able dict describing every node (type, name, inputs) and every layer
field (codes ranges, tables, accumulator, rounding ids, geometry, seeds, tensor ids, units,
the optional host-only `meta`). `graph_from_dict(arrays, attrs)` rebuilds the layers
through their constructors (so every construction check runs again); runs of the rebuilt
graph are bit-identical because every integer table is stored verbatim (nothing is rebuilt
from real-valued formats). Floats (units) go through JSON, whose float repr round-trips
float64 exactly.

`model_hash(graph)` is the SHA-256 of the canonical serialization (see `canonical_bytes`).
`save_model(graph, path)` / `load_model(path)` store it in HDF5 (the "quantized model" file
taken by `nupes-sim golden|audit|simulate`).
"""
import dataclasses
import hashlib
import json
import os
import sys

import numpy as np

from . import __version__
from .atomic import atomic_path
from .formats import CodeRange, UniformRange
from .graph import Graph, Node
from .layers import LAYER_TYPES, Accumulator
from .tables import DecodeTable, ProductTable, Rescale, Thresholds

MODEL_FORMAT = "nupes-sim-model"
MODEL_VERSION = 1
LAYER_CLASSES = LAYER_TYPES  # class name -> layer class (the registry of nupes_sim.layers)
STRUCT_CLASSES = {c.__name__: c for c in (DecodeTable, ProductTable, Thresholds, Rescale, Accumulator)}
RANGE_CLASSES = {"CodeRange": CodeRange, "UniformRange": UniformRange}


class ModelFormatError(ValueError):
    """A model file or dict that is not a valid serialized graph."""


def _le(a):
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


def _encode(value, key, arrays):
    """JSON-able tag for one field value; arrays are put into `arrays` under `key`."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return {"t": "bool", "v": bool(value)}
    if isinstance(value, (int, np.integer)):
        return {"t": "int", "v": int(value)}
    if isinstance(value, (float, np.floating)):
        return {"t": "float", "v": float(value)}
    if isinstance(value, str):
        return {"t": "str", "v": value}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iub":
            if value.dtype.kind != "f":
                raise TypeError(f"{key}: cannot serialize array of dtype {value.dtype}")
        arrays[key] = _le(value)
        return {"t": "array", "key": key}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": [_encode(v, f"{key}/{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, CodeRange):
        return {"t": type(value).__name__, "bits": int(value.bits), "signed": bool(value.signed)}
    if type(value).__name__ in STRUCT_CLASSES:
        return {"t": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), f"{key}/{f.name}", arrays)
                           for f in dataclasses.fields(value) if f.init}}
    if isinstance(value, dict):  # meta: must already be JSON-able
        json.dumps(value)
        return {"t": "json", "v": value}
    raise TypeError(f"{key}: cannot serialize a {type(value).__name__}")


def _decode(tag, arrays, where):
    if tag is None:
        return None
    t = tag["t"]
    if t in ("bool", "int", "float", "str"):
        v = tag["v"]
        want = {"bool": bool, "int": int, "float": (int, float), "str": str}[t]
        if not isinstance(v, want) or (t == "int" and isinstance(v, bool)):
            raise ModelFormatError(f"{where}: expected a {t}, got {v!r}")
        return float(v) if t == "float" else v
    if t == "array":
        if tag["key"] not in arrays:
            raise ModelFormatError(f"{where}: array {tag['key']!r} is missing")
        return np.array(arrays[tag["key"]])
    if t == "tuple":
        return tuple(_decode(v, arrays, f"{where}[{i}]") for i, v in enumerate(tag["v"]))
    if t in RANGE_CLASSES:
        return RANGE_CLASSES[t](tag["bits"], tag["signed"])
    if t in STRUCT_CLASSES:
        kw = {k: _decode(v, arrays, f"{where}.{k}") for k, v in tag["fields"].items()}
        return STRUCT_CLASSES[t](**kw)
    if t == "json":
        return tag["v"]
    raise ModelFormatError(f"{where}: unknown value tag {t!r}")


def graph_to_dict(graph):
    """(arrays, attrs) describing every node and layer field of `graph` (see module doc)."""
    arrays, nodes = {}, []
    for i, n in enumerate(graph.nodes):
        layer = n.layer
        fields = {}
        for f in dataclasses.fields(layer):
            if not f.init:
                continue  # derived (bound): recomputed by the constructor
            fields[f.name] = _encode(getattr(layer, f.name), f"n{i}/{f.name}", arrays)
        nodes.append({"type": type(layer).__name__, "name": layer.name, "inputs": list(n.inputs), "fields": fields})
    attrs = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "nodes": nodes}
    return arrays, attrs


def graph_from_dict(arrays, attrs):
    """Inverse of graph_to_dict; raises ModelFormatError naming what is wrong."""
    try:
        if attrs.get("format") != MODEL_FORMAT or attrs.get("version") != MODEL_VERSION:
            raise ModelFormatError(f"not a {MODEL_FORMAT} v{MODEL_VERSION} description "
                                   f"(format={attrs.get('format')!r}, version={attrs.get('version')!r})")
        used = set()
        nodes = []
        for i, nd in enumerate(attrs["nodes"]):
            cls = LAYER_CLASSES.get(nd["type"])
            if cls is None:
                raise ModelFormatError(f"node {i}: unknown layer type {nd['type']!r}")
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            extra = set(nd["fields"]) - known
            if extra:
                raise ModelFormatError(f"node {i} ({nd['name']}): unknown fields {sorted(extra)}")
            kw = {k: _decode(v, arrays, f"node {i} ({nd['name']}).{k}") for k, v in nd["fields"].items()}
            _collect_keys(nd["fields"], used)
            layer = cls(**kw)
            if layer.name != nd["name"]:
                raise ModelFormatError(f"node {i}: name {nd['name']!r} does not match its layer {layer.name!r}")
            nodes.append(Node(layer, tuple(nd["inputs"])))
        extra = set(arrays) - used
        if extra:
            raise ModelFormatError(f"arrays not referenced by any layer: {sorted(extra)[:5]}")
        return Graph(nodes)
    except ModelFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ModelFormatError(f"invalid model description: {type(e).__name__}: {e}") from None


def _collect_keys(obj, out):
    if isinstance(obj, dict):
        if obj.get("t") == "array":
            out.add(obj["key"])
        elif obj.get("t") != "json":
            for v in obj.values():
                _collect_keys(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_keys(v, out)


def canonical_json(attrs):
    return json.dumps(attrs, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def array_digest_bytes(a):
    """Bytes hashed for one array: dtype (little-endian str), shape, raw C-order data."""
    a = _le(a)
    return f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()


def canonical_bytes(arrays, attrs):
    """The canonical serialization: canonical JSON of attrs, then every array in sorted key
    order as key, dtype, shape and little-endian C-order bytes, each part length-prefixed."""
    parts = [canonical_json(attrs).encode()]
    for k in sorted(arrays):
        parts.append(k.encode())
        parts.append(array_digest_bytes(arrays[k]))
    return b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def model_hash(graph):
    """SHA-256 (hex) of the canonical serialization of `graph` (layer tables, settings, meta)."""
    arrays, attrs = graph_to_dict(graph)
    return hashlib.sha256(canonical_bytes(arrays, attrs)).hexdigest()


def sha256_array(a):
    return hashlib.sha256(array_digest_bytes(a)).hexdigest()


# ---- HDF5 model files ---------------------------------------------------------------

def write_graph_h5(group, graph, compression=None):
    """Store graph under an h5py group: attribute-free JSON dataset 'graph_json' + 'arrays/<key>'."""
    import h5py

    arrays, attrs = graph_to_dict(graph)
    js = canonical_json(attrs)
    group.create_dataset("graph_json", data=np.frombuffer(js.encode(), np.uint8), track_times=False)
    group["graph_json"].attrs["sha256"] = hashlib.sha256(js.encode()).hexdigest()
    ag = group.create_group("arrays", track_order=True)
    for k in sorted(arrays):
        a = arrays[k]
        ds = ag.create_dataset(k.replace("/", "."), data=a, track_times=False,
                               compression=compression if a.size > 1024 else None)
        ds.attrs["sha256"] = sha256_array(a)
    return arrays, attrs


def read_graph_h5(group, where="model"):
    """(graph, arrays, attrs) from a group written by write_graph_h5, checksums verified."""
    if set(group.keys()) != {"graph_json", "arrays"} or len(group.attrs.keys()):
        raise ModelFormatError(f"{where}: expected exactly 'graph_json' and 'arrays' and no attributes, "
                               f"found {sorted(group.keys())} with attributes {sorted(group.attrs.keys())}")
    for k, ds in [("graph_json", group["graph_json"])] + [(f"arrays/{k}", v) for k, v in group["arrays"].items()]:
        if set(ds.attrs.keys()) != {"sha256"}:
            raise ModelFormatError(f"{where}/{k}: attributes {sorted(ds.attrs.keys())}; expected ['sha256']")
    if len(group["arrays"].attrs.keys()):
        raise ModelFormatError(f"{where}/arrays: unexpected attributes {sorted(group['arrays'].attrs.keys())}")
    raw = bytes(np.asarray(group["graph_json"][()], np.uint8).tobytes())
    if hashlib.sha256(raw).hexdigest() != group["graph_json"].attrs.get("sha256"):
        raise ModelFormatError(f"{where}/graph_json: checksum mismatch")
    attrs = json.loads(raw.decode("utf-8"))
    arrays = {}
    for k, ds in group["arrays"].items():
        a = ds[()]
        if sha256_array(a) != ds.attrs.get("sha256"):
            raise ModelFormatError(f"{where}/arrays/{k}: checksum mismatch")
        arrays[k.replace(".", "/")] = a
    return graph_from_dict(arrays, attrs), arrays, attrs


def atomic_h5(path):
    """Context manager: an h5py File on a temporary file next to `path` (nupes_sim.atomic:
    fsynced and renamed onto `path` on success, removed on failure, cleaned up by the next
    write if the process was killed)."""
    return _AtomicH5(path)


class _AtomicH5:
    def __init__(self, path):
        self.path = os.fspath(path)

    def __enter__(self):
        import h5py

        self._cm = atomic_path(self.path)
        tmp = self._cm.__enter__()
        try:
            # libver v110: object headers, B-trees and superblock carry checksums, so corrupt
            # metadata is detected by HDF5 rather than misread.
            self.f = h5py.File(tmp, "w", libver=("v110", "v110"), track_order=True)
        except BaseException:
            self._cm.__exit__(*sys.exc_info())
            raise
        return self.f

    def __exit__(self, et, ev, tb):
        try:
            if et is None:
                self.f.flush()
            self.f.close()
        except BaseException:
            if et is None:
                et, ev, tb = sys.exc_info()
                self._cm.__exit__(et, ev, tb)
                raise
        return self._cm.__exit__(et, ev, tb)


def save_model(graph, path, input_shape=None, loss_history=None, compression="gzip"):
    """Write a quantized model file (HDF5, atomic).

    input_shape: optional per-vector input shape without batch (e.g. (3, 8, 8)), used to draw
    random inputs. loss_history: optional {layer name: 1-D float array} (e.g. the per-layer
    reconstruction loss of the quantizer), shown by the audit.
    """
    with atomic_h5(path) as f:
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["version"] = MODEL_VERSION
        f.attrs["package_version"] = __version__
        f.attrs["model_hash"] = model_hash(graph)
        if input_shape is not None:
            f.attrs["input_shape"] = np.asarray(input_shape, np.int64)
        write_graph_h5(f.create_group("model", track_order=True), graph, compression)
        if loss_history:
            h = f.create_group("loss_history", track_order=True)
            names = {n.name for n in graph.nodes}
            for i, (name, hist) in enumerate(loss_history.items()):
                if name not in names:
                    raise ValueError(f"loss_history names {name!r}, which is not a layer of the graph")
                ds = h.create_dataset(f"{i:04d}", data=np.asarray(hist, np.float64).reshape(-1), track_times=False)
                ds.attrs["layer"] = name


class LoadedModel:
    """A model file's content: graph, input_shape (or None), loss_history {layer: array}."""

    def __init__(self, graph, input_shape, loss_history, model_hash):
        self.graph, self.input_shape, self.loss_history, self.model_hash = graph, input_shape, loss_history, model_hash


def load_model(path, full=False):
    """Read a model file written by save_model. Returns the Graph (or a LoadedModel when
    full=True). Raises ModelFormatError (a ValueError) for anything that is not a valid file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != MODEL_FORMAT:
                raise ModelFormatError(f"{path}: not a nupes-sim model file (format attribute "
                                       f"{f.attrs.get('format')!r})")
            if int(f.attrs.get("version", -1)) != MODEL_VERSION:
                raise ModelFormatError(f"{path}: model file version {f.attrs.get('version')!r}; "
                                       f"this reader supports {MODEL_VERSION}")
            graph, _, _ = read_graph_h5(f["model"], f"{path}:/model")
            h = model_hash(graph)
            if h != f.attrs.get("model_hash"):
                raise ModelFormatError(f"{path}: model_hash attribute does not match the stored graph")
            shape = tuple(int(v) for v in f.attrs["input_shape"]) if "input_shape" in f.attrs else None
            hist = {}
            if "loss_history" in f:
                for ds in f["loss_history"].values():
                    hist[str(ds.attrs["layer"])] = np.asarray(ds[()], np.float64)
    except ModelFormatError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:  # h5py/HDF5 errors on corrupt or foreign files
        raise ModelFormatError(f"{path}: cannot read model file: {type(e).__name__}: {e}") from None
    return LoadedModel(graph, shape, hist, h) if full else graph


__all__ = ["graph_to_dict", "graph_from_dict", "model_hash", "save_model", "load_model", "LoadedModel",
           "ModelFormatError", "canonical_bytes", "sha256_array", "atomic_h5"]
