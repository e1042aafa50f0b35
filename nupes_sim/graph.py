"""A graph of integer layers run by one backend, with every intermediate on request."""

import importlib
from dataclasses import dataclass, field

import numpy as np

from . import transformer as _transformer  # noqa: F401 (registers the transformer layer types)
from .layers import LAYER_TYPES, is_layer  # noqa: F401 (LAYER_TYPES: name -> class, re-exported)
from .validate import check_choice

BACKENDS = {"numpy": "nupes_sim.oracle", "cpu": "nupes_sim.cpu", "cuda": "nupes_sim.cuda.backend"}
INPUT = "input"


def get_backend(name):
    """The module implementing `run_layer(layer, *inputs) -> dict` for a backend name."""
    check_choice("backend", name, BACKENDS)
    module = importlib.import_module(BACKENDS[name])
    if hasattr(module, "ensure_available"):
        module.ensure_available()  # e.g. cuda: a clear error, never a silent fallback
    return module


@dataclass
class Node:
    layer: object
    inputs: tuple = (INPUT,)

    @property
    def name(self):
        return self.layer.name


@dataclass
class RunResult:
    output: np.ndarray
    stages: dict = field(default_factory=dict)  # name -> {acc_exact, acc, out}
    overflow: dict = field(default_factory=dict)  # name -> count of exact sums outside the range


def overflow_count(layer, stage):
    if "acc_exact" not in stage:
        return 0
    e = stage["acc_exact"]
    lo, hi = layer.acc.lo, layer.acc.hi
    if e.size == 0 or (int(e.min()) >= lo and int(e.max()) <= hi):  # the common case: two reductions
        return 0
    return int(((e < lo) | (e > hi)).sum())


class Graph:
    """Layers in execution order; each node names its inputs ('input' or an earlier node)."""

    def __init__(self, nodes):
        self.nodes = []
        seen = {INPUT}
        for n in nodes:
            if not isinstance(n, Node):
                n = (
                    Node(n[0], tuple(n[1]))
                    if isinstance(n, tuple)
                    else Node(n, (self.nodes[-1].name,) if self.nodes else (INPUT,))
                )
            if not is_layer(n.layer):
                raise TypeError(
                    f"unsupported layer type {type(n.layer).__name__}; supported: {', '.join(sorted(LAYER_TYPES))}"
                )
            if n.name in seen:
                raise ValueError(f"duplicate layer name {n.name!r}")
            for i in n.inputs:
                if i not in seen:
                    raise ValueError(
                        f"layer {n.name!r} reads {i!r}, which is not 'input' or an earlier layer"
                    )
            want = n.layer.n_inputs
            if len(n.inputs) != want:
                raise ValueError(f"layer {n.name!r} takes {want} input(s), got {len(n.inputs)}")
            seen.add(n.name)
            self.nodes.append(n)
        if not self.nodes:
            raise ValueError("a graph needs at least one layer")

    @property
    def layers(self):
        return [n.layer for n in self.nodes]

    def out_shapes(self, input_shape):
        """{layer name: output shape} for inputs of `input_shape` (batch first), from the
        layers' out_shape (raises ValueError naming the layer for a shape it cannot take)."""
        shapes = {INPUT: tuple(input_shape)}
        for n in self.nodes:
            shapes[n.name] = tuple(n.layer.out_shape([shapes[i] for i in n.inputs]))
        del shapes[INPUT]
        return shapes

    def stage_shapes(self, input_shape):
        """{layer name: {stage: shape}} for inputs of `input_shape` (batch first), from the
        layers' stage_shapes (most stages have the output's shape; row statistics do not)."""
        shapes = {INPUT: tuple(input_shape)}
        out = {}
        for n in self.nodes:
            ins = [shapes[i] for i in n.inputs]
            shapes[n.name] = tuple(n.layer.out_shape(ins))
            out[n.name] = {s: tuple(v) for s, v in n.layer.stage_shapes(ins).items()}
        return out

    def run(self, x, backend="cpu", intermediates=False, options=None):
        """Run every layer on `backend`; `options` is passed to its run_layer (cpu: a
        nupes_sim.cpu.CpuOptions; results never depend on it)."""
        be = get_backend(backend)
        kw = {} if options is None else {"options": options}
        values = {INPUT: np.asarray(x)}
        result = RunResult(output=None)
        last_use = {}
        for idx, n in enumerate(self.nodes):
            for i in n.inputs:
                last_use[i] = idx
        for idx, n in enumerate(self.nodes):
            stage = be.run_layer(n.layer, *(values[i] for i in n.inputs), **kw)
            values[n.name] = stage["out"]
            result.overflow[n.name] = overflow_count(n.layer, stage)
            if intermediates:
                result.stages[n.name] = stage
            for i in n.inputs:  # free tensors no later node reads
                if last_use[i] == idx and i != INPUT and not intermediates:
                    values.pop(i, None)
        result.output = values[self.nodes[-1].name]
        return result
