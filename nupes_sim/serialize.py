"""HDF5 model files: `save_model(graph, path)` / `load_model(path)` (the "quantized model"
file taken by `nupes-sim golden|audit|simulate`), and the graph group inside model and
golden files (`write_graph_h5` / `read_graph_h5`).

The graph description they store (`graph_to_dict`, `graph_from_dict`) and its hash
(`model_hash`) live in graph_dict.py; they are re-exported here, where callers import them.
"""

import hashlib
import json
import os
import sys

import numpy as np

from . import __version__
from .atomic import atomic_path
from .graph_dict import (
    GRAPH_VERSION,
    LAYER_CLASSES,
    MODEL_FORMAT,
    RANGE_CLASSES,
    STRUCT_CLASSES,
    ModelFormatError,
    array_digest_bytes,
    canonical_bytes,
    canonical_json,
    graph_from_dict,
    graph_to_dict,
    model_hash,
    sha256_array,
)
from .h5check import DEFAULT_LIMITS, INT_DTYPES, H5StructureError, check_links, dataset_meta
from .h5check import attr as h5attr
from .h5check import elements as h5elements
from .versions import MODEL_FORMAT_VERSION

MODEL_VERSION = MODEL_FORMAT_VERSION  # the model *file* layout (root attributes, groups)

__all__ = [  # graph_dict's names are re-exported: callers import them from here
    "GRAPH_VERSION",
    "LAYER_CLASSES",
    "MODEL_FORMAT",
    "MODEL_VERSION",
    "RANGE_CLASSES",
    "STRUCT_CLASSES",
    "ModelFormatError",
    "array_digest_bytes",
    "canonical_bytes",
    "canonical_json",
    "graph_from_dict",
    "graph_to_dict",
    "model_hash",
    "sha256_array",
    "write_graph_h5",
    "read_graph_h5",
    "atomic_h5",
    "save_model",
    "LoadedModel",
    "load_model",
    "ROOT_ATTRS",
    "OPTIONAL_ROOT_ATTRS",
    "READABLE_VERSIONS",
    "ARRAY_DTYPES",
]


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
