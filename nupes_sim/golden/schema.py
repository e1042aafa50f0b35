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
    return {k: np.ascontiguousarray(v) for k, v in ds.items()}, info


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
    """{layer name: {stage: shape}} for inputs of `input_shape` (batch first, as stored in
    golden files: (1, ...)): the output's shape, except where a layer says otherwise
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
    "stage_names",
    "input_range",
    "out_code_range",
    "stage_range",
    "stage_shapes",
    "random_inputs",
]
