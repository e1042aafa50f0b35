"""Golden vectors: a versioned HDF5 schema (docs/GOLDEN.md), a writer, a strict reader, hex export.

Writer: `write_golden(graph, inputs, path, ...)` runs every vector (one at a time, batch 1)
through a backend with intermediates and streams them to an atomically written HDF5 file.
Reader: `read_golden(path)` validates everything (schema, exact set of groups/datasets/
attributes, SHA-256 of every dataset, model hash, code ranges, shapes) and raises
`GoldenFormatError` naming the problem and where; it never returns partial results.
"""
import datetime
import hashlib
import json
import os

import numpy as np

from . import __version__
from .graph import INPUT
from .layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, MacLayer
from .rounding import NAMES as ROUNDING_NAMES
from .serialize import (ModelFormatError, atomic_h5, canonical_json, model_hash, read_graph_h5, sha256_array,
                        write_graph_h5)
from .tables import Thresholds

SCHEMA = "nupes-sim-golden"
SCHEMA_VERSION = 1
ROOT_ATTRS = ("schema", "schema_version", "package_version", "created", "model_hash", "seeds", "n_vectors",
              "layer_order", "input_shape", "backend")
STAGES = ("acc_exact", "acc", "out")
PACKING = ("little-endian bitstream: element i (C order of weight_codes) occupies bits "
           "[i*b, (i+1)*b) of the stream, stream bit j is bit (j mod 8) of byte j//8 "
           "(element 0 in the low bits of byte 0); each field is a b-bit two's complement "
           "value (signed codes) or b-bit unsigned value; unused high bits of the last byte are 0")


class GoldenFormatError(ValueError):
    """A golden (or dump) file that does not follow the schema; the message says what and where."""


# ---- packing -----------------------------------------------------------------------

