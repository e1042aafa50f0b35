"""Bit-for-bit verification of golden files, and strict diffs against hardware dumps.

`verify(golden_path, backend)` recomputes every intermediate of every vector and compares.
`diff(expected, observed)` compares a golden file with a dump (an HDF5 file in the golden
schema, or a folder of hex files, see nupes_sim.dumps). The diff is strict: every tensor the
golden file holds (stages `input`, `acc`, `out` by default) must be in the dump, every dump
tensor must be a golden tensor, the vector count must match, every layer parameter the dump
carries is compared, a dump naming another model fails, and comparing nothing fails.
Intentionally partial dumps are compared with `layers=`, `vectors=`, `stages=` or
`partial=True`. Both return a DiffReport whose `first` is the first divergence in execution
order: vector ascending, then the input codes, then layers in graph order, each layer's
stages in its order (acc_exact -> acc -> out; Softmax ... -> prob -> out; LayerNorm mean ->
inv -> y -> out), then flat (C-order) index.
"""

import json

import numpy as np

from .diff_report import STAGES, DiffReport, Divergence, _ranges
from .dumps import Dump, Observed, expected_layout, load_dump, vector_tensor
from .golden import read_golden
from .graph import INPUT

STAGE_ORDER = STAGES[1:]  # every layer stage name; a layer's stages() follow this order
ALL_STAGES = STAGES
# Stages a dump must hold by default: acc_exact (the exact sum before overflow handling) is a
# simulator quantity an N-bit datapath cannot observe; it is compared whenever a dump holds it.
DUMP_STAGES = ("input", "acc", "out")


def feeding_inputs(graph, vec, node_index, stage, multi):
    """What feeds element `multi` of a stage (from the given vector's values): the previous
    stage of the same layer (the element's row when that stage holds one value per row, as
    Softmax's sums), and what the layer says feeds it (`Layer.feeding`; linear: input row
    and weight row; conv and pooling: input window coordinates and codes; add: both
    operands; flatten: source)."""
    n = graph.nodes[node_index]
    src = [vec["input"] if i == INPUT else vec["stages"][i]["out"] for i in n.inputs]
    info = {}
    names = tuple(n.layer.stages())
    k = names.index(stage) if stage in names else 0
    prev = vec["stages"][n.name].get(names[k - 1]) if k > 0 else None
    if prev is not None and prev.ndim <= len(multi):
        info[names[k - 1]] = int(prev[tuple(multi)[: prev.ndim]])
    info.update(n.layer.feeding(tuple(multi), src, tuple(n.inputs)))
    return info


def _select(golden, layers, vectors, stages):
    """Validated selection: (set of layer names, set of vector indices, set of stages)."""
    names = [n.name for n in golden.graph.nodes]
    keys = {f"{i:03d}_{n}": n for i, n in enumerate(names)}
    if layers is None:
        lsel = set(names)
    else:
        lsel = set()
        for s in layers:
            if s in names:
                lsel.add(s)
            elif s in keys:
                lsel.add(keys[s])
            else:
                raise ValueError(f"--layers: no layer {s!r} in the golden file (layers: {', '.join(names)})")
    n = len(golden.vectors)
    if vectors is None:
        vsel = set(range(n))
    else:
        vsel = set(int(v) for v in vectors)
        bad = sorted(v for v in vsel if not 0 <= v < n)
        if bad:
            raise ValueError(
                f"--vectors: vector {bad[0]} is not in the golden file (it has vectors 0-{n - 1})"
            )
    st = set(stages)
    bad = sorted(st - set(ALL_STAGES))
    if bad:
        raise ValueError(f"--stages: unknown stage {bad[0]!r} (allowed: {', '.join(ALL_STAGES)})")
    if not (lsel and vsel and st):
        raise ValueError("the selection (--layers/--vectors/--stages) is empty: nothing would be compared")
    return lsel, vsel, st


def _mismatch(e, o):
    bad = e.values.reshape(-1) != o.values.reshape(-1)
    if o.invalid:
        bad[np.fromiter(o.invalid, np.int64)] = True
    return np.flatnonzero(bad)


def _observed_at(o, k):
    return o.invalid[k] if k in o.invalid else int(o.values.reshape(-1)[k])


def _code_interval(rq, row, code):
    """[lo, hi) of acc values giving `code` (None = unbounded), from the thresholds."""
    j = int(code) - int(rq.qmin)
    if not 0 <= j <= len(row):
        return None
    return [int(row[j - 1]) if j > 0 else None, int(row[j]) if j < len(row) else None]


