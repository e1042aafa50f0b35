"""Mutations of golden and model files for the reader fuzz test (tests/test_reader_fuzz.py)
and the larger campaign (tests/fuzz_campaign.py, not collected).

Each mutation kind takes (src path, dst path, rng) and writes a mutated copy; it returns
True when the result is *forbidden by the schema* whatever its values (a link, a wrong
dtype or attribute type, a huge declared size...), so a reader accepting it is a defect;
False when it may legitimately be accepted (a flipped byte in padding, forged data whose
checksum was recomputed) - then the values read must be exactly the values stored.
"""

import hashlib
import shutil

import numpy as np

from nupes_sim.serialize import sha256_array


def _datasets(f):
    import h5py

    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(out)


def _groups(f):
    import h5py

    out = []
    f.visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Group) else None)
    return sorted(out)


def _pick(rng, items):
    return items[int(rng.integers(len(items)))] if items else None


def byte_flip(src, dst, rng):
    data = bytearray(open(src, "rb").read())
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(len(data)))
        data[i] ^= 1 << int(rng.integers(8))
    open(dst, "wb").write(bytes(data))
    return False


def truncate(src, dst, rng):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: int(rng.integers(0, len(data)))])
    return False


def _edit(src, dst, fn):
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        return fn(f)


def _informative(name):
    """Model files: the optional loss_history group is informative (outside model_hash, any
    length, docs/GOLDEN.md "Model files"): deleting it, one of its datasets, or changing a
    history's length is allowed, not forbidden."""
    return name.strip("/").startswith("loss_history")


def delete_member(src, dst, rng):
    def fn(f):
        name = _pick(rng, _datasets(f) + _groups(f))
        del f[name]
        return not _informative(name)

    return _edit(src, dst, fn)


def add_member(src, dst, rng):
    def fn(f):
        g = f[_pick(rng, _groups(f) + ["/"]) or "/"]
        g.create_dataset(f"extra{int(rng.integers(100))}", data=np.arange(3))
        return True

    return _edit(src, dst, fn)


def attr_junk(src, dst, rng):
    """Replace one attribute by a value of another type (str '1' for an int, NaN, bytes...)."""

    def fn(f):
        objs = ["/"] + _groups(f) + _datasets(f)
        for _ in range(20):
            o = f[_pick(rng, objs)]
            if len(o.attrs):
                break
        else:
            return False
        k = _pick(rng, sorted(o.attrs.keys()))
        old = o.attrs[k]
        choices = [
            np.float64("nan"),
            "1",
            np.int32(1),
            np.float64(1.0),
            b"\xff\xfe",
            np.array([1, 2]),
            True,
            np.int64(-1),
            str(old) + "x",
            np.uint64(2**63),
        ]
        new = choices[int(rng.integers(len(choices)))]
        o.attrs[k] = new
        # an int64 '1' set again as int64, or a str set to the same str, is no mutation
        same = isinstance(old, type(new)) and np.array_equal(np.asarray(old), np.asarray(new))
        return not same

    return _edit(src, dst, fn)


def schema_version_str(src, dst, rng):
    def fn(f):
        key = "schema_version" if "schema_version" in f.attrs else "version"
        f.attrs[key] = "1"
        return True

    return _edit(src, dst, fn)


def link(src, dst, rng):
    """Replace a dataset by a soft, hard or external link (to itself, another dataset, another file)."""
    import h5py

    def fn(f):
        ds = _datasets(f)
        a = _pick(rng, ds)
        kind = int(rng.integers(3))
        data = f[a][()]
        attrs = dict(f[a].attrs)
        del f[a]
        if kind == 0:
            tgt = "/" + a + "_moved"
            f[tgt] = data
            for k, v in attrs.items():
                f[tgt].attrs[k] = v
            f[a] = h5py.SoftLink(tgt)
        elif kind == 1:
            tgt = "/" + a + "_moved"
            f[tgt] = data
            for k, v in attrs.items():
                f[tgt].attrs[k] = v
            f[a] = f[tgt]
        else:
            other = dst + ".ext.h5"
            with h5py.File(other, "w") as g:
                g["d"] = data
                for k, v in attrs.items():
                    g["d"].attrs[k] = v
            f[a] = h5py.ExternalLink(other, "/d")
        return True

    return _edit(src, dst, fn)


