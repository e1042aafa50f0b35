"""The golden-file schema (docs/GOLDEN.md): names, keys, version, and what each layer and
stage holds — taken from the layers' own description (nupes_sim/layers/base.py)."""

import numpy as np

from ..graph import INPUT
from ..versions import GOLDEN_SCHEMA_VERSION

SCHEMA = "nupes-sim-golden"
SCHEMA_VERSION = GOLDEN_SCHEMA_VERSION
ROOT_ATTRS = (
    "schema",
    "schema_version",
    "package_version",
    "created",
    "model_hash",
    "seeds",
    "n_vectors",
    "layer_order",
    "input_shape",
    "backend",
)
STAGES = ("acc_exact", "acc", "mean", "inv", "prob", "y", "out")  # every stage name, in execution order


class GoldenFormatError(ValueError):
    """A golden (or dump) file that does not follow the schema; the message says what and where."""


def layer_key(i, name):
    return f"{i:03d}_{name}"


def vector_key(v):
    return f"{v:06d}"


def layer_params(layer):
    """(datasets {name: int array}, info JSON-able dict) of everything hardware needs."""
    ds, info = layer.golden_params()
    info = {"type": type(layer).__name__, "name": layer.name, **info}
    meta = getattr(layer, "meta", None)
    if meta is not None:
        info["formats"] = {k: v for k, v in meta.items() if k.endswith("_format")}  # exponents and scales
        info["relu"] = meta.get("relu")
    ds = {k: np.ascontiguousarray(v) for k, v in ds.items()}
    if "thresholds" in ds:  # schema 3: the requantizer's boundary values (docs/GOLDEN.md)
        ds["requant_table"] = requant_table_array(
            ds["thresholds"], info["out_qmin"], requant_input_range(layer)
        )
    return ds, info


INT64_RANGE = (-(2**63), 2**63 - 1)
REQUANT_TABLE_COLUMNS = ("row", "threshold", "code_at_t", "code_at_t_minus_1")


def requant_input_stage(layer):
    """Name of the stage a layer's requantizer reads (the one before `out`), or None."""
    names = tuple(layer.stages())
    return names[names.index("out") - 1] if "out" in names and names.index("out") > 0 else None


def requant_input_range(layer):
    """(lo, hi) of the value a layer's requantizer reads, so that requant_table holds only
    thresholds that value can reach: the accumulator's range when `acc` is the stage before
    `out` (Linear, Conv2d, Add, MatMul; its thresholds lie in [lo, hi + 1], hi + 1 = never
    reached; for 64 bits INT64_MAX stands for it and is left out too), else that stage's
    declared range (Softmax prob, LayerNorm y), the int64 range when it declares none."""
    src = requant_input_stage(layer)
    if src == "acc":  # 64 bits: INT64_MAX stands for never reached (tables.threshold_table)
        return int(layer.acc.lo), min(int(layer.acc.hi), 2**63 - 2)
    r = layer.stage_range(src, ()) if src is not None else None
    return (int(r[0]), int(r[1])) if r is not None else INT64_RANGE


def requant_table_array(thr, out_qmin, value_range):
    """int64 (M, 4) `requant_table`: per threshold row r, each threshold t of the row with
    lo <= t <= hi (value_range: what the requantizer's input can hold, so the "never reached"
    acc_max + 1 is left out), in row then column order: [r, t, code at value t, code at
    value t - 1], code = out_qmin + #{j : value >= thr[r, j]} (docs/ARITHMETIC.md §6). Counts
    are exact integer comparisons (sorted copy + searchsorted; t - 1 is never formed, so no
    int64 overflow at t = -2^63), whatever the order of a row."""
    thr = np.asarray(thr, np.int64)
    lo, hi = (int(v) for v in value_range)
    qmin = int(out_qmin)
    parts = []
    for r, row in enumerate(thr):
        srt = np.sort(row)
        t = row[(row >= lo) & (row <= hi)]
        if not t.size:
            continue
        at_t = qmin + np.searchsorted(srt, t, side="right")  # #{thr <= t}
        below = qmin + np.searchsorted(srt, t, side="left")  # #{thr <= t - 1} = #{thr < t}
        parts.append(np.stack([np.full(t.shape, r, np.int64), t, at_t, below], axis=1))
    return np.ascontiguousarray(np.concatenate(parts), np.int64) if parts else np.zeros((0, 4), np.int64)


def stage_names(layer):
    return tuple(layer.stages())


# ---- code ranges ---------------------------------------------------------------------------


def input_range(graph):
    """(qmin, qmax) allowed for the graph's input codes (intersection over its direct readers,
    looking through pass-through layers such as MaxPool2d/Flatten), or None if no layer
    constrains it."""
    los, his = [], []

    def visit(src):
        for n in graph.nodes:
            for j, i in enumerate(n.inputs):
                if i != src:
                    continue
                r = n.layer.in_ranges()[j]
                if r is not None:
                    los.append(r.qmin)
                    his.append(r.qmax)
                elif n.layer.passthrough:
                    visit(n.name)

    visit(INPUT)
    return (max(los), min(his)) if los else None


def _in_ranges(graph, i, irange):
    """(lo, hi) or None of each input of node i (the graph input: `irange`)."""
    names = [n.name for n in graph.nodes]
    return tuple(
        irange if src == INPUT else out_code_range(graph, names.index(src), irange)
        for src in graph.nodes[i].inputs
    )


def out_code_range(graph, i, irange=False):
    """Range of layer i's output values (requant codes, acc range, or pass-through); None
    when unconstrained. irange: the graph's input range if already known."""
    if irange is False:
        irange = input_range(graph)
    layer = graph.nodes[i].layer
    return layer.stage_range("out", _in_ranges(graph, i, irange) if layer.passthrough else ())


def stage_range(graph, i, stage):
    """(lo, hi) every value of stage `stage` of node i must lie in, or None (no constraint)."""
    layer = graph.nodes[i].layer
    if stage == "out":
        return out_code_range(graph, i)
    return layer.stage_range(stage, ())


def stage_shapes(graph, input_shape):
    """{layer name: {stage: shape}} for inputs of `input_shape` (batch first: each golden
    vector is (1, *input_shape attribute)): the output's shape, except where a layer says otherwise
    (`Layer.stage_shapes`: Softmax's row sums, LayerNorm's mean and inv)."""
    return graph.stage_shapes(tuple(input_shape))


def random_inputs(graph, n, seed, input_shape):
    """n valid input code tensors (each of shape input_shape, no batch) drawn with `seed`."""
    r = input_range(graph) or (-128, 127)
    rng = np.random.default_rng(seed)
    return rng.integers(r[0], r[1] + 1, (n,) + tuple(input_shape), dtype=np.int64)


__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "ROOT_ATTRS",
    "STAGES",
    "GoldenFormatError",
    "layer_key",
    "vector_key",
    "layer_params",
    "requant_input_stage",
    "requant_input_range",
    "requant_table_array",
    "REQUANT_TABLE_COLUMNS",
    "INT64_RANGE",
    "stage_names",
    "input_range",
    "out_code_range",
    "stage_range",
    "stage_shapes",
    "random_inputs",
]