def divergence_context(golden, e, multi, observed):
    """Extra context of a first divergence (#11.6): for `out` under thresholds, the acc
    interval of the expected and observed codes; for a Linear or Conv2d `acc`, the products,
    decoded operands (LUT integers) and, under saturate, the first step k where the
    reference clamped."""
    from .tables import Thresholds

    if e.node is None:
        return {}
    L = golden.graph.nodes[e.node].layer
    out = {}
    ch = multi[1] if len(multi) > 1 else 0
    rq = getattr(L, "requant", None)
    if e.stage == "out" and isinstance(rq, Thresholds):
        row = rq.thr[ch if rq.thr.shape[0] > 1 else 0]
        out["acc interval of the expected code [thr_lo, thr_hi)"] = _code_interval(rq, row, e.values[multi])
        if isinstance(observed, int):
            out["acc interval of the observed code [thr_lo, thr_hi)"] = _code_interval(rq, row, observed)
    if e.stage == "acc" and type(L).__name__ in ("Linear", "Conv2d"):
        out.update(_mac_acc_context(golden, e, L, multi))
    return out


def first_clamp(bias, products, acc):
    """The first step k at which the saturating accumulator clamps (ARITHMETIC.md §4: a
    running sum, or tiles whose partial sums and whole-tile additions both saturate), as
    text, or 'none (no clamp)'. Python ints: exact."""
    total, part, T = int(bias), 0, acc.tile
    for k, pk in enumerate(products):
        if T:
            raw = part + pk
            part = min(max(raw, acc.lo), acc.hi)
            if raw != part:
                return f"k={k} (tile partial)"
            if (k + 1) % T == 0 or k == len(products) - 1:
                raw = total + part
                total, part = min(max(raw, acc.lo), acc.hi), 0
                if raw != total:
                    return f"k={k} (tile sum)"
        else:
            raw = total + pk
            total = min(max(raw, acc.lo), acc.hi)
            if raw != total:
                return f"k={k}"
    return "none (no clamp)"


def _mac_acc_context(golden, e, L, multi):
    """Products, decoded operands (operand datapath) and, under saturate, the first clamping
    step of the MAC output element `multi` (Linear (b, o); Conv2d (b, o, oh, ow), k over the
    window in (c, i, j) order, padding taps add 0)."""
    from .oracle import _group_view, _mac_products, im2col

    vec = golden.vectors[e.vector]
    src = golden.graph.nodes[e.node].inputs[0]
    xin = vec["input"] if src == INPUT else vec["stages"][src]["out"]
    b, o = multi[0], multi[1]
    if type(L).__name__ == "Linear":
        view, oo = L, o
        cols, valid = xin[b : b + 1].astype(np.int64), np.ones((1, xin.shape[1]), bool)
    else:
        O, Cg, kh, kw = L.w_codes.shape
        Og = O // L.groups
        g, oo = o // Og, o % Og
        view = _group_view(L, g, Og)
        pad = 0 if L.x_range.qmin <= 0 <= L.x_range.qmax else L.x_range.qmin
        oh, ow = multi[2], multi[3]
        c6, v6 = im2col(
            xin[b : b + 1].astype(np.int64), (kh, kw), L.stride, L.padding, L.dilation, pad, (oh, oh + 1)
        )
        cols = c6[:, 0, ow, g * Cg : (g + 1) * Cg].reshape(1, -1)
        valid = v6[:, 0, ow, g * Cg : (g + 1) * Cg].reshape(1, -1)
    p = _mac_products(view, cols, valid)[0, oo]
    out = {"products p_k (k ascending)": p.tolist()}
    if L.datapath == "operand":
        qw = view.w_codes.reshape(view.out_channels, -1)[oo]
        out["decoded weights W_k (w_lut)"] = L.w_table.lut[
            view.w_table_index[oo], qw - L.w_range.qmin
        ].tolist()
        xv = L.x_table.lut[0, cols[0] - L.x_range.qmin].tolist()
        out["decoded inputs X_k (x_lut)"] = [x if ok else None for x, ok in zip(xv, valid[0].tolist())]
        if not valid.all():
            out["note"] = "None = padding tap (adds 0)"
    if L.acc.overflow == "saturate":
        out["first step where the reference clamped"] = first_clamp(int(L.bias[o]), p.tolist(), L.acc)
    return out


