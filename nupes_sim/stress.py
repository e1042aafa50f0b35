"""Corner-case stimulus (`nupes-sim golden --stress`) and per-layer coverage of golden vectors.

Random input codes almost never put an accumulator exactly on a requantization threshold or
drive it into saturation, so an RTL comparing with `>` instead of `>=`, or clamping only the
final sum, can pass them. `stress_inputs` builds inputs for every Linear/Conv2d layer that
reads the graph input directly:
- saturation / wrap patterns per output channel (where the layer's worst case exceeds its
  accumulator): every product at its maximum, at its minimum, maximum for the first half of
  k then minimum (a clamp that must be undone step by step), and the reverse;
- for every reachable threshold t of the layer's requantizer, inputs whose accumulator is t
  and t - 1 (found by coordinate descent on the exact sum; the coverage report says which
  were hit).
Deeper layers are not targeted (their inputs are codes computed by earlier layers); the
coverage report states what the vectors reached for every layer.
"""

import numpy as np

from .golden import input_range
from .golden.schema import requant_input_stage
from .graph import INPUT
from .oracle import _mac_products
from .tables import Thresholds


class _Row:
    """One output channel of a MAC layer, in the shape oracle._mac_products expects."""

    def __init__(self, layer, o):
        self.w_codes = layer.w_codes.reshape(layer.w_codes.shape[0], -1)[o : o + 1]
        self.out_channels = 1
        self.w_table_index = layer.w_table_index[o : o + 1]
        for name in ("datapath", "w_table", "x_table", "p_table", "w_range", "x_range"):
            setattr(self, name, getattr(layer, name, None))


def _products(layer, o, codes):
    """P[c, k]: product of tap k of output channel o when its input code is codes[c]."""
    K = layer.w_codes.reshape(layer.w_codes.shape[0], -1).shape[1]
    cols = np.repeat(codes[:, None], K, axis=1)
    return _mac_products(_Row(layer, o), cols, np.ones(cols.shape, bool))[:, 0, :]


def _taps(layer, shape, o, pos):
    """Flat input positions of the K taps of output (o, pos) (-1 for a padding tap)."""
    if type(layer).__name__ == "Linear":
        return np.arange(int(np.prod(shape)))
    C, H, W = shape
    O, Cg, kh, kw = layer.w_codes.shape
    g = o // (O // layer.groups)
    oh, ow = pos
    out = []
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                h = oh * layer.stride[0] - layer.padding[0] + i * layer.dilation[0]
                w = ow * layer.stride[1] - layer.padding[1] + j * layer.dilation[1]
                out.append((g * Cg + c) * H * W + h * W + w if 0 <= h < H and 0 <= w < W else -1)
    return np.array(out)