def _rewrite(f, name, data, keep_sha=False):
    attrs = dict(f[name].attrs)
    del f[name]
    f.create_dataset(name, data=data)
    for k, v in attrs.items():
        f[name].attrs[k] = v
    if "sha256" in attrs and not keep_sha:
        f[name].attrs["sha256"] = sha256_array(np.asarray(data))


def dtype_change(src, dst, rng):
    """Same values, another dtype or byte order, checksum recomputed."""

    def fn(f):
        name = _pick(rng, _datasets(f))
        a = f[name][()]
        choices = [">i8", "<u8", "<i4", "<f8", ">i4", "<i2", "|i1", "<u4"]
        dt = choices[int(rng.integers(len(choices)))]
        if np.dtype(dt).str == a.dtype.str:
            dt = ">i8"
        with np.errstate(all="ignore"):
            _rewrite(f, name, a.astype(dt))
        return True

    return _edit(src, dst, fn)


def shape_change(src, dst, rng):
    def fn(f):
        name = _pick(rng, _datasets(f))
        a = f[name][()]
        if a.size == 0:
            return False
        k = int(rng.integers(3))
        new = (
            a.reshape(-1)
            if k == 0
            else (a.reshape(-1)[:-1] if k == 1 else np.concatenate([a.reshape(-1)] * 2))
        )
        if new.shape == a.shape:
            new = new[None]
        _rewrite(f, name, new)
        return not (_informative(name) and new.ndim == 1)

    return _edit(src, dst, fn)


def forge_values(src, dst, rng):
    """Change a few values, recompute the dataset checksum (and the JSON's): a reader may
    accept this (the integers are still consistent); it must read the forged values."""

    def fn(f):
        name = _pick(rng, _datasets(f))
        a = f[name][()]
        if a.size == 0 or a.dtype.kind not in "iu":
            return False
        b = a.copy().reshape(-1)
        i = int(rng.integers(b.size))
        b[i] = b[i] + (1 if b[i] < np.iinfo(b.dtype).max else -1)
        _rewrite(f, name, b.reshape(a.shape))
        if name.endswith("graph_json"):
            f[name].attrs["sha256"] = hashlib.sha256(b.tobytes()).hexdigest()
        return False

    return _edit(src, dst, fn)


def huge_declared(src, dst, rng):
    """Replace a dataset by a chunked one declaring a huge shape with nothing written."""

    def fn(f):
        name = _pick(rng, _datasets(f))
        attrs = dict(f[name].attrs)
        dt = f[name].dtype
        nd = max(f[name].ndim, 1)
        del f[name]
        shape = (2**40,) + (1,) * (nd - 1) if int(rng.integers(2)) else (2**20,) * nd
        f.create_dataset(name, shape=shape, dtype=dt, chunks=(1,) * nd)
        for k, v in attrs.items():
            f[name].attrs[k] = v
        return not (_informative(name) and shape == (2**20,))  # 8 MB: within the reader's limit

    return _edit(src, dst, fn)


def forge_meta(src, dst, rng):
    """Edit the host-only description in a golden layer's info JSON (formats, relu, units)."""
    import json

    def fn(f):
        layers = [g for g in _groups(f) if g.startswith("layers/") and g.count("/") == 1]
        if not layers:
            return False
        g = f[_pick(rng, layers)]
        info = json.loads(g.attrs["info"])
        key = _pick(rng, [k for k in ("formats", "relu", "unit", "name") if k in info] or ["unit"])
        info[key] = (
            {"forged": True} if key == "formats" else (not info.get(key) if key == "relu" else 12345.0)
        )
        g.attrs["info"] = json.dumps(info)
        return True

    return _edit(src, dst, fn)


KINDS = {
    "byte_flip": byte_flip,
    "truncate": truncate,
    "delete_member": delete_member,
    "add_member": add_member,
    "attr_junk": attr_junk,
    "schema_version_str": schema_version_str,
    "link": link,
    "dtype_change": dtype_change,
    "shape_change": shape_change,
    "forge_values": forge_values,
    "huge_declared": huge_declared,
    "forge_meta": forge_meta,
}