def pack_codes(codes, bits):
    """Pack integer codes into bytes (see PACKING): b-bit two's complement fields, LSB first."""
    c = np.asarray(codes, np.int64).reshape(-1)
    fields = (c & ((1 << bits) - 1)).astype(np.uint64)
    bitmat = ((fields[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def unpack_codes(packed, bits, signed, n):
    """Inverse of pack_codes for n elements."""
    stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    v = (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)[None, :]).sum(axis=1)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


# ---- what hardware needs per layer ---------------------------------------------------

def _requant_params(rq):
    if rq is None:
        return {}, {"requant": "none"}
    if isinstance(rq, Thresholds):
        return ({"thresholds": rq.thr},
                {"requant": "thresholds", "out_qmin": int(rq.qmin), "out_qmax": int(rq.qmax),
                 "threshold_rule": "code = out_qmin + #{j : acc >= thresholds[row, j]}, row = channel if one "
                                   "row per channel else 0"})
    return ({"multiplier": rq.multiplier, "shift": rq.shift},
            {"requant": "rescale", "out_qmin": int(rq.qmin), "out_qmax": int(rq.qmax),
             "zero_point": int(rq.zero_point), "rescale_rounding": ROUNDING_NAMES[int(rq.rounding)],
             "rescale_rounding_id": int(rq.rounding), "mult_bits": int(rq.mult_bits),
             "rescale_rule": "code = clamp(round_shift(acc*multiplier[row], shift[row]) + zero_point, qmin, qmax)"})


def _range(r):
    return {"bits": int(r.bits), "signed": bool(r.signed), "qmin": int(r.qmin), "qmax": int(r.qmax),
            "kind": type(r).__name__}


def _acc(a):
    return {"acc_width": int(a.width), "overflow": a.overflow, "tile": int(a.tile)}


def _unit(u):
    """A unit as JSON: one float, or a list (one per output channel)."""
    u = np.asarray(u, dtype=np.float64)
    return float(u) if u.ndim == 0 else [float(v) for v in u]


def _table_info(prefix, t):
    return {f"{prefix}_frac_bits": int(t.frac_bits), f"{prefix}_unit": float(t.unit)}


def layer_params(layer):
    """(datasets {name: int array}, info JSON-able dict) of everything hardware needs."""
    ds, info = {}, {"type": type(layer).__name__, "name": layer.name}
    if isinstance(layer, MacLayer):
        ds["weight_codes"] = layer.w_codes.astype(np.int8)
        ds["weight_codes_packed"] = pack_codes(layer.w_codes, layer.w_range.bits)
        ds["weight_table_index"] = layer.w_table_index
        ds["bias"] = layer.bias
        info.update(datapath=layer.datapath, weight_range=_range(layer.w_range), input_range=_range(layer.x_range),
                    packing=PACKING, packed_bits=int(layer.w_range.bits), unit=_unit(layer.unit),
                    seed=int(layer.seed), tensor_id=int(layer.tensor_id),
                    bound_max=int(layer.bound.max(initial=0)), **_acc(layer.acc))
        if layer.datapath == "operand":
            ds["w_lut"], ds["x_lut"] = layer.w_table.lut, layer.x_table.lut
            info.update(_table_info("w_lut", layer.w_table), **_table_info("x_lut", layer.x_table),
                        w_lut_qmin=int(layer.w_table.qmin), x_lut_qmin=int(layer.x_table.qmin))
        else:
            ds["p_lut"] = layer.p_table.lut
            info.update(_table_info("p_lut", layer.p_table), p_lut_by_product=bool(layer.p_table.by_product),
                        p_lut_mx=int(layer.p_table.mx),
                        p_lut_channel_factor=None if layer.p_table.channel_factor is None
                        else _unit(layer.p_table.channel_factor))
        if isinstance(layer, Conv2d):
            info.update(stride=list(layer.stride), padding=list(layer.padding), dilation=list(layer.dilation),
                        groups=int(layer.groups), kernel=list(layer.w_codes.shape[2:]))
        rq_ds, rq_info = _requant_params(layer.requant)
    elif isinstance(layer, Add):
        ds["a_lut"], ds["b_lut"] = layer.a_table.lut, layer.b_table.lut
        info.update(a_range=_range(layer.a_range), b_range=_range(layer.b_range), unit=_unit(layer.unit),
                    seed=int(layer.seed), tensor_id=int(layer.tensor_id), **_acc(layer.acc),
                    **_table_info("a_lut", layer.a_table), **_table_info("b_lut", layer.b_table))
        rq_ds, rq_info = _requant_params(layer.requant)
    elif isinstance(layer, AvgPool2d):
        ds["x_lut"] = layer.x_table.lut
        info.update(input_range=_range(layer.x_range), kernel=None if layer.kernel is None else list(layer.kernel),
                    stride=None if layer.stride is None else list(layer.stride), window=int(layer.window),
                    unit=_unit(layer.unit), seed=int(layer.seed), tensor_id=int(layer.tensor_id), **_acc(layer.acc),
                    **_table_info("x_lut", layer.x_table))
        rq_ds, rq_info = _requant_params(layer.requant)
    elif isinstance(layer, MaxPool2d):
        info.update(kernel=list(layer.kernel), stride=list(layer.stride), padding=list(layer.padding))
        rq_ds, rq_info = {}, {}
    else:
        rq_ds, rq_info = {}, {}
    ds.update(rq_ds)
    info.update(rq_info)
    meta = getattr(layer, "meta", None)
    if meta is not None:
        info["formats"] = {k: v for k, v in meta.items() if k.endswith("_format")}  # exponents and scales
        info["relu"] = meta.get("relu")
    return {k: np.ascontiguousarray(v) for k, v in ds.items()}, info


def stage_names(layer):
    return STAGES if isinstance(layer, (Linear, Conv2d, Add, AvgPool2d)) else ("out",)


def layer_key(i, name):
    return f"{i:03d}_{name}"


def vector_key(v):
    return f"{v:06d}"


# ---- input code ranges ---------------------------------------------------------------

def input_range(graph):
    """(qmin, qmax) allowed for the graph's input codes (intersection over its direct readers,
    looking through MaxPool2d/Flatten), or None if no layer constrains it."""
    los, his = [], []

    def visit(src):
        for n in graph.nodes:
            for j, i in enumerate(n.inputs):
                if i != src:
                    continue
                L = n.layer
                r = None
                if isinstance(L, (Linear, Conv2d, AvgPool2d)):
                    r = L.x_range
                elif isinstance(L, Add):
                    r = L.a_range if j == 0 else L.b_range
                if r is not None:
                    los.append(r.qmin)
                    his.append(r.qmax)
                elif isinstance(L, (MaxPool2d, Flatten)):
                    visit(n.name)

    visit(INPUT)
    return (max(los), min(his)) if los else None


def random_inputs(graph, n, seed, input_shape):
    """n valid input code tensors (each of shape input_shape, no batch) drawn with `seed`."""
    r = input_range(graph) or (-128, 127)
    rng = np.random.default_rng(seed)
    return rng.integers(r[0], r[1] + 1, (n,) + tuple(input_shape), dtype=np.int64)


def stage_range(graph, i, stage):
    """(lo, hi) every value of stage `stage` of node i must lie in, or None (no constraint)."""
    layer = graph.nodes[i].layer
    if stage == "acc_exact":
        return None
    if stage == "acc":
        return None if layer.acc.overflow == "exact" else (layer.acc.lo, layer.acc.hi)
    return _out_code_range(graph, i)


# ---- writer ------------------------------------------------------------------------------

def _dataset(group, name, data, compression, chunk=True):
    data = np.ascontiguousarray(data)
    kw = {}
    if chunk and data.ndim and data.size:
        kw = dict(chunks=True, fletcher32=True, compression=compression)
    ds = group.create_dataset(name, data=data, track_times=False, **kw)
    ds.attrs["sha256"] = sha256_array(data)
    return ds


def write_golden(graph, inputs, path, backend="numpy", seeds=None, compression="gzip", progress=None):
    """Write golden vectors for `graph` to `path` (HDF5, atomic).

    inputs: an int array (N, ...) or an iterable of per-vector arrays (each without batch
    dim); every vector runs alone as a batch of 1 (stochastic rounding hashes flat indices,
    so batching would change results). seeds: JSON-able dict recorded in the `seeds` attribute
    (e.g. {"input_seed": 3}); the layers' own seeds are added. progress: a callable wrapping
    the iterable (e.g. tqdm) or None. Returns the number of vectors written.
    """
    seeds = dict(seeds or {})
    seeds["layer_seeds"] = {n.name: int(getattr(n.layer, "seed", 0)) for n in graph.nodes}
    arr_in = inputs if isinstance(inputs, np.ndarray) else None
    it = iter(arr_in) if arr_in is not None else iter(inputs)
    n_total = len(arr_in) if arr_in is not None else None
    if progress is not None:
        it = progress(it, total=n_total)
    mh = model_hash(graph)
    with atomic_h5(path) as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["package_version"] = __version__
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        f.attrs["model_hash"] = mh
        f.attrs["seeds"] = canonical_json(seeds)
        f.attrs["layer_order"] = canonical_json([n.name for n in graph.nodes])
        f.attrs["backend"] = backend
        write_graph_h5(f.create_group("model", track_order=True), graph, compression)
        lg = f.create_group("layers", track_order=True)
        for i, n in enumerate(graph.nodes):
            g = lg.create_group(layer_key(i, n.name), track_order=True)
            ds, info = layer_params(n.layer)
            info["inputs"] = list(n.inputs)
            g.attrs["info"] = canonical_json(info)
            for k in sorted(ds):
                _dataset(g, k, ds[k], compression)
        vg = f.create_group("vectors", track_order=True)
        count, shape = 0, None
        for x in it:
            x = np.asarray(x)
            if x.dtype.kind not in "iu":
                raise TypeError(f"input vector {count} must hold integer codes, got dtype {x.dtype}")
            x = x.astype(np.int64)[None]
            if shape is None:
                shape = x.shape
            elif x.shape != shape:
                raise ValueError(f"input vector {count} has shape {x.shape[1:]}; vector 0 has {shape[1:]}")
            r = graph.run(x, backend=backend, intermediates=True)
            g = vg.create_group(vector_key(count), track_order=True)
            _dataset(g, "input", x, compression)
            for i, n in enumerate(graph.nodes):
                sg = g.create_group(layer_key(i, n.name), track_order=True)
                st = r.stages[n.name]
                for s in stage_names(n.layer):
                    _dataset(sg, s, np.asarray(st[s], np.int64), compression)
            count += 1
        if count == 0:
            raise ValueError("no input vectors given")
        f.attrs["n_vectors"] = count
        f.attrs["input_shape"] = np.asarray(shape, np.int64)
    return count


# ---- strict reader --------------------------------------------------------------------

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
        vectors, shapes = [], {}
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
                    prev = shapes.setdefault((n.name, s), a.shape)
                    if a.shape != prev:
                        _fail(path, f"{lw}/{s}", f"shape {a.shape} differs from vector 0's {prev}")
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


# ---- hex export -------------------------------------------------------------------------

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
            if k == "weight_codes":
                out.append((f"layers/{key}/{k}", a, L.w_range.bits, bool(L.w_range.signed)))
            elif k == "weight_codes_packed":
                out.append((f"layers/{key}/{k}", a, 8, False))
            elif k == "bias":
                out.append((f"layers/{key}/{k}", a, L.acc.width, True))
            else:
                out.append((f"layers/{key}/{k}", a, _min_width(a), True))
    rng = input_range(g)
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
                    w, sg = L.acc.width, True
                else:
                    r = _out_code_range(g, i)
                    if r is None:
                        w, sg = 64, True
                    elif r[0] >= 0:
                        w, sg = max(int(r[1]).bit_length(), 1), False
                    else:
                        w, sg = _min_width(np.array(r)), True
                out.append((f"vectors/{vk}/{key}/{s}", a, w, sg))
    return out


def _out_code_range(graph, i):
    """Range of layer i's output values (requant codes, acc range, or pass-through)."""
    L = graph.nodes[i].layer
    rq = getattr(L, "requant", None)
    if rq is not None:
        return rq.qmin, rq.qmax
    if hasattr(L, "acc"):
        return None if L.acc.overflow == "exact" else (L.acc.lo, L.acc.hi)
    src = graph.nodes[i].inputs[0]
    if src == INPUT:
        return input_range(graph)
    j = [n.name for n in graph.nodes].index(src)
    return _out_code_range(graph, j)


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


__all__ = ["SCHEMA", "SCHEMA_VERSION", "GoldenFormatError", "Golden", "write_golden", "read_golden", "export_hex",
           "read_hex_dir", "pack_codes", "unpack_codes", "layer_params", "random_inputs", "input_range",
           "file_digest", "hex_tensors"]
