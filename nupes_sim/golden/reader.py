"""Strict golden-file reader: validates everything (schema, exact set of groups/datasets/
attributes, SHA-256 of every dataset, model hash, code ranges, shapes) and raises
`GoldenFormatError` naming the problem and where; it never returns partial results."""

import datetime
import hashlib
import json
import os

import numpy as np

from ..h5check import DEFAULT_LIMITS, INT_DTYPES, H5StructureError, check_links, dataset_meta
from ..h5check import attr as h5attr
from ..serialize import ModelFormatError, canonical_json, model_hash, read_graph_h5, sha256_array
from .schema import (
    ROOT_ATTRS,
    SCHEMA,
    SCHEMA_VERSION,
    GoldenFormatError,
    input_range,
    layer_key,
    layer_params,
    stage_names,
    stage_range,
    stage_shapes,
    vector_key,
)


class Golden:
    """Validated content of a golden file.

    attrs: root attributes (seeds and layer_order decoded from JSON); graph: the model;
    layers: {name: {"info": dict, "datasets": {name: array}, "derived": [names]}} ("derived":
    datasets not in the file but derived from the stored model: an older version's
    requant_table); vectors: list of {"input": array, "stages": {layer name: {stage: array}}};
    source: the path.
    """

    def __init__(self, attrs, graph, layers, vectors, source):
        self.attrs, self.graph, self.layers, self.vectors, self.source = attrs, graph, layers, vectors, source

    @property
    def layer_order(self):
        return [n.name for n in self.graph.nodes]


def _fail(path, where, msg):
    raise GoldenFormatError(f"{path}: {where}: {msg}")


def _names(group):
    return set(group.keys())


def _expect_members(path, where, group, want):
    have = _names(group)
    if have != set(want):
        missing, extra = sorted(set(want) - have), sorted(have - set(want))
        _fail(
            path,
            where,
            f"missing {missing}"
            if missing and not extra
            else f"unexpected {extra}"
            if extra and not missing
            else f"missing {missing}, unexpected {extra}",
        )


# root attributes and their stored types (h5check.attr kinds)
ROOT_KINDS = {
    "schema": "str",
    "schema_version": "int",
    "package_version": "str",
    "created": "str",
    "model_hash": "str",
    "seeds": "str",
    "n_vectors": "int",
    "layer_order": "str",
    "input_shape": "int_vector",
    "backend": "str",
}
BACKENDS = ("numpy", "cpu", "cuda")
# A version-1 file is a version-2 file whose layers all existed in version 1 (stages a subset
# of acc_exact/acc/out, each of the output's shape): it is read as it is (docs/GOLDEN.md).
# Version 3 added each threshold layer's `requant_table` and stores input_shape without the
# batch axis; versions 1 and 2 have no requant_table and store input_shape as (1, ...).
READ_VERSIONS = (1, 2, SCHEMA_VERSION)
BATCHED_INPUT_SHAPE = (1, 2)  # versions whose input_shape attribute includes the batch axis 1
REQUANT_TABLE_SINCE = 3  # the first version whose threshold layers hold requant_table
V1_TYPES = {"Linear", "Conv2d", "Add", "MaxPool2d", "AvgPool2d", "Flatten"}
MAX_VECTORS = 10**7
_HEX = set("0123456789abcdef")


def _read_ds(path, where, group, name, strict, shape, dtype="<i8", want_attrs=("sha256",)):
    """One dataset: its declared dtype (exactly `dtype` when strict; any integer type in a
    dump) and shape (exactly `shape`) are checked before it is read."""
    import h5py

    w = f"{where}/{name}"
    _LOC["where"] = w
    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        _fail(path, w, "expected a dataset, found a group")
    if set(obj.attrs.keys()) != set(want_attrs):
        _fail(path, w, f"attributes {sorted(obj.attrs.keys())}; expected {sorted(want_attrs)}")
    try:
        dataset_meta(obj, w, {dtype} if strict else INT_DTYPES, shape=shape)
        sha = h5attr(obj, "sha256", "str", w)
    except H5StructureError as e:
        _fail(path, w, str(e).split(": ", 1)[-1])
    if strict and (len(sha) != 64 or set(sha) - _HEX):
        _fail(path, w, "sha256 attribute is not a SHA-256 hex digest")
    a = np.asarray(obj[()])
    if a.dtype == np.uint64 and a.size and int(a.max()) > 2**63 - 1:
        _fail(path, w, f"value {int(a.max())} does not fit int64")
    if strict and sha256_array(a) != sha:
        _fail(path, w, "SHA-256 checksum mismatch (data corrupted or edited)")
    return a


