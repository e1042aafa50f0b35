"""Structural checks of untrusted HDF5 files, done before any data is read.

Used by the model loader (serialize) and the golden reader. Everything is checked from
metadata only: links (only plain hard links to objects linked exactly once: soft, external
and extra hard links are refused, so a file can neither read another file nor alias one of
its own datasets), object counts, attribute types (an integer is a little-endian int64
scalar, a string is a string, never a number or a bytes blob), dataset dtypes and byte
order, declared shapes against what the schema expects and against a size limit (a huge
chunked dataset with nothing written is refused without reading it), and filters (only
gzip, shuffle and fletcher32). `Limits` bounds the work: every check is linear in the
number of objects, which is itself bounded.
"""

from dataclasses import dataclass

import numpy as np


class H5StructureError(ValueError):
    """An HDF5 object that the schema does not allow (the message names it)."""


@dataclass(frozen=True)
class Limits:
    max_objects: int = 1_000_000  # groups + datasets in one file
    max_elements: int = 1 << 31  # elements of one dataset
    max_total_elements: int = 1 << 33  # elements of all datasets together
    max_attr_bytes: int = 64 << 20  # one attribute (JSON descriptions)
    # chunks of one dataset: reading costs time per chunk even when nothing is stored (a
    # 1.4 KB file declaring 2^20 one-element chunks took 16 s); the writers' gzip chunks
    # (h5py's guess, up to 1 MiB) stay far below this up to 64 GiB per dataset
    max_chunks: int = 1 << 16


DEFAULT_LIMITS = Limits()
ALLOWED_FILTERS = {"gzip", "shuffle", "fletcher32"}
INT_DTYPES = {np.dtype(t).newbyteorder("<").str for t in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")}


def _fail(where, msg):
    raise H5StructureError(f"{where}: {msg}")


def check_links(root, where, limits=DEFAULT_LIMITS):
    """Walk every link under `root` (an h5py Group) without following anything but plain
    hard links; refuse soft/external/user links, objects linked more than once, named
    datatypes and more than limits.max_objects objects. Returns the object count."""
    import h5py

    count = 0
    stack = [(root, where.rstrip("/") or "/")]
    while stack:
        g, w = stack.pop()
        for name in g.keys():
            p = f"{w.rstrip('/')}/{name}"
            link = g.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                _fail(
                    p,
                    f"is a {type(link).__name__ if link is not None else 'user-defined link'}; "
                    f"links are not allowed (a file must hold its own data)",
                )
            obj = g.get(name)
            if isinstance(obj, h5py.Datatype) or not isinstance(obj, (h5py.Group, h5py.Dataset)):
                _fail(p, f"is a {type(obj).__name__}; only groups and datasets are allowed")
            if h5py.h5o.get_info(obj.id).rc != 1:
                _fail(p, "is linked more than once (hard link); every object must have exactly one name")
            count += 1
            if count > limits.max_objects:
                _fail(where, f"more than {limits.max_objects} objects")
            if isinstance(obj, h5py.Group):
                stack.append((obj, p))
    return count


def _attr_info(obj, name, where):
    import h5py

    try:
        aid = h5py.h5a.open(obj.id, name.encode())
    except Exception:
        _fail(where, f"attribute {name!r} cannot be opened")
    return aid.dtype, aid.shape, aid.get_storage_size()


def attr(obj, name, kind, where, limits=DEFAULT_LIMITS):
    """Read attribute `name` after checking its stored type: kind 'str' (a string scalar),
    'int' (a little-endian int64 scalar, returned as a Python int) or 'int_vector' (1-D
    little-endian int64, returned as a tuple of Python ints)."""
    if name not in obj.attrs:
        _fail(where, f"attribute {name!r} is missing")
    dtype, shape, size = _attr_info(obj, name, where)
    w = f"{where} (attribute {name})"
    if size > limits.max_attr_bytes:
        _fail(w, f"{size} bytes; the limit is {limits.max_attr_bytes}")
    if kind == "str":
        import h5py

        info = h5py.check_string_dtype(dtype)
        if info is None or shape not in ((), None):
            _fail(w, f"must be a string scalar, found dtype {dtype} shape {shape}")
        v = obj.attrs[name]
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                _fail(w, "is not valid UTF-8")
        if not isinstance(v, str):
            _fail(w, f"must be a string, found {type(v).__name__}")
        return v
    if kind in ("int", "int_vector"):
        if dtype.str != "<i8":
            _fail(
                w,
                f"must be a little-endian int64{' scalar' if kind == 'int' else ' vector'}, found dtype "
                f"{dtype.str}",
            )
        want_nd = 0 if kind == "int" else 1
        if len(shape or ()) != want_nd or (want_nd and shape[0] > 64):
            _fail(w, f"shape {shape}; expected {'a scalar' if kind == 'int' else 'a short vector'}")
        v = obj.attrs[name]
        return int(v) if kind == "int" else tuple(int(t) for t in np.asarray(v).reshape(-1))
    raise ValueError(f"internal: attribute kind {kind!r}")


def dataset_meta(ds, where, dtypes=None, shape=None, ndim=None, limits=DEFAULT_LIMITS):
    """Check a dataset's declared dtype (exact little-endian str in `dtypes`, default any
    integer type), shape (exact `shape`, or `ndim`), size limit and filters, all before
    reading it. Returns (dtype, shape)."""
    dt = ds.dtype
    allowed = INT_DTYPES if dtypes is None else set(dtypes)
    if dt.str not in allowed or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        _fail(where, f"dtype {dt.str} is not allowed here (allowed: {sorted(allowed)})")
    shp = ds.shape
    if shp is None:
        _fail(where, "has a null dataspace")
    if shape is not None and tuple(shp) != tuple(shape):
        _fail(where, f"declared shape {tuple(shp)}; expected {tuple(shape)}")
    if ndim is not None and len(shp) != ndim:
        _fail(where, f"declared shape {tuple(shp)}; expected {ndim} dimensions")
    n = int(np.prod(shp, dtype=object)) if len(shp) else 1
    if n > limits.max_elements:
        _fail(where, f"declares {n} elements; the limit is {limits.max_elements}")
    if ds.chunks is not None and len(shp):
        nch = 1
        for d, c in zip(shp, ds.chunks):
            nch *= -(-int(d) // max(int(c), 1))
        if nch > limits.max_chunks:
            _fail(
                where,
                f"declares {nch} chunks of shape {tuple(ds.chunks)}; the limit is {limits.max_chunks} "
                "(reading time grows with the chunk count)",
            )
    if ds.maxshape != ds.shape:
        _fail(where, f"is resizable (maxshape {ds.maxshape}); datasets must have a fixed shape")
    filters = set(ds._filters) if ds.chunks is not None else set()
    if filters - ALLOWED_FILTERS:
        _fail(where, f"uses filters {sorted(filters - ALLOWED_FILTERS)}; allowed: {sorted(ALLOWED_FILTERS)}")
    if ds.external:
        _fail(where, "stores its data in an external file")
    if getattr(ds, "is_virtual", False):
        _fail(where, "is a virtual dataset (reads other files)")
    return dt, tuple(shp)


def elements(shape):
    return int(np.prod(shape, dtype=object)) if len(shape) else 1


__all__ = ["H5StructureError", "Limits", "DEFAULT_LIMITS", "check_links", "attr", "dataset_meta", "elements"]