def _out_positions(layer, shape):
    if type(layer).__name__ == "Linear":
        return [None]
    _, H, W = shape
    _, _, kh, kw = layer.w_codes.shape
    ho = (H + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
    wo = (W + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
    return [(oh, ow) for oh in range(ho) for ow in range(wo)]


def _solve(P, valid, bias, target, x, rng, sweeps=4, restarts=30):
    """Tap codes (indices into P's rows) whose exact sum bias + sum_k P[x_k, k] is target, or as
    close as coordinate descent with random restarts gets; x: starting indices."""
    ks = np.flatnonzero(valid)
    best, best_d = x.copy(), None
    for _ in range(restarts):
        S = int(bias) + int(P[x[ks], ks].sum())
        for _ in range(sweeps):
            if S == target:
                break
            for k in rng.permutation(ks):
                cand = S - int(P[x[k], k]) + P[:, k]
                d = np.abs(cand - target)
                c = int(rng.choice(np.flatnonzero(d == d.min())))  # random among the best: no cycles
                S = int(cand[c])
                x[k] = c
                if S == target:
                    break
        if best_d is None or abs(S - target) < best_d:
            best, best_d = x.copy(), abs(S - target)
        if S == target:
            break
        kick = rng.choice(ks, size=min(len(ks), 3), replace=False)  # perturb a few taps and retry
        x[kick] = rng.integers(0, P.shape[0], len(kick))
    return best


def stress_inputs(graph, input_shape, seed=0, max_vectors=1024):
    """Stress input codes (N, *input_shape) for the graph (see the module docstring)."""
    rng = np.random.default_rng(seed)
    rg = input_range(graph) or (-128, 127)
    codes = np.arange(rg[0], rg[1] + 1, dtype=np.int64)
    shape = tuple(input_shape)
    size = int(np.prod(shape))
    plans = []  # (node, o, pos, kind, target)
    for n in graph.nodes:
        L = n.layer
        if tuple(n.inputs) != (INPUT,) or type(L).__name__ not in ("Linear", "Conv2d"):
            continue
        positions = _out_positions(L, shape)
        O = L.w_codes.shape[0]
        rq = L.requant
        chans, sat, thr = [], [], []
        for o in range(O):
            P = _products(L, o, codes)
            pos = positions[(o * 7) % len(positions)]
            taps = _taps(L, shape, o, pos)
            valid = taps >= 0
            smax = int(L.bias[o]) + int(P.max(axis=0)[valid].sum())
            smin = int(L.bias[o]) + int(P.min(axis=0)[valid].sum())
            chans.append((P, pos, taps, max(smin, L.acc.lo), min(smax, L.acc.hi)))
            if L.acc.overflow != "exact" and (smax > L.acc.hi or smin < L.acc.lo):
                for kind in ("max", "min", "max_then_min", "min_then_max"):
                    sat.append((L, o, pos, P, taps, kind, None))
        if isinstance(rq, Thresholds):
            shared = rq.thr.shape[0] == 1
            for r in range(rq.thr.shape[0]):
                users = list(range(O)) if shared else [r]
                turn = 0
                for t in np.unique(rq.thr[r]):
                    for tv in (int(t), int(t) - 1):
                        cand = [o for o in users if chans[o][3] <= tv <= chans[o][4]]
                        if cand:  # a channel whose accumulator can reach tv (round robin)
                            o = cand[turn % len(cand)]
                            turn += 1
                            P, pos, taps = chans[o][:3]
                            thr.append((L, o, pos, P, taps, "threshold", tv))
        plans.extend(sat + thr)
    if not plans:
        raise ValueError(
            "--stress: no Linear/Conv2d layer reads the graph input directly, so no corner "
            "case can be targeted; use --random"
        )
    if len(plans) > max_vectors:
        idx = np.linspace(0, len(plans) - 1, max_vectors).round().astype(int)
        plans = [plans[i] for i in np.unique(idx)]
    out = np.empty((len(plans), size), np.int64)
    for v, (L, o, pos, P, taps, kind, target) in enumerate(plans):
        x = rng.integers(0, len(codes), size)
        valid = taps >= 0
        K = len(taps)
        amax, amin = P.argmax(axis=0), P.argmin(axis=0)
        if kind == "threshold":
            xi = x[np.where(valid, taps, 0)]
            xi = _solve(P, valid, L.bias[o], target, xi, rng)
            x[taps[valid]] = xi[valid]
        else:
            half = np.arange(K) < K // 2
            pick = {
                "max": amax,
                "min": amin,
                "max_then_min": np.where(half, amax, amin),
                "min_then_max": np.where(half, amin, amax),
            }[kind]
            x[taps[valid]] = pick[valid]
        out[v] = codes[x]
    return out.reshape((len(plans),) + shape)


def coverage(golden):
    """[{layer, ...counts}] of what a Golden's vectors reached per layer with an accumulator:
    thresholds hit exactly and at t - 1 by the value the requantizer reads (the rows of the
    layer's requant_table: reachable thresholds only),
    accumulators changed by saturation or wrap (acc != acc_exact), codes at out_qmin/out_qmax."""
    rows = []
    for i, n in enumerate(golden.graph.nodes):
        L = n.layer
        st0 = golden.vectors[0]["stages"][n.name] if golden.vectors else {}
        if "acc" not in st0:
            continue
        acc = np.stack([v["stages"][n.name]["acc"][0] for v in golden.vectors])
        exact = np.stack([v["stages"][n.name]["acc_exact"][0] for v in golden.vectors])
        out = np.stack([v["stages"][n.name]["out"][0] for v in golden.vectors])
        r = {
            "layer": n.name,
            "elements": int(acc.size),
            "overflow": L.acc.overflow,
            "changed_by_overflow": int(
                ((exact < L.acc.lo) | (exact > L.acc.hi)).sum()
                if L.acc.overflow == "exact"
                else (acc != exact).sum()
            ),
        }
        rq = getattr(L, "requant", None)
        if rq is not None:
            r["at_qmin"] = int((out == rq.qmin).sum())
            r["at_qmax"] = int((out == rq.qmax).sum())
        tab = golden.layers[n.name]["datasets"].get("requant_table")
        if tab is not None:  # the thresholds the requantizer's input can reach (docs/GOLDEN.md)
            src = requant_input_stage(L)  # acc, or Softmax's prob
            vals = acc if src == "acc" else np.stack([v["stages"][n.name][src][0] for v in golden.vectors])
            if rq.thr.shape[0] == 1:
                seen = [set(np.unique(vals).tolist())]
            else:  # one row per output channel: axis 1 of the stacked (vector, channel, ...) values
                ch = np.moveaxis(vals, 1, -1).reshape(-1, vals.shape[1]) if vals.ndim > 1 else vals[:, None]
                seen = [set(np.unique(ch[:, row]).tolist()) for row in range(rq.thr.shape[0])]
            pairs = tab[:, :2].tolist()
            r.update(
                thresholds=len(pairs),
                thresholds_hit=sum(t in seen[row] for row, t in pairs),
                thresholds_minus_1_hit=sum(t - 1 in seen[row] for row, t in pairs),
            )
        rows.append(r)
    return rows


def coverage_lines(rows):
    """One text line per layer."""
    out = []
    for r in rows:
        parts = []
        if "thresholds" in r:
            parts.append(
                f"thresholds hit exactly {r['thresholds_hit']}/{r['thresholds']}, "
                f"at t-1 {r['thresholds_minus_1_hit']}/{r['thresholds']}"
            )
        verb = {"saturate": "saturated", "wrap": "wrapped", "exact": "out of range (exact)"}[r["overflow"]]
        parts.append(f"{verb} {r['changed_by_overflow']} of {r['elements']} accumulators")
        if "at_qmin" in r:
            parts.append(f"codes at qmin {r['at_qmin']}, at qmax {r['at_qmax']}")
        out.append(f"coverage {r['layer']}: " + "; ".join(parts))
    return out


__all__ = ["stress_inputs", "coverage", "coverage_lines"]
