"""The graph description: lossless conversion of a Graph to/from named numpy arrays +
JSON-able attributes, and its hash.

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
The HDF5 model files that store it are serialize.py's job.
"""

import dataclasses
import hashlib
import json

import numpy as np

from .formats import CodeRange, UniformRange
from .graph import Graph, Node
from .layers import LAYER_TYPES, Accumulator
from .tables import DecodeTable, ProductTable, Rescale, Thresholds

MODEL_FORMAT = "nupes-sim-model"
# The graph description inside a model file (graph_to_dict, hashed by model_hash): unchanged since
# model format 1 except for the optional `full_range` key of a code range (model format 3,
# written only when true), so the same graph keeps its model_hash across file versions.
GRAPH_VERSION = 1
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
        tag = {"t": type(value).__name__, "bits": int(value.bits), "signed": bool(value.signed)}
        if value.full_range:  # written only when set: graphs without it keep their model_hash
            tag["full_range"] = True
        return tag
    if type(value).__name__ in STRUCT_CLASSES:
        return {
            "t": type(value).__name__,
            "fields": {
                f.name: _encode(getattr(value, f.name), f"{key}/{f.name}", arrays)
                for f in dataclasses.fields(value)
                if f.init
            },
        }
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
        extra = set(tag) - {"t", "bits", "signed", "full_range"}
        if extra:
            raise ModelFormatError(f"{where}: unknown code range keys {sorted(extra)}")
        if "full_range" in tag and tag["full_range"] is not True:
            raise ModelFormatError(
                f"{where}: code range full_range={tag['full_range']!r}; allowed: true, or the key absent"
            )
        try:
            return RANGE_CLASSES[t](tag["bits"], tag["signed"], "full_range" in tag)
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"{where}: {e}") from None
    if t in STRUCT_CLASSES:
        kw = {k: _decode(v, arrays, f"{where}.{k}") for k, v in tag["fields"].items()}
        try:  # the table's own constructor validates it (tables.py); say which node holds it
            return STRUCT_CLASSES[t](**kw)
        except (TypeError, ValueError) as e:
            raise ModelFormatError(f"{where}: {e}") from None
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
        nodes.append(
            {"type": type(layer).__name__, "name": layer.name, "inputs": list(n.inputs), "fields": fields}
        )
    attrs = {"format": MODEL_FORMAT, "version": GRAPH_VERSION, "nodes": nodes}
    return arrays, attrs


def graph_from_dict(arrays, attrs):
    """Inverse of graph_to_dict; raises ModelFormatError naming what is wrong."""
    try:
        if attrs.get("format") != MODEL_FORMAT or attrs.get("version") != GRAPH_VERSION:
            raise ModelFormatError(
                f"not a {MODEL_FORMAT} graph description v{GRAPH_VERSION} "
                f"(format={attrs.get('format')!r}, version={attrs.get('version')!r})"
            )
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
                raise ModelFormatError(
                    f"node {i}: name {nd['name']!r} does not match its layer {layer.name!r}"
                )
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
