"""Validation for the command line: option types (ranges, finite numbers), input files
(exists, kind, dtype, declared size before reading), and outputs that must not overwrite
an input. Every failure is one line (CliError, exit 2)."""

import argparse
import math
import os

import numpy as np


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors ('nupes-sim VERB: error: ...; see --help'), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(lo, hi=None, name="value"):
    """argparse type: an integer in [lo, hi] (hi None: no upper bound)."""

    def parse(text):
        try:
            v = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{v} is outside the allowed range [{lo}, {'inf' if hi is None else hi}]"
            )
        return v

    parse.__name__ = name
    return parse


def float_in(lo, hi, name="value"):
    """argparse type: a finite float in [lo, hi]."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is not a finite number in [{lo}, {hi}]")
        return v

    parse.__name__ = name
    return parse


def shape_arg(text):
    """argparse type: a per-vector shape 'C,H,W' of positive integers."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        dims = tuple(int(p, 10) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not dims or len(dims) > 8 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"{text!r}: every dimension must be a positive integer (1 to 8 of them)"
        )
    return dims


def memory_arg(text):
    from .memory import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---- paths ---------------------------------------------------------------------------------


def _same(a, b):
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(out, inputs, what="--out"):
    """CliError if output `out` is (or is inside, for a folder) one of the input paths."""
    for name, p in inputs:
        if p is None:
            continue
        if _same(out, p):
            raise CliError(f"{what} {out} is the same file as the {name}; it would be overwritten")
        ro, rp = os.path.realpath(out), os.path.realpath(p)
        if rp.startswith(ro.rstrip(os.sep) + os.sep):
            raise CliError(f"{what} {out} contains the {name} {p}; it would be replaced")


def existing_file(path, what):
    if path is None:
        return
    if not os.path.exists(path):
        raise CliError(f"{what} {path} does not exist")
    if not os.path.isfile(path):
        raise CliError(f"{what} {path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise CliError(f"{what} {path} is empty")


def output_folder_exists(path, what="--out"):
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise CliError(f"{what} {path}: folder {d} does not exist")


# ---- array files ---------------------------------------------------------------------------


def npy_header(path):
    """(shape, dtype) declared by a .npy file, read from its header only."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as e:
            raise CliError(
                f"{path}: not a readable .npy file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
    return tuple(shape), dtype


def h5_dataset(path, dataset, what):
    """Open an HDF5 array file and pick the dataset (no links followed); returns (file, ds)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as e:
        raise CliError(f"{what} {path}: not a readable HDF5 file ({type(e).__name__})") from None
    try:
        names = []
        for k in f.keys():
            link = f.get(k, getlink=True)
            if isinstance(link, h5py.HardLink) and isinstance(f.get(k), h5py.Dataset):
                names.append(k)
        if dataset is None:
            if "input" in names:
                dataset = "input"
            elif len(names) == 1:
                dataset = names[0]
            else:
                raise CliError(f"{what} {path}: name the dataset with --dataset (found {names})")
        if dataset not in names:
            raise CliError(f"{what} {path}: no dataset {dataset!r} at the top level (found {names})")
        return f, f[dataset]
    except BaseException:
        f.close()
        raise


def load_array(path, dataset, what, kinds, limit):
    """A numeric array from .npy or .h5 after checking its declared dtype kind (one of
    `kinds`, numpy kind letters) and size (bytes as int64/float64 <= limit) from the header."""
    from .memory import check_fits, elements

    existing_file(path, what)
    p = str(path)
    if p.endswith(".npy"):
        shape, dtype = npy_header(p)
    elif p.endswith((".h5", ".hdf5")):
        f, ds = h5_dataset(p, dataset, what)
        shape, dtype = ds.shape, ds.dtype
        f.close()
    else:
        raise CliError(f"{what} {p}: expected a .npy or .h5 file")
    if dtype.kind not in kinds or dtype.hasobject:
        want = {"iu": "integer codes", "iuf": "numbers", "f": "floats"}.get(kinds, kinds)
        raise CliError(f"{what} {p}: dtype {dtype} (expected {want})")
    if shape is None or len(shape) < 1 or shape[0] < 1:
        raise CliError(f"{what} {p}: shape {shape}; expected at least one vector along the first axis")
    check_fits(f"{what} {p} (shape {tuple(shape)})", 8 * elements(shape), limit)
    try:
        if p.endswith(".npy"):
            x = np.load(p, allow_pickle=False)
        else:
            f, ds = h5_dataset(p, dataset, what)
            with f:
                x = ds[()]
    except CliError:
        raise
    except Exception as e:
        raise CliError(
            f"cannot read {what} {p}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    x = np.asarray(x)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise CliError(f"{what} {p}: holds NaN or infinite values")
    return x
