"""Strict golden-file reader: validates everything (schema, exact set of groups/datasets/
attributes, SHA-256 of every dataset, model hash, code ranges, shapes) and raises
`GoldenFormatError` naming the problem and where; it never returns partial results."""
import datetime
import hashlib
import json
import os

import numpy as np

from ..serialize import ModelFormatError, canonical_json, model_hash, read_graph_h5, sha256_array
from .schema import (ROOT_ATTRS, SCHEMA, SCHEMA_VERSION, GoldenFormatError, input_range, layer_key, layer_params,
                     stage_names, stage_range, stage_shapes, vector_key)


class Golden:
    """Validated content of a golden file.

    attrs: root attributes (seeds and layer_order decoded from JSON); graph: the model;
    layers: {name: {"info": dict, "datasets": {name: array}}}; vectors: list of
    {"input": array, "stages": {layer name: {stage: array}}}; source: the path.
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
        _fail(path, where, f"missing {missing}" if missing and not extra else
              f"unexpected {extra}" if extra and not missing else f"missing {missing}, unexpected {extra}")


def _read_ds(path, where, group, name, strict, want_attrs=("sha256",)):
    import h5py

    w = f"{where}/{name}"
    _LOC["where"] = w
    obj = group[name]
    if not isinstance(obj, h5py.Dataset):
        _fail(path, w, "expected a dataset, found a group")
    if set(obj.attrs.keys()) != set(want_attrs):
        _fail(path, w, f"attributes {sorted(obj.attrs.keys())}; expected {sorted(want_attrs)}")
    if obj.dtype.kind not in "iu":
        _fail(path, w, f"dtype {obj.dtype} is not an integer type")
    a = obj[()]
    a = np.asarray(a)
    if strict and sha256_array(a) != obj.attrs["sha256"]:
        _fail(path, w, "SHA-256 checksum mismatch (data corrupted or edited)")
    return a


def read_golden(path, strict=True):
    """Read and validate a golden file; returns a Golden or raises GoldenFormatError.

    strict=False (used to read hardware dumps for `diff`) still requires the schema
    structure, but does not check dataset checksums, layer parameters or value ranges:
    a dump may legitimately hold wrong values; diff reports them.
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
        raise GoldenFormatError(f"{path}: {_LOC['where']}: unreadable or corrupt golden file "
                                f"({type(e).__name__}: {e})") from None


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
        attrs = {k: _py(f.attrs[k]) for k in f.attrs.keys()}
        if attrs.get("schema") != SCHEMA:
            _fail(path, where, f"schema attribute is {attrs.get('schema')!r}; expected {SCHEMA!r}")
        if "schema_version" not in attrs or int(attrs["schema_version"]) != SCHEMA_VERSION:
            _fail(path, where, f"schema_version {attrs.get('schema_version')!r} is not supported "
                               f"(this reader reads version {SCHEMA_VERSION})")
        if set(attrs) != set(ROOT_ATTRS):
            missing, extra = sorted(set(ROOT_ATTRS) - set(attrs)), sorted(set(attrs) - set(ROOT_ATTRS))
            _fail(path, where, f"root attributes: missing {missing}, unexpected {extra}")
        _expect_members(path, where, f, ("model", "layers", "vectors"))
        where = _LOC["where"] = "/model"
        try:
            graph, _, _ = read_graph_h5(f["model"], f"{path}:/model")
        except ModelFormatError as e:
            _fail(path, where, str(e))
        mh = model_hash(graph)
        if str(attrs["model_hash"]) != mh:
            _fail(path, "/ (model_hash)", f"attribute {attrs['model_hash']!r} does not match the stored model ({mh})")
        order = json.loads(str(attrs["layer_order"]))
        if order != [n.name for n in graph.nodes]:
            _fail(path, "/ (layer_order)", "does not match the stored model's layer order")
        seeds = json.loads(str(attrs["seeds"]))
        n_vec = int(attrs["n_vectors"])
        in_shape = tuple(int(v) for v in np.asarray(attrs["input_shape"]).reshape(-1))
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
            _expect_members(path, w, g, want_ds)
            info = json.loads(str(g.attrs["info"]))
            dss = {k: _read_ds(path, w, g, k, strict) for k in sorted(want_ds)}
            if strict:
                if info != json.loads(canonical_json(want_info)):
                    _fail(path, w + " (info)", "layer description does not match the stored model")
                for k, v in want_ds.items():
                    if dss[k].shape != v.shape or not np.array_equal(dss[k], v):
                        _fail(path, f"{w}/{k}", "does not match the stored model's tables")
            layers[n.name] = {"info": info, "datasets": dss}
        # vectors
        where = "/vectors"
        vkeys = [vector_key(v) for v in range(n_vec)]
        _expect_members(path, where, f["vectors"], vkeys)
        irange = input_range(graph)
        try:  # every stage of a layer has the shape its layer declares for this input shape
            shapes = stage_shapes(graph, in_shape)
        except ValueError as e:
            _fail(path, "/ (input_shape)", f"{in_shape} cannot be run by the stored model ({e})")
        vectors = []
        for vk in vkeys:
            w = f"/vectors/{vk}"
            g = f["vectors"][vk]
            if len(g.attrs.keys()):
                _fail(path, w, f"unexpected attributes {sorted(g.attrs.keys())}")
            _expect_members(path, w, g, ["input"] + lkeys)
            x = _read_ds(path, w, g, "input", strict)
            if x.shape != in_shape:
                _fail(path, f"{w}/input", f"shape {x.shape}; input_shape attribute says {in_shape}")
            if strict and irange and x.size and (x.min() < irange[0] or x.max() > irange[1]):
                bad = int(x.min()) if x.min() < irange[0] else int(x.max())
                _fail(path, f"{w}/input", f"code {bad} outside the input format range [{irange[0]}, {irange[1]}]")
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
                    a = _read_ds(path, lw, sg, s, strict)
                    if a.shape != shapes[n.name]:
                        _fail(path, f"{lw}/{s}", f"shape {a.shape}; the model gives {shapes[n.name]} for "
                                                 f"input shape {in_shape}")
                    r = stage_range(graph, li, s) if strict else None
                    if r and a.size and (a.min() < r[0] or a.max() > r[1]):
                        bad = int(a.min()) if a.min() < r[0] else int(a.max())
                        _fail(path, f"{lw}/{s}", f"value {bad} outside the declared range [{r[0]}, {r[1]}]")
                    st[s] = a.astype(np.int64)
                stages[n.name] = st
            vectors.append({"input": x.astype(np.int64), "stages": stages})
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    attrs["seeds"], attrs["layer_order"], attrs["input_shape"] = seeds, order, list(in_shape)
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
