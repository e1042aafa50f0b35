"""What a verification or diff found: the first divergence, counts, and how much was compared.

A DiffReport is OK only when something was compared, nothing differed, and nothing made the
comparison incomplete or untrustworthy (`failures`: missing or unknown tensors, malformed
files, another model). Its text always says how much was compared and against which model.
"""

from dataclasses import dataclass, field

# in execution order ('input' = the input codes); each layer's stages() are a subsequence
STAGES = ("input", "acc_exact", "acc", "mean", "inv", "prob", "y", "out")


@dataclass
class Divergence:
    vector: int  # None for a layer parameter
    layer: str  # 'input' for the input codes
    stage: str  # 'codes' for the input codes; the dataset name for a layer parameter
    index: int  # flat C-order index
    multi_index: tuple
    expected: int
    observed: object  # int, or the word as written when it is not a valid value of its width
    inputs: dict = field(default_factory=dict)  # what feeds this element (expected values)

    def to_dict(self):
        return {
            "vector": self.vector,
            "layer": self.layer,
            "stage": self.stage,
            "index": self.index,
            "multi_index": list(self.multi_index),
            "expected": self.expected,
            "observed": self.observed,
            "inputs": self.inputs,
        }

    def describe(self):
        where = (
            f"layer parameter {self.layer!r}/{self.stage}"
            if self.vector is None
            else f"vector {self.vector}, layer {self.layer!r}, stage {self.stage}"
        )
        obs = (
            self.observed if isinstance(self.observed, int) else f"word {self.observed!r} (not a valid value)"
        )
        return f"{where}, flat index {self.index} {tuple(self.multi_index)}: expected {self.expected}, observed {obs}"


def _ranges(ints):
    """'0-3, 7, 9-11' for a sorted list of ints."""
    out, run = [], []
    for v in sorted(set(ints)):
        if run and v == run[-1] + 1:
            run.append(v)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [v]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


@dataclass
class DiffReport:
    first: Divergence = None  # first divergence of the vectors, execution order
    counts: dict = field(default_factory=dict)  # "layer/stage" (and "layers/NNN_x/ds") -> mismatches
    compared: int = 0  # vector elements compared
    tensors: int = 0  # vector tensors compared
    vectors: set = field(default_factory=set)  # vector indices with at least one tensor compared
    layers: list = field(default_factory=list)  # layer names with at least one stage compared
    stages: set = field(default_factory=set)  # stage names compared ('input' for the input codes)
    params: int = 0  # layer-parameter tensors compared
    param_elements: int = 0
    params_how: str = None  # how the parameters were compared when not against a dump (verify)
    param_mismatches: list = field(default_factory=list)  # Divergence per differing parameter tensor / info
    not_compared: list = field(default_factory=list)  # golden tensors absent from the dump (allowed)
    failures: list = field(default_factory=list)  # reasons the comparison cannot pass
    notes: list = field(default_factory=list)
    model_hash: str = None  # the golden file's model, which the dump was checked against
    source: str = None

    @property
    def ok(self):
        return self.first is None and not self.param_mismatches and not self.failures and self.compared > 0

    @property
    def n_mismatches(self):
        return sum(self.counts.values())

    def summary(self):
        """How much was compared, in words."""
        lay = (
            (": " + ", ".join(self.layers[:8]) + (", ..." if len(self.layers) > 8 else ""))
            if self.layers
            else ""
        )
        st = ", ".join(s for s in STAGES if s in self.stages) or "none"
        return (
            f"{self.compared} elements in {self.tensors} tensors ({len(self.vectors)} vectors, "
            f"{len(self.layers)} layers{lay}; stages {st}) "
            f"and {self.param_elements} entries in {self.params} layer parameter tensors"
            + (f" ({self.params_how})" if self.params_how else "")
        )

    def to_dict(self):
        return {
            "ok": self.ok,
            "first_divergence": None if self.first is None else self.first.to_dict(),
            "mismatch_counts": self.counts,
            "mismatches": self.n_mismatches,
            "compared": self.compared,
            "tensors": self.tensors,
            "vectors": len(self.vectors),
            "layers": self.layers,
            "stages": [s for s in STAGES if s in self.stages],
            "param_tensors": self.params,
            "param_elements": self.param_elements,
            "params_how": self.params_how,
            "param_mismatches": [d.to_dict() for d in self.param_mismatches],
            "not_compared": self.not_compared,
            "failures": self.failures,
            "notes": self.notes,
            "model_hash": self.model_hash,
            "source": self.source,
        }

    def format_text(self):
        lines = []
        if self.ok:
            lines.append(f"OK: {self.summary()} identical")
        else:
            if self.first is not None or self.param_mismatches:
                lines.append(f"MISMATCH: {self.n_mismatches} elements differ; compared {self.summary()}")
            else:
                lines.append(f"FAIL: compared {self.summary()}")
            for f in self.failures:
                lines.append(f"FAIL: {f}")
            if self.first is not None:
                lines.append("first divergence: " + self.first.describe())
                for k, v in self.first.inputs.items():
                    lines.append(f"  {k}: {v}")
            for d in self.param_mismatches:
                lines.append("parameter mismatch: " + d.describe())
            if self.n_mismatches:
                lines.append("mismatches per layer/stage:")
                for k, v in self.counts.items():
                    if v:
                        lines.append(f"  {k}: {v}")
        if self.not_compared:
            lines.append(
                f"not compared (absent from the dump, allowed by --partial): {len(self.not_compared)} "
                f"tensors, e.g. {self.not_compared[0]}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        if self.model_hash:
            lines.append(f"model: {self.model_hash}")
        return "\n".join(lines)


__all__ = ["Divergence", "DiffReport"]
