"""Memory budget: parse `--max-memory`, the default budget, per-vector shapes of a graph, and
the one check that refuses (before allocating) what cannot fit.

The oracle, the golden writer and the audit stream over independent outputs in chunks whose
working set is at most `chunk_budget()` bytes; what remains (a whole input array, one
vector's intermediates) is estimated here and compared with the budget first.
"""

import os

import numpy as np

DEFAULT_FRACTION = 0.5  # of the machine's physical memory
_BUDGET = {"bytes": None}  # process-wide budget set by the CLI (None: default)


class MemoryBudgetError(ValueError):
    """What was asked for cannot fit in the memory budget (checked before allocating)."""


def physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def default_budget():
    return int(physical_memory() * DEFAULT_FRACTION)


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 1 << 30,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 1 << 40,
    "TIB": 1 << 40,
}


def parse_bytes(text):
    """'4G', '512M', '1.5GiB', '1000000' -> bytes (binary units); ValueError otherwise."""
    s = str(text).strip().upper()
    num = s.rstrip("KMGTIB")
    unit = s[len(num) :]
    try:
        v = float(num)
    except ValueError:
        v = float("nan")
    if unit not in _UNITS or not np.isfinite(v) or v <= 0:
        raise ValueError(
            f"{text!r} is not a memory size (a positive number with an optional unit K, M, G, T)"
        )
    b = int(v * _UNITS[unit])
    if b < 64 << 20:
        raise ValueError(f"{text!r} is below the minimum memory budget of 64M")
    return b


def set_budget(nbytes):
    _BUDGET["bytes"] = None if nbytes is None else int(nbytes)


def budget():
    return _BUDGET["bytes"] if _BUDGET["bytes"] is not None else default_budget()


def chunk_budget():
    """Bytes one chunk of streamed work may use (a fraction of the budget, leaving room for
    the layer's inputs and outputs)."""
    return max(16 << 20, budget() // 8)


def human(n):
    n = float(n)
    for u in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or u == "PiB":
            return f"{n:.1f} {u}" if u != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_fits(what, nbytes, limit=None):
    """Raise MemoryBudgetError (one line) if `nbytes` exceeds the budget."""
    limit = budget() if limit is None else limit
    if nbytes > limit:
        raise MemoryBudgetError(
            f"{what} needs about {human(nbytes)}, more than the memory budget of "
            f"{human(limit)} (--max-memory); use fewer or smaller vectors"
        )


def stage_shapes(graph, in_shape):
    """{layer name: output shape without batch} for one vector of shape `in_shape`, computed
    from the layer geometry without running anything; ValueError if a layer does not fit."""
    from .graph import INPUT
    from .layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d

    shapes = {INPUT: tuple(int(s) for s in in_shape)}
    for n in graph.nodes:
        L, s = n.layer, shapes[n.inputs[0]]
        if isinstance(L, Linear):
            if len(s) != 1 or s[0] != L.k:
                raise ValueError(f"{L.name}: input shape {s} per vector; expected ({L.k},)")
            out = (L.out_channels,)
        elif isinstance(L, Conv2d):
            cin = L.w_codes.shape[1] * L.groups
            if len(s) != 3 or s[0] != cin:
                raise ValueError(f"{L.name}: input shape {s} per vector; expected ({cin}, H, W)")
            out = (L.out_channels,) + tuple(L.out_hw(*s[1:]))
        elif isinstance(L, Add):
            if shapes[n.inputs[1]] != s:
                raise ValueError(f"{L.name}: input shapes differ: {s} and {shapes[n.inputs[1]]}")
            out = s
        elif isinstance(L, (MaxPool2d, AvgPool2d)):
            if len(s) != 3:
                raise ValueError(f"{L.name}: input shape {s} per vector; expected (C, H, W)")
            if isinstance(L, MaxPool2d):
                k, st, p = L.kernel, L.stride, L.padding
            else:
                k = L.kernel or s[1:]
                st, p = L.stride or k, (0, 0)
            ho = (s[1] + 2 * p[0] - k[0]) // st[0] + 1
            wo = (s[2] + 2 * p[1] - k[1]) // st[1] + 1
            if ho < 1 or wo < 1:
                raise ValueError(f"{L.name}: input {s[1]}x{s[2]} is smaller than the window {tuple(k)}")
            out = (s[0], ho, wo)
        elif isinstance(L, Flatten):
            out = (int(np.prod(s, dtype=object)),)
        else:  # layer kinds added later: no estimate, the run itself checks
            return shapes
        shapes[n.name] = out
    return shapes


def run_bytes(graph, in_shape, n=1):
    """Estimated bytes of a run of n vectors with intermediates (every stage int64, three
    stages per layer with an accumulator) plus one streamed chunk working set."""
    shapes = stage_shapes(graph, in_shape)
    per = 8 * int(np.prod(shapes.get("input", in_shape), dtype=object))
    for nd in graph.nodes:
        if nd.name in shapes:
            per += 3 * 8 * int(np.prod(shapes[nd.name], dtype=object))
    return n * per + chunk_budget()


def elements(shape):
    return int(np.prod([int(s) for s in shape], dtype=object))


__all__ = [
    "MemoryBudgetError",
    "parse_bytes",
    "set_budget",
    "budget",
    "chunk_budget",
    "check_fits",
    "stage_shapes",
    "run_bytes",
    "default_budget",
    "human",
    "elements",
]
