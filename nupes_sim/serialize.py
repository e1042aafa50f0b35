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
from .h5check import DEFAULT_LIMITS, INT_DTYPES, H5StructureError, check_links, dataset_meta
from .h5check import attr as h5attr
from .h5check import elements as h5elements
from .layers import LAYER_TYPES, Accumulator
from .tables import DecodeTable, ProductTable, Rescale, Thresholds
from .versions import MODEL_FORMAT_VERSION

MODEL_FORMAT = "nupes-sim-model"
MODEL_VERSION = MODEL_FORMAT_VERSION  # the model *file* layout (root attributes, groups)
# The graph description inside it (graph_to_dict, hashed by model_hash): unchanged since
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


# ---- HDF5 model files ---------------------------------------------------------------


def write_graph_h5(group, graph, compression=None):
    """Store graph under an h5py group: attribute-free JSON dataset 'graph_json' + 'arrays/<key>'."""

    arrays, attrs = graph_to_dict(graph)
    js = canonical_json(attrs)
    group.create_dataset("graph_json", data=np.frombuffer(js.encode(), np.uint8), track_times=False)
    group["graph_json"].attrs["sha256"] = hashlib.sha256(js.encode()).hexdigest()
    ag = group.create_group("arrays", track_order=True)
    for k in sorted(arrays):
        a = arrays[k]
        ds = ag.create_dataset(
            k.replace("/", "."), data=a, track_times=False, compression=compression if a.size > 1024 else None
        )
        ds.attrs["sha256"] = sha256_array(a)
    return arrays, attrs


ARRAY_DTYPES = INT_DTYPES | {"|b1", "<f8"}
_SHA = set("0123456789abcdef")


def _sha_attr(ds, where):
    v = h5attr(ds, "sha256", "str", where)
    if len(v) != 64 or set(v) - _SHA:
        raise ModelFormatError(f"{where}: sha256 attribute {v[:80]!r} is not a SHA-256 hex digest")
    return v


def read_graph_h5(group, where="model", limits=DEFAULT_LIMITS):
    """(graph, arrays, attrs) from a group written by write_graph_h5. Structure, attribute
    types, dtypes and declared sizes are checked before any data is read (h5check); then
    checksums; then every layer is rebuilt through its constructor (all layer checks)."""
    import h5py

    try:
        check_links(group, where, limits)
        if set(group.keys()) != {"graph_json", "arrays"} or len(group.attrs.keys()):
            raise ModelFormatError(
                f"{where}: expected exactly 'graph_json' and 'arrays' and no attributes, "
                f"found {sorted(group.keys())} with attributes {sorted(group.attrs.keys())}"
            )
        gj, ag = group["graph_json"], group["arrays"]
        if not isinstance(gj, h5py.Dataset) or not isinstance(ag, h5py.Group):
            raise ModelFormatError(f"{where}: graph_json must be a dataset and arrays a group")
        if len(ag.attrs.keys()):
            raise ModelFormatError(f"{where}/arrays: unexpected attributes {sorted(ag.attrs.keys())}")
        members = [("graph_json", gj)] + [(f"arrays/{k}", v) for k, v in ag.items()]
        total = 0
        for k, ds in members:
            w = f"{where}/{k}"
            if not isinstance(ds, h5py.Dataset):
                raise ModelFormatError(f"{w}: expected a dataset, found a group")
            if set(ds.attrs.keys()) != {"sha256"}:
                raise ModelFormatError(f"{w}: attributes {sorted(ds.attrs.keys())}; expected ['sha256']")
            _sha_attr(ds, w)
            if k == "graph_json":
                _, shp = dataset_meta(ds, w, {"|u1"}, ndim=1, limits=limits)
            else:
                _, shp = dataset_meta(ds, w, ARRAY_DTYPES, limits=limits)
            total += h5elements(shp)
            if total > limits.max_total_elements:
                raise ModelFormatError(
                    f"{where}: arrays declare more than {limits.max_total_elements} elements"
                )
        raw = bytes(np.asarray(gj[()], np.uint8).tobytes())
        if hashlib.sha256(raw).hexdigest() != gj.attrs["sha256"]:
            raise ModelFormatError(f"{where}/graph_json: checksum mismatch")
        try:
            attrs = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ModelFormatError(f"{where}/graph_json: not valid JSON ({type(e).__name__})") from None
        arrays = {}
        for k, ds in ag.items():
            a = ds[()]
            if sha256_array(a) != ds.attrs["sha256"]:
                raise ModelFormatError(f"{where}/arrays/{k}: checksum mismatch")
            arrays[k.replace(".", "/")] = a
    except H5StructureError as e:
        raise ModelFormatError(str(e)) from None
    graph = graph_from_dict(arrays, attrs)
    # the stored description must be exactly what the rebuilt graph serializes to: same
    # JSON, same arrays with the same dtypes (byte order included) and shapes
    arrays2, attrs2 = graph_to_dict(graph)
    if canonical_json(attrs2) != canonical_json(attrs):
        raise ModelFormatError(f"{where}/graph_json: not the canonical description of the layers it builds")
    for k, a in arrays.items():
        b = arrays2.get(k)
        if b is None or a.dtype.str != b.dtype.str or a.shape != b.shape or not np.array_equal(a, b):
            raise ModelFormatError(
                f"{where}/arrays/{k.replace('/', '.')}: dtype {a.dtype.str} shape {a.shape} is not "
                f"what the layer stores ({None if b is None else b.dtype.str} {None if b is None else b.shape})"
            )
    return graph, arrays, attrs


