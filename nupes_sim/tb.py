"""Helpers for Python test benches (cocotb or other): golden vectors in, a dump folder out.

    from nupes_sim.tb import GoldenVectors, DumpWriter
    gv = GoldenVectors("golden.h5")
    dump = DumpWriter("rtl_dump/", gv)
    for v in range(gv.n_vectors):
        x = gv.input(v)                      # int64 codes, shape (1, *gv.input_shape)
        ...drive the DUT, collect its accumulators and output codes...
        dump.put(v, "fc", "acc", acc_values)
        dump.put(v, "fc", "out", out_codes)
    dump.close()                             # writes vectors__VVVVVV__NNN_fc__acc.hex, ...
    # then: nupes-sim diff golden.h5 rtl_dump/ --layers fc --stages acc,out

No cocotb import here: the module only reads golden files and writes the dump layout of
docs/GOLDEN.md ("Dumps"), which `nupes-sim diff` reads strictly.
"""

import os

import numpy as np

from .dumps import expected_layout, tensor_file, vector_tensor, write_dump
from .golden import read_golden


class GoldenVectors:
    """A validated golden file, addressed by vector, layer name and stage."""

    def __init__(self, path):
        self.golden = read_golden(path)
        self.layout = expected_layout(self.golden)
        self.layers = [n.name for n in self.golden.graph.nodes]
        self.path = os.fspath(path)

    @property
    def n_vectors(self):
        return len(self.golden.vectors)

    @property
    def input_shape(self):
        """One vector's input shape without the batch axis (each gv.input(v) is (1, ...))."""
        return tuple(self.golden.attrs["input_shape"])

    @property
    def model_hash(self):
        return self.golden.attrs["model_hash"]

    def node(self, layer):
        if layer not in self.layers:
            raise KeyError(f"no layer {layer!r} (layers: {', '.join(self.layers)})")
        return self.layers.index(layer)

    def input(self, v):
        return self.golden.vectors[v]["input"]

    def stage(self, v, layer, stage):
        return self.golden.vectors[v]["stages"][layer][stage]

    def layer_input(self, v, layer, j=0):
        """Codes feeding input j of `layer` in vector v (the graph input or a layer's `out`)."""
        src = self.golden.graph.nodes[self.node(layer)].inputs[j]
        return self.input(v) if src == "input" else self.stage(v, src, "out")

    def param(self, layer, name):
        return self.golden.layers[layer]["datasets"][name]

    def info(self, layer):
        return self.golden.layers[layer]["info"]

    def tensor_name(self, v, layer=None, stage=None):
        return vector_tensor(v) if layer is None else vector_tensor(v, self.node(layer), layer, stage)

    def word(self, v, layer=None, stage=None):
        """(width, signed) of a vector tensor's hex words."""
        e = self.layout[self.tensor_name(v, layer, stage)]
        return e.width, e.signed

    def file_name(self, v, layer=None, stage=None):
        return tensor_file(self.tensor_name(v, layer, stage))


class DumpWriter:
    """Collects observed tensors and writes them as a hex dump folder (no manifest)."""

    def __init__(self, folder, vectors):
        self.folder, self.gv, self.tensors = os.fspath(folder), vectors, {}

    def put(self, v, layer, stage, values):
        name = self.gv.tensor_name(v, layer, stage)
        self.tensors[name] = np.asarray(values, np.int64).reshape(self.gv.layout[name].values.shape)

    def put_input(self, v, values):
        self.tensors[self.gv.tensor_name(v)] = np.asarray(values, np.int64).reshape(self.gv.input(v).shape)

    def close(self):
        write_dump(self.folder, self.tensors, self.gv.golden)
        return sorted(tensor_file(t) for t in self.tensors)


__all__ = ["GoldenVectors", "DumpWriter"]