def compare_dump(
    golden,
    dump,
    layers=None,
    vectors=None,
    stages=DUMP_STAGES,
    partial=False,
    allow_other_model=False,
    expect_model_hash=None,
    layout=None,
):
    """Strict DiffReport of a Golden against a Dump (see the module docstring)."""
    lsel, vsel, ssel = _select(golden, layers, vectors, stages)
    layout = expected_layout(golden) if layout is None else layout
    g = golden.graph
    mh = str(golden.attrs["model_hash"])
    rep = DiffReport(model_hash=mh, source=dump.source)
    _check_model(rep, mh, expect_model_hash)
    if dump.model_hash is None:
        rep.notes.append(f"the dump ({dump.kind}) names no model; compared against the golden file's")
    elif dump.model_hash != mh:
        msg = f"the dump was made from model {dump.model_hash}; the golden file from {mh}"
        (rep.notes if allow_other_model else rep.failures).append(
            msg
            + (
                " (allowed by --allow-other-model)"
                if allow_other_model
                else " (--allow-other-model to compare anyway)"
            )
        )
    rep.failures.extend(dump.problems)
    if (
        dump.n_vectors is not None
        and dump.n_vectors != len(golden.vectors)
        and vectors is None
        and not partial
    ):
        rep.failures.append(
            f"the dump holds {dump.n_vectors} vectors; the golden file has {len(golden.vectors)} "
            f"(--vectors or --partial for an intentionally partial dump)"
        )
    rep.counts["input/codes"] = 0
    for n in g.nodes:
        for s in STAGE_ORDER:
            if golden.vectors and s in golden.vectors[0]["stages"][n.name]:
                rep.counts[f"{n.name}/{s}"] = 0
    missing, ignored, layers_seen = [], 0, set()
    for t, e in layout.items():
        o = dump.tensors.get(t)
        if e.vector is None:  # a layer parameter: compared when the dump carries it
            if o is None:
                continue
            if e.layer not in lsel:
                ignored += 1
                continue
            rep.params += 1
            rep.param_elements += e.values.size
            bad = _mismatch(e, o)
            if bad.size:
                k = int(bad[0])
                rep.counts[t] = int(bad.size)
                rep.param_mismatches.append(
                    Divergence(
                        None,
                        e.layer,
                        e.stage,
                        k,
                        tuple(int(i) for i in np.unravel_index(k, e.values.shape)),
                        int(e.values.reshape(-1)[k]),
                        _observed_at(o, k),
                        {"mismatching entries": int(bad.size)},
                    )
                )
            continue
        stage = "input" if e.layer is None else e.stage
        if e.vector not in vsel or (e.layer is not None and e.layer not in lsel):
            ignored += o is not None
            continue
        if o is None:
            if stage in ssel:
                missing.append(t)
            continue
        rep.compared += e.values.size
        rep.tensors += 1
        rep.vectors.add(e.vector)
        rep.stages.add(stage)
        if e.layer is not None:
            layers_seen.add(e.layer)
        bad = _mismatch(e, o)
        key = "input/codes" if e.layer is None else f"{e.layer}/{e.stage}"
        rep.counts[key] += int(bad.size)
        if bad.size and rep.first is None:
            k = int(bad[0])
            multi = tuple(int(i) for i in np.unravel_index(k, e.values.shape))
            feed = (
                {} if e.node is None else feeding_inputs(g, golden.vectors[e.vector], e.node, e.stage, multi)
            )
            try:
                feed = dict(feed, **divergence_context(golden, e, multi, _observed_at(o, k)))
            except Exception as ex:  # noqa: BLE001 - context is a help; never hide the divergence
                feed = dict(feed, context_error=f"{type(ex).__name__}: {ex}")
            if k in o.invalid:
                feed = dict(
                    feed,
                    word=f"{o.invalid[k]!r} is not a {e.width}-bit {'signed' if e.signed else 'unsigned'} "
                    f"hex value (never masked)",
                )
            rep.first = Divergence(
                e.vector,
                "input" if e.layer is None else e.layer,
                "codes" if e.layer is None else e.stage,
                k,
                multi,
                int(e.values.reshape(-1)[k]),
                _observed_at(o, k),
                feed,
            )
    rep.layers = [n.name for n in g.nodes if n.name in layers_seen]
    for key, info in dump.infos.items():
        name = key.split("_", 1)[1]
        if name not in lsel or name not in golden.layers:
            continue
        want = json.loads(json.dumps(golden.layers[name]["info"]))
        if info != want:
            diff_keys = sorted(k for k in set(info) | set(want) if info.get(k) != want.get(k))
            rep.counts[f"layers/{key}/info"] = len(diff_keys)
            rep.param_mismatches.append(
                Divergence(
                    None,
                    name,
                    "info",
                    0,
                    (),
                    want.get(diff_keys[0]),
                    str(info.get(diff_keys[0])),
                    {"differing keys": diff_keys},
                )
            )
        rep.params += 1
        rep.param_elements += len(want)
    if missing:
        vecs = sorted({int(t.split("/")[1]) for t in missing})
        msg = (
            f"{len(missing)} tensors the golden file holds are absent from the dump (vectors {_ranges(vecs)}), "
            f"e.g. {', '.join(missing[:3])}"
        )
        if partial:
            rep.not_compared = missing
        else:
            rep.failures.append(
                msg + " (--layers/--vectors/--stages/--partial for an intentionally partial dump)"
            )
    if ignored:
        rep.notes.append(
            f"{ignored} dump tensors outside the selection (--layers/--vectors) were not compared"
        )
    if rep.compared == 0:
        rep.failures.append("nothing was compared: no tensor of the dump matches a selected golden tensor")
    return rep