def _no_constant(name):
    raise ModelFormatError(f"graph_json holds {name}, which is not a JSON number")


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


def save_model(
    graph, path, input_shape=None, loss_history=None, compression="gzip", input_format=None, output_unit=None
):
    """Write a quantized model file (HDF5, atomic).

    input_shape: optional per-vector input shape without batch (e.g. (3, 8, 8)), the same
    convention as a golden file's `input_shape`; used to draw random inputs. loss_history:
    optional {layer name: 1-D float array} (e.g. the per-layer reconstruction loss of the
    quantizer), shown by the audit. input_format: optional format (PowerFormat/UniformFormat,
    per tensor) that encodes real inputs into the graph's input codes; output_unit: optional
    real value of one output LSB (float, or one per channel of axis 1) or the output codes'
    format (nupes_sim.float_io; `--float-input` and decoded outputs on the command line).
    """
    from .float_io import input_format_json, output_unit_json

    fmt_json = None if input_format is None else input_format_json(input_format)
    unit_json = None if output_unit is None else output_unit_json(output_unit)
    with atomic_h5(path) as f:
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["version"] = MODEL_VERSION
        f.attrs["package_version"] = __version__
        f.attrs["model_hash"] = model_hash(graph)
        if input_shape is not None:
            f.attrs["input_shape"] = np.asarray(input_shape, np.int64)
        if fmt_json is not None:
            f.attrs["input_format"] = fmt_json
        if unit_json is not None:
            f.attrs["output_unit"] = unit_json
        write_graph_h5(f.create_group("model", track_order=True), graph, compression)
        if loss_history:
            h = f.create_group("loss_history", track_order=True)
            names = {n.name for n in graph.nodes}
            for i, (name, hist) in enumerate(loss_history.items()):
                if name not in names:
                    raise ValueError(f"loss_history names {name!r}, which is not a layer of the graph")
                vals = np.asarray(hist, np.float64).reshape(-1)
                if not np.isfinite(vals).all():
                    raise ValueError(f"loss_history[{name!r}] holds non-finite values")
                ds = h.create_dataset(f"{i:04d}", data=vals, track_times=False)
                ds.attrs["layer"] = name


class LoadedModel:
    """A model file's content: graph, input_shape (or None), loss_history {layer: array},
    input_format and output_unit (or None; see nupes_sim.float_io), the file's version."""

    def __init__(
        self, graph, input_shape, loss_history, model_hash, input_format=None, output_unit=None, version=None
    ):
        self.graph, self.input_shape, self.loss_history, self.model_hash = (
            graph,
            input_shape,
            loss_history,
            model_hash,
        )
        self.input_format, self.output_unit, self.version = input_format, output_unit, version


ROOT_ATTRS = {
    "format": "str",
    "version": "int",
    "package_version": "str",
    "model_hash": "str",
    "input_shape": "int_vector",
    "input_format": "str",
    "output_unit": "str",
}
OPTIONAL_ROOT_ATTRS = {"input_shape", "input_format", "output_unit"}
# Versions this reader reads: 1 (before input_format/output_unit) and the current one.
READABLE_VERSIONS = (1, 2, MODEL_VERSION)
V2_ATTRS = {"input_format", "output_unit"}


