"""Golden-file writer: runs every vector through a backend and streams all stages to HDF5."""

import datetime

import numpy as np

from .. import __version__
from ..serialize import atomic_h5, canonical_json, model_hash, sha256_array, write_graph_h5
from .schema import SCHEMA, SCHEMA_VERSION, layer_key, layer_params, stage_names, vector_key


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
        f.attrs["input_shape"] = np.asarray(shape[1:], np.int64)  # one vector, no batch (as save_model)
    return count


__all__ = ["write_golden"]