def model_hash_arg(expect):
    """A requested model hash, lower-cased, or ValueError (at least 12 leading hex digits)."""
    e = str(expect).lower()
    if not 12 <= len(e) <= 64 or any(c not in "0123456789abcdef" for c in e):
        raise ValueError(f"--model-hash {expect!r}: give the model's SHA-256 (at least 12 hex digits)")
    return e


def _check_model(rep, mh, expect):
    if expect is None:
        return
    if not mh.startswith(model_hash_arg(expect)):
        rep.failures.append(f"the golden file was made from model {mh}; expected model {expect}")


def nested_dump(golden, observed_vectors, source="observed"):
    """A Dump of observed vectors in Golden.vectors' structure (missing stages: absent)."""
    d = Dump(source, "vectors")
    if len(observed_vectors) != len(golden.vectors):
        d.problems.append(
            f"{source}: {len(observed_vectors)} vectors; the golden file has {len(golden.vectors)}"
        )
    for v, ov in enumerate(observed_vectors[: len(golden.vectors)]):
        if ov.get("input") is not None:
            d.tensors[vector_tensor(v)] = Observed(np.asarray(ov["input"], np.int64))
        for i, n in enumerate(golden.graph.nodes):
            for s, a in ov.get("stages", {}).get(n.name, {}).items():
                if a is not None:
                    d.tensors[vector_tensor(v, i, n.name, s)] = Observed(np.asarray(a, np.int64))
    return d


def _check_shapes(dump, layout):
    for t, o in list(dump.tensors.items()):
        e = layout.get(t)
        if e is not None and o.values.shape != e.values.shape:
            dump.problems.append(f"{t}: shape {o.values.shape}; expected {e.values.shape}")
            del dump.tensors[t]


def compare(golden, observed_vectors, source="observed", stages=ALL_STAGES, **kw):
    """DiffReport of a Golden against observed vectors (same structure as Golden.vectors)."""
    layout = expected_layout(golden)
    d = nested_dump(golden, observed_vectors, source)
    _check_shapes(d, layout)
    return compare_dump(golden, d, stages=stages, layout=layout, **kw)


def verify(golden_path, backend="numpy", progress=None, expect_model_hash=None):
    """Recompute every vector of a golden file with `backend` and compare bit for bit
    (every stage of every vector); expect_model_hash: fail when the file is of another model."""
    if expect_model_hash is not None:
        model_hash_arg(expect_model_hash)
    golden = read_golden(golden_path)
    observed = []
    it = golden.vectors if progress is None else progress(golden.vectors, total=len(golden.vectors))
    for ev in it:
        r = golden.graph.run(ev["input"], backend=backend, intermediates=True)
        observed.append(
            {
                "input": ev["input"],
                "stages": {
                    k: {s: np.asarray(a, np.int64) for s, a in st.items()} for k, st in r.stages.items()
                },
            }
        )
    rep = compare(golden, observed, f"backend {backend}", expect_model_hash=expect_model_hash)
    rep.notes = [n for n in rep.notes if "names no model" not in n]
    # The file's layer tables were compared with the stored model's by the strict reader
    # (it refuses any difference); count them, so that OK says what was checked.
    held = [
        a for lay in golden.layers.values() for k, a in lay["datasets"].items() if k not in lay["derived"]
    ]
    rep.params, rep.param_elements = len(held), sum(int(a.size) for a in held)
    rep.params_how = "read from the file, each equal to the stored model's"
    return rep


def diff(expected, observed, **kw):
    """Strict comparison of a golden file (path or Golden) with a dump (HDF5 path or hex
    folder); keyword options as compare_dump (layers, vectors, stages, partial,
    allow_other_model, expect_model_hash)."""
    golden = expected if hasattr(expected, "vectors") else read_golden(expected)
    layout = expected_layout(golden)
    d = load_dump(golden, observed, layout)
    _check_shapes(d, layout)
    return compare_dump(golden, d, layout=layout, **kw)


__all__ = [
    "verify",
    "diff",
    "compare",
    "compare_dump",
    "nested_dump",
    "DiffReport",
    "Divergence",
    "feeding_inputs",
    "STAGE_ORDER",
    "DUMP_STAGES",
    "ALL_STAGES",
]