def _json_attr(path, f, name, kind):
    try:
        v = json.loads(h5attr(f, name, "str", "/"), parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        _fail(path, f"/ ({name})", f"not valid JSON ({type(e).__name__})")
    if not isinstance(v, kind):
        _fail(path, f"/ ({name})", f"must be a JSON {kind.__name__}")
    return v


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def read_golden(path, strict=True):
    """Read and validate a golden file; returns a Golden or raises GoldenFormatError.

    strict=False (used to read hardware dumps for `diff`) still requires the schema
    structure, but does not check dataset checksums, layer parameters or value ranges:
    a dump may legitimately hold wrong values; diff reports them.

    Files of schema versions 1, 2 and 3 are read and presented alike: attrs["input_shape"] is
    one vector's shape without the batch axis, and (strict only, the expected side) a
    version-1/2 file's threshold layers get the `requant_table` derived from the stored model;
    attrs["schema_version"] is the file's.
    """
    path = os.fspath(path)
    _LOC["where"] = "/"
    try:
        return _read(path, strict)
    except GoldenFormatError:
        raise
    except FileNotFoundError:
        raise GoldenFormatError(f"{path}: no such file") from None
    except Exception as e:  # HDF5/h5py/json errors of corrupt files: one clear error type
        raise GoldenFormatError(
            f"{path}: {_LOC['where']}: unreadable or corrupt golden file ({type(e).__name__}: {e})"
        ) from None


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


_LOC = {"where": "/"}  # last location visited by the reader, named in errors of corrupt files


def _read(path, strict):
    import h5py

    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    where = "/"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        _fail(path, where, f"not a readable HDF5 file ({e})")
    with f:
        try:
            check_links(f, "/", DEFAULT_LIMITS)  # no soft/external/extra hard links anywhere
            if "schema" not in f.attrs or h5attr(f, "schema", "str", "/") != SCHEMA:
                _fail(path, where, f"schema attribute is {_py(f.attrs.get('schema'))!r}; expected {SCHEMA!r}")
            version = h5attr(f, "schema_version", "int", "/") if "schema_version" in f.attrs else None
            if version not in READ_VERSIONS:
                _fail(
                    path,
                    where,
                    f"schema_version {_py(f.attrs.get('schema_version'))!r} is not supported "
                    f"(this reader reads versions {', '.join(map(str, READ_VERSIONS))}, an int64)",
                )
            names = set(f.attrs.keys())
            if names != set(ROOT_ATTRS):
                missing, extra = sorted(set(ROOT_ATTRS) - names), sorted(names - set(ROOT_ATTRS))
                _fail(path, where, f"root attributes: missing {missing}, unexpected {extra}")
            attrs = {k: h5attr(f, k, ROOT_KINDS.get(k, "str"), "/") for k in ROOT_ATTRS}
        except H5StructureError as e:
            _fail(path, where, str(e))
        if attrs["backend"] not in BACKENDS:
            _fail(path, "/ (backend)", f"{attrs['backend'][:40]!r} is not one of {BACKENDS}")
        if len(attrs["model_hash"]) != 64 or set(attrs["model_hash"]) - _HEX:
            _fail(path, "/ (model_hash)", "is not a SHA-256 hex digest")
        if not 1 <= attrs["n_vectors"] <= MAX_VECTORS:
            _fail(path, "/ (n_vectors)", f"{attrs['n_vectors']} is outside [1, {MAX_VECTORS}]")
        if not attrs["input_shape"] or any(d < 1 for d in attrs["input_shape"]):
            _fail(path, "/ (input_shape)", f"{attrs['input_shape']} must hold positive dimensions")
        if version in BATCHED_INPUT_SHAPE and (len(attrs["input_shape"]) < 2 or attrs["input_shape"][0] != 1):
            _fail(
                path,
                "/ (input_shape)",
                f"{list(attrs['input_shape'])}: a version-{version} file stores the batch axis 1 first "
                "(version 3 stores one vector's shape without it)",
            )
        _expect_members(path, where, f, ("model", "layers", "vectors"))
        where = _LOC["where"] = "/model"
        try:
            graph, _, _ = read_graph_h5(f["model"], f"{path}:/model")
        except ModelFormatError as e:
            _fail(path, where, str(e))
        new = sorted({type(n.layer).__name__ for n in graph.nodes} - V1_TYPES)
        if version == 1 and new:
            _fail(
                path,
                "/ (schema_version)",
                f"version 1 files hold no {', '.join(new)} layers (schema version 2 added them); "
                "the file is inconsistent",
            )
        mh = model_hash(graph)
        if str(attrs["model_hash"]) != mh:
            _fail(
                path,
                "/ (model_hash)",
                f"attribute {attrs['model_hash']!r} does not match the stored model ({mh})",
            )
        order = _json_attr(path, f, "layer_order", list)
        if order != [n.name for n in graph.nodes]:
            _fail(path, "/ (layer_order)", "does not match the stored model's layer order")
        seeds = _json_attr(path, f, "seeds", dict)
        n_vec = attrs["n_vectors"]
        # in_shape: the shape of every vector's datasets, (1, *one vector's shape)
        in_shape = tuple(attrs["input_shape"])
        if version not in BATCHED_INPUT_SHAPE:
            in_shape = (1,) + in_shape
        try:
            created = datetime.datetime.fromisoformat(str(attrs["created"]))
        except ValueError:
            _fail(path, "/ (created)", f"not an ISO time: {attrs['created']!r}")
        if created.utcoffset() != datetime.timedelta(0):
            _fail(path, "/ (created)", "must be UTC")
        # layers
        where = "/layers"
        lkeys = [layer_key(i, n.name) for i, n in enumerate(graph.nodes)]
        _expect_members(path, where, f["layers"], lkeys)
        layers = {}
        for key, n in zip(lkeys, graph.nodes):
            w = f"/layers/{key}"
            g = f["layers"][key]
            if set(g.attrs.keys()) != {"info"}:
                _fail(path, w, f"attributes {sorted(g.attrs.keys())}; expected ['info']")
            want_ds, want_info = layer_params(n.layer)
            want_info["inputs"] = list(n.inputs)
            derived, table_due = {}, version >= REQUANT_TABLE_SINCE
            if "requant_table" in want_ds:
                if not table_due:  # not in an older file: derived from the model below
                    derived["requant_table"] = want_ds.pop("requant_table")
                if ("requant_table" in g) != table_due:
                    _fail(
                        path,
                        f"{w}/requant_table",
                        f"missing: schema version {version} requires it for every threshold requantizer"
                        if table_due
                        else f"present in a version-{version} file "
                        f"(schema version {REQUANT_TABLE_SINCE} added it)",
                    )
            _expect_members(path, w, g, want_ds)
            try:
                info = json.loads(h5attr(g, "info", "str", w), parse_constant=_no_constant)
            except (H5StructureError, json.JSONDecodeError, RecursionError, ValueError) as e:
                _fail(path, w + " (info)", f"not a JSON string ({type(e).__name__})")
            dss = {
                k: _read_ds(path, w, g, k, strict, want_ds[k].shape, want_ds[k].dtype.newbyteorder("<").str)
                for k in sorted(want_ds)
            }
            if strict:
                if info != json.loads(canonical_json(want_info)):
                    _fail(path, w + " (info)", "layer description does not match the stored model")
                for k, v in want_ds.items():
                    if dss[k].shape != v.shape or not np.array_equal(dss[k], v):
                        _fail(path, f"{w}/{k}", "does not match the stored model's tables")
            if not strict:
                derived = {}
            dss.update(derived)  # the expected side is complete: an older file's requant_table
            layers[n.name] = {"info": info, "datasets": dss, "derived": sorted(derived)}
        # vectors
        where = "/vectors"
        vkeys = [vector_key(v) for v in range(n_vec)]
        _expect_members(path, where, f["vectors"], vkeys)
        irange = input_range(graph)
        try:  # every stage of a layer has the shape its layer declares for this input shape
            shapes = stage_shapes(graph, in_shape)
        except ValueError as e:
            _fail(
                path,
                "/ (input_shape)",
                f"{list(attrs['input_shape'])} (vectors {in_shape}) cannot be run by the stored model ({e})",
            )
        vectors = []
        for vk in vkeys:
            w = f"/vectors/{vk}"
            g = f["vectors"][vk]
            if len(g.attrs.keys()):
                _fail(path, w, f"unexpected attributes {sorted(g.attrs.keys())}")
            _expect_members(path, w, g, ["input"] + lkeys)
            x = _read_ds(path, w, g, "input", strict, in_shape)
            if x.shape != in_shape:
                _fail(path, f"{w}/input", f"shape {x.shape}; (1, *input_shape) is {in_shape}")
            if strict and irange and x.size and (x.min() < irange[0] or x.max() > irange[1]):
                bad = int(x.min()) if x.min() < irange[0] else int(x.max())
                _fail(
                    path,
                    f"{w}/input",
                    f"code {bad} outside the input format range [{irange[0]}, {irange[1]}]",
                )
            stages = {}
            for li, (key, n) in enumerate(zip(lkeys, graph.nodes)):
                lw = f"{w}/{key}"
                sg = g[key]
                if len(sg.attrs.keys()):
                    _fail(path, lw, f"unexpected attributes {sorted(sg.attrs.keys())}")
                names = stage_names(n.layer)
                _expect_members(path, lw, sg, names)
                st = {}
                for s in names:
                    want = shapes[n.name][s]
                    a = _read_ds(path, lw, sg, s, strict, want)
                    if a.shape != want:
                        _fail(
                            path,
                            f"{lw}/{s}",
                            f"shape {a.shape}; the model gives {want} for input shape {in_shape}",
                        )
                    r = stage_range(graph, li, s) if strict else None
                    if r and a.size and (a.min() < r[0] or a.max() > r[1]):
                        bad = int(a.min()) if a.min() < r[0] else int(a.max())
                        _fail(path, f"{lw}/{s}", f"value {bad} outside the declared range [{r[0]}, {r[1]}]")
                    st[s] = a.astype(np.int64)
                stages[n.name] = st
            vectors.append({"input": x.astype(np.int64), "stages": stages})
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    # input_shape: one vector's shape without the batch axis, whatever the file's version
    attrs["seeds"], attrs["layer_order"], attrs["input_shape"] = seeds, order, list(in_shape[1:])
    attrs["n_vectors"] = n_vec
    return Golden(attrs, graph, layers, vectors, path)


def file_digest(golden):
    """SHA-256 over every dataset checksum of a Golden (everything except `created`)."""
    h = hashlib.sha256()
    for name, lay in golden.layers.items():
        for k, a in sorted(lay["datasets"].items()):
            h.update(f"{name}/{k}:{sha256_array(a)}".encode())
    for v, vec in enumerate(golden.vectors):
        h.update(f"{v}/input:{sha256_array(vec['input'])}".encode())
        for name, st in vec["stages"].items():
            for s, a in st.items():
                h.update(f"{v}/{name}/{s}:{sha256_array(a)}".encode())
    return h.hexdigest()


__all__ = ["Golden", "read_golden", "file_digest"]