def load_model(path, full=False, limits=DEFAULT_LIMITS):
    """Read a model file written by save_model. Returns the Graph (or a LoadedModel when
    full=True). Raises ModelFormatError (a ValueError) for anything that is not a valid file:
    structure and types are checked before data is read (h5check), every layer is rebuilt
    through its constructor."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            w = f"{path}:/"
            check_links(f, w, limits)
            if "format" not in f.attrs or h5attr(f, "format", "str", w) != MODEL_FORMAT:
                raise ModelFormatError(
                    f"{path}: not a nupes-sim model file (format attribute {f.attrs.get('format')!r})"
                )
            version = h5attr(f, "version", "int", w)
            if version not in READABLE_VERSIONS:
                raise ModelFormatError(
                    f"{path}: model file version {version}; "
                    f"this reader supports {', '.join(map(str, READABLE_VERSIONS))}"
                )
            names = set(f.attrs.keys())
            missing = set(ROOT_ATTRS) - OPTIONAL_ROOT_ATTRS - names
            extra = names - set(ROOT_ATTRS) | (names & V2_ATTRS if version == 1 else set())
            if missing or extra:
                raise ModelFormatError(
                    f"{path}: root attributes: missing {sorted(missing)}, unexpected {sorted(extra)}"
                )
            vals = {k: h5attr(f, k, kind, w) for k, kind in ROOT_ATTRS.items() if k in names}
            if set(f.keys()) - {"model", "loss_history"} or "model" not in f:
                raise ModelFormatError(
                    f"{path}: expected groups 'model' (and optionally 'loss_history'), "
                    f"found {sorted(f.keys())}"
                )
            graph, _, _ = read_graph_h5(f["model"], f"{path}:/model", limits)
            h = model_hash(graph)
            if h != vals["model_hash"]:
                raise ModelFormatError(f"{path}: model_hash attribute does not match the stored graph")
            shape = vals.get("input_shape")
            if shape is not None and (not shape or any(s < 1 for s in shape)):
                raise ModelFormatError(f"{path}: input_shape {shape} must hold positive dimensions")
            hist = _read_loss_history(f, path, graph, limits) if "loss_history" in f else {}
            from .float_io import FloatIOError, parse_input_format, parse_output_unit

            try:
                in_fmt = parse_input_format(vals["input_format"], path) if "input_format" in vals else None
                out_unit = parse_output_unit(vals["output_unit"], path) if "output_unit" in vals else None
            except FloatIOError as e:
                raise ModelFormatError(str(e)) from None
    except ModelFormatError:
        raise
    except H5StructureError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # h5py/HDF5 errors on corrupt or foreign files
        raise ModelFormatError(f"{path}: cannot read model file: {type(e).__name__}: {e}") from None
    return LoadedModel(graph, shape, hist, h, in_fmt, out_unit, version) if full else graph


def _read_loss_history(f, path, graph, limits):
    import h5py

    g = f["loss_history"]
    w = f"{path}:/loss_history"
    if not isinstance(g, h5py.Group) or len(g.attrs.keys()):
        raise ModelFormatError(f"{w}: must be a group without attributes")
    names = {n.name for n in graph.nodes}
    hist = {}
    for i, (k, ds) in enumerate(g.items()):
        dw = f"{w}/{k}"
        if k != f"{i:04d}" or not isinstance(ds, h5py.Dataset) or set(ds.attrs.keys()) != {"layer"}:
            raise ModelFormatError(f"{dw}: expected dataset {i:04d} with one attribute 'layer'")
        dataset_meta(ds, dw, {"<f8"}, ndim=1, limits=limits)
        layer = h5attr(ds, "layer", "str", dw)
        if layer not in names or layer in hist:
            raise ModelFormatError(f"{dw}: layer {layer[:80]!r} is not a layer of the graph (or repeated)")
        a = np.asarray(ds[()], np.float64)
        if not np.isfinite(a).all():
            raise ModelFormatError(f"{dw}: loss values must be finite")
        hist[layer] = a
    return hist


__all__ = [
    "graph_to_dict",
    "graph_from_dict",
    "model_hash",
    "save_model",
    "load_model",
    "LoadedModel",
    "ModelFormatError",
    "canonical_bytes",
    "sha256_array",
    "atomic_h5",
]
