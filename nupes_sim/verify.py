"""Bit-for-bit verification of golden files, and diffs against hardware dumps.

`verify(golden_path, backend)` recomputes every intermediate of every vector and compares.
`diff(expected, observed)` compares a golden file with a dump in the same schema (an HDF5
file, read without checksum/range checks since a dump may hold wrong values) or a folder of
hex files + manifest.json (see golden.export_hex). Both return a DiffReport whose `first`
is the first divergence in execution order: vector ascending, then the input codes, then
layers in graph order, stages acc_exact -> acc -> out, then flat (C-order) index.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .golden import GoldenFormatError, layer_key, read_golden, read_hex_dir, vector_key
from .graph import INPUT

STAGE_ORDER = ("acc_exact", "acc", "out")


@dataclass
class Divergence:
    vector: int
    layer: str  # 'input' for the input codes
    stage: str  # 'codes' for the input codes
    index: int  # flat C-order index
    multi_index: tuple
    expected: int
    observed: int
    inputs: dict = field(default_factory=dict)  # what feeds this element (expected values)

    def to_dict(self):
        return {"vector": self.vector, "layer": self.layer, "stage": self.stage, "index": self.index,
                "multi_index": list(self.multi_index), "expected": self.expected, "observed": self.observed,
                "inputs": self.inputs}

    def describe(self):
        return (f"vector {self.vector}, layer {self.layer!r}, stage {self.stage}, flat index {self.index} "
                f"{tuple(self.multi_index)}: expected {self.expected}, observed {self.observed}")


@dataclass
class DiffReport:
    first: Divergence = None
    counts: dict = field(default_factory=dict)  # "layer/stage" -> mismatching elements (all vectors)
    compared: int = 0  # elements compared
    not_compared: list = field(default_factory=list)  # tensors absent from the observed side
    notes: list = field(default_factory=list)

    @property
    def ok(self):
        return self.first is None

    @property
    def n_mismatches(self):
        return sum(self.counts.values())

    def to_dict(self):
        return {"ok": self.ok, "first_divergence": None if self.first is None else self.first.to_dict(),
                "mismatch_counts": self.counts, "mismatches": self.n_mismatches, "compared": self.compared,
                "not_compared": self.not_compared, "notes": self.notes}

    def format_text(self):
        lines = []
        if self.ok:
            lines.append(f"OK: {self.compared} elements identical")
        else:
            lines.append(f"MISMATCH: {self.n_mismatches} of {self.compared} elements differ")
            lines.append("first divergence: " + self.first.describe())
            for k, v in self.first.inputs.items():
                lines.append(f"  {k}: {v}")
            lines.append("mismatches per layer/stage:")
            for k, v in self.counts.items():
                if v:
                    lines.append(f"  {k}: {v}")
        if self.not_compared:
            lines.append(f"not compared (absent from the observed side): {len(self.not_compared)} tensors, "
                         f"e.g. {self.not_compared[0]}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def feeding_inputs(graph, vec, node_index, stage, multi):
    """What feeds element `multi` of a stage (from the given vector's values): the previous
    stage of the same layer, and what the layer says feeds it (`Layer.feeding`; linear: input
    row and weight row; conv and pooling: input window coordinates and codes; add: both
    operands; flatten: source)."""
    n = graph.nodes[node_index]
    src = [vec["input"] if i == INPUT else vec["stages"][i]["out"] for i in n.inputs]
    info = {}
    if stage == "acc":
        info["acc_exact"] = int(vec["stages"][n.name]["acc_exact"][multi])
    elif stage == "out" and "acc" in vec["stages"][n.name]:
        info["acc"] = int(vec["stages"][n.name]["acc"][multi])
    info.update(n.layer.feeding(tuple(multi), src, tuple(n.inputs)))
    return info


def compare(golden, observed_vectors, source="observed"):
    """DiffReport of a Golden against observed vectors (same structure as Golden.vectors;
    missing tensors are listed as not compared; a shape mismatch raises GoldenFormatError)."""
    g = golden.graph
    rep = DiffReport()
    rep.counts["input/codes"] = 0
    for i, n in enumerate(g.nodes):
        for s in STAGE_ORDER:
            if s in golden.vectors[0]["stages"][n.name] if golden.vectors else False:
                rep.counts[f"{n.name}/{s}"] = 0
    if len(observed_vectors) != len(golden.vectors):
        raise GoldenFormatError(f"{source}: {len(observed_vectors)} vectors; the golden file has "
                                f"{len(golden.vectors)}")
    for v, (ev, ov) in enumerate(zip(golden.vectors, observed_vectors)):
        items = [("input", "codes", ev["input"], ov.get("input"), None)]
        for i, n in enumerate(g.nodes):
            for s in STAGE_ORDER:
                if s in ev["stages"][n.name]:
                    items.append((n.name, s, ev["stages"][n.name][s], ov.get("stages", {}).get(n.name, {}).get(s), i))
        for name, s, e, o, ni in items:
            tname = f"vectors/{vector_key(v)}/" + ("input" if ni is None else f"{layer_key(ni, name)}/{s}")
            if o is None:
                rep.not_compared.append(tname)
                continue
            o = np.asarray(o)
            if o.shape != e.shape:
                raise GoldenFormatError(f"{source}: {tname}: shape {o.shape}; expected {e.shape}")
            rep.compared += e.size
            bad = np.flatnonzero(e.reshape(-1) != o.reshape(-1))
            rep.counts[f"{name}/{s}"] += int(bad.size)
            if bad.size and rep.first is None:
                k = int(bad[0])
                multi = tuple(int(t) for t in np.unravel_index(k, e.shape))
                feed = {} if ni is None else feeding_inputs(g, ev, ni, s, multi)
                rep.first = Divergence(v, name, s, k, multi, int(e.reshape(-1)[k]), int(o.reshape(-1)[k]), feed)
    return rep


def verify(golden_path, backend="numpy", progress=None):
    """Recompute every vector of a golden file with `backend` and compare bit for bit."""
    golden = read_golden(golden_path)
    observed = []
    it = golden.vectors if progress is None else progress(golden.vectors, total=len(golden.vectors))
    for ev in it:
        r = golden.graph.run(ev["input"], backend=backend, intermediates=True)
        observed.append({"input": ev["input"],
                         "stages": {k: {s: np.asarray(a, np.int64) for s, a in st.items()} for k, st in r.stages.items()}})
    rep = compare(golden, observed, f"backend {backend}")
    return rep


def _vectors_from_hex(golden, tensors):
    out = []
    for v in range(len(golden.vectors)):
        vk = vector_key(v)
        vec = {"input": tensors.get(f"vectors/{vk}/input"), "stages": {}}
        for i, n in enumerate(golden.graph.nodes):
            st = {}
            for s in STAGE_ORDER:
                t = tensors.get(f"vectors/{vk}/{layer_key(i, n.name)}/{s}")
                if t is not None:
                    st[s] = t
            vec["stages"][n.name] = st
        out.append(vec)
    return out


def load_observed(golden, observed_path):
    """(observed vectors, notes) from an HDF5 dump or a hex folder."""
    notes = []
    if os.path.isdir(observed_path):
        manifest, tensors = read_hex_dir(observed_path)
        if manifest.get("model_hash") not in (None, golden.attrs["model_hash"]):
            notes.append("the hex manifest's model_hash differs from the golden file's")
        return _vectors_from_hex(golden, tensors), notes
    obs = read_golden(observed_path, strict=False)
    if obs.attrs["model_hash"] != golden.attrs["model_hash"]:
        notes.append("the dump's model_hash differs from the golden file's")
    return obs.vectors, notes


def diff(expected, observed):
    """Compare a golden file (path or Golden) with a dump (HDF5 path or hex folder)."""
    golden = expected if hasattr(expected, "vectors") else read_golden(expected)
    vecs, notes = load_observed(golden, observed)
    rep = compare(golden, vecs, os.fspath(observed))
    rep.notes.extend(notes)
    return rep


__all__ = ["verify", "diff", "compare", "DiffReport", "Divergence", "feeding_inputs", "load_observed"]
