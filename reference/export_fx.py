"""Export a user's transformer module to the integer simulator by tracing it (torch.export).

The structural exporter (export_transformer.export_charlm/export_minilm) knows the shipped
modules; this front end reads any module made of the supported ops from its traced ATen
graph and drives the same `_Builder`, so the integer `Graph` and its float64 fake-quant
twin come out of one op list as there (same calibration, same layer settings).

Why torch.export and not torch.fx.symbolic_trace: symbolic tracing turns `x.shape` into
proxies, so `if t > self.context`, `torch.ones(t, t)` and `torch.finfo(x.dtype)` (the
shipped CharTransformer and MiniLM) cannot be traced. torch.export traces with the example
ids, so T is fixed at export (hardware compiles for one sequence length, ARITHMETIC.md §16)
and Python control flow on shapes is resolved then; every node keeps its source line
(`node.meta['stack_trace']`). The batch is free in the graph: reshapes put -1 on axis 0.

Mapping: the residual stream (B, T, C) is (B·T, C) in the graph (every nn.Linear is a §8
`Linear`); a constant added to a token embedding (positions, token type 0) becomes one
positional `Embedding` table; `* alpha` / `/ d` of a matmul or its operand folds into the
MatMul's requantization; scores feeding softmax are uniform (§13) and the masks that reach
them (masked_fill or an additive mask) become the Softmax's causal rule and PadMask input,
after their effect is checked on probe masks. Unsupported ops are all reported in one
ValueError, with source lines and the supported list, before any calibration.
"""

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .export_fx_ops import (
    _SHAPE_ONLY,
    _Act,
    _Bad,
    _Biased,
    _Const,
    _Ids,
    _Keep,
    _Pending,
    _Scaled,
    _Unsupported,
    apply,
    handled,
)
from .export_transformer import TransformerExportConfig, _Builder, _finish
from .from_export import _SKIP, source_line

SUPPORTED = (
    "nn.Embedding (token ids; embeddings of constant indices, e.g. positions, fold into one "
    "positional table), nn.Linear (with nupes_quant codes), nn.LayerNorm (last axis), GELU "
    "(erf or tanh), SiLU, ReLU, softmax (last axis, of a matmul), @/torch.matmul of two "
    "activations, multiplication/division of a matmul or its operand by a positive scalar, "
    "residual add, view/reshape/flatten/(un)squeeze/transpose/permute/split/chunk/slicing (batch axis first), "
    "causal masks (constant, masked_fill or additive) and key-padding masks (ids == / != pad, "
    "or a second attention_mask input with pad_id=) feeding softmax, dropout/clone (identity)"
)
_MASK_MIN = -1e4  # an additive mask or fill at or below this is 'masked' (exp underflows to 0)


@dataclass
class _Walk:
    ep: object
    model: nn.Module
    ids: torch.Tensor
    pad_id: int = None
    calls: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    used: set = field(default_factory=set)
    cache: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # placeholder name -> state-dict target

    # -- deferred builder calls: nothing is calibrated or built until the whole graph passed
    def call(self, method, name, *args, **kw):
        self.calls.append((method, (name,) + args, kw))
        return name

    def unique(self, base):
        k, i = base, 1
        while k in self.used or k == "input":
            i += 1
            k = f"{base}_{i}"
        self.used.add(k)
        return k

    def scoped(self, n):
        """'blocks.0.attn.softmax': the node's name under the module that made it."""
        stack = list((n.meta.get("nn_module_stack") or {}).values())
        path = stack[-1][0] if stack else ""
        return f"{path}.{n.name}" if path else n.name

    def module_of(self, node, kind):
        t = self.params.get(node.name) if hasattr(node, "name") else None
        if t is None or "." not in t:
            raise _Unsupported(f"its {kind} weight is not a parameter of a submodule")
        path = t.rsplit(".", 1)[0]
        return path, self.model.get_submodule(path)

    # -- layouts ------------------------------------------------------------------------------
    def as_flat(self, v):
        if v.flat or len(v.shape) != 3:
            return v
        key = (v.name, "flat")
        if key not in self.cache:
            nm = self.call("reshape", self.unique(f"{v.name}.flat"), v.name, (-1, v.shape[2]))
            self.cache[key] = _Act(nm, v.shape, True, v.prob)
        return self.cache[key]

    def as_torch(self, v):
        if not v.flat:
            return v
        key = (v.name, "torch")
        if key not in self.cache:
            nm = self.call("reshape", self.unique(f"{v.name}.3d"), v.name, (-1,) + tuple(v.shape[1:]))
            self.cache[key] = _Act(nm, v.shape, False, v.prob)
        return self.cache[key]

    def act(self, v, what="this op"):
        """A built activation for v (builds pending adds and matmuls)."""
        if isinstance(v, _Act):
            return v
        if isinstance(v, _Biased):
            if v.built is None:
                v.built = self.positional(v)
            return v.built
        if isinstance(v, _Pending):
            if v.causal or v.keep:
                raise _Unsupported("a masked matmul result must feed softmax")
            if v.built is None:
                v.built = self.matmul(v, "power", v.base)
            return _Act(v.built, v.shape)
        if isinstance(v, _Scaled):
            raise _Unsupported(f"a scaled activation reaches {what}; scale only a matmul or its operands")
        raise _Unsupported(f"its input is not an activation ({type(v).__name__.strip('_')})")

    def positional(self, v):
        """act + constant -> Add(act, positional Embedding of the constant's (T, C) table)."""
        a = v.act
        try:
            c = torch.broadcast_to(v.c, a.shape)
        except RuntimeError:
            c = None
        if (
            c is None
            or len(a.shape) != 3
            or tuple(a.shape[:2]) != tuple(self.ids.shape)
            or not (c == c[0]).all()
        ):
            raise _Unsupported(
                "a constant added to an activation must be a (T, C) table added to a (B, T, C) "
                "embedding, the same for every batch row"
            )
        pos = _Act(
            self.call("embedding", self.unique(f"{a.name}.positional"), c[0], "input", positional=True),
            a.shape,
        )
        if a.flat:
            pos = self.as_flat(pos)
        return _Act(
            self.call("add", self.unique(f"{a.name}.plus_positional"), a.name, pos.name), a.shape, a.flat
        )

    def matmul(self, p, out, base):
        k_max = p.a.shape[-1]
        return self.call(
            "matmul",
            self.unique(base),
            p.a.name,
            p.b.name,
            k_max,
            transpose_b=p.transpose_b,
            alpha=p.alpha,
            out=out,
            a_max=1.0 if p.a.prob else None,
        )

    # -- masks --------------------------------------------------------------------------------
    def expected_masked(self, p, shape):
        ks = (p == 0).reshape(shape[0], *([1] * (len(shape) - 2)), shape[-1])
        return torch.broadcast_to(ks, shape)

    def probes(self):
        g = torch.Generator().manual_seed(0)
        k = (self.ids != self.pad_id).long() if self.pad_id is not None else torch.ones_like(self.ids)
        return [k, 1 - k, torch.randint(0, 2, self.ids.shape, generator=g)]

    def add_mask(self, p, m, fill=None):
        """p with the mask m applied (masked_fill with `fill`, or additive when fill is None):
        its effect is checked on probe masks, then it becomes the Softmax's causal rule or
        PadMask input (or both, for one mask that holds both)."""
        S, T = p.shape, self.ids.shape[1]
        square = S[-2] == S[-1] == T
        causal = torch.ones(S[-2], S[-1], dtype=torch.bool).tril().logical_not().expand(S)

        def ok(val, masked):
            try:
                val = torch.broadcast_to(val, S)
            except RuntimeError:
                return False
            if fill is not None:
                return fill <= _MASK_MIN and bool((val.bool() == masked).all())
            val = val.double()
            return bool((val[~masked] == 0).all() and (val[masked] <= _MASK_MIN).all())

        if isinstance(m, _Const):
            if not m.t.bool().any():
                return p  # masks nothing
            if not (square and ok(m.t, causal)):
                raise _Unsupported("a constant mask on scores must be the causal (lower-triangular) mask")
            return replace(p, causal=True, built=None)
        if isinstance(m, _Keep):
            if len(S) != 4 or S[-1] != T or p.keep not in (None, m.src):
                raise _Unsupported("a padding mask needs (B, H, Tq, T) scores and one mask source")
            for with_causal in (False, True) if square else (False,):
                extra = causal if with_causal else torch.zeros(S, dtype=torch.bool)
                if all(ok(m.fn(k), self.expected_masked(k, S) | extra) for k in self.probes()):
                    return replace(p, keep=m.src, causal=p.causal or with_causal, built=None)
            raise _Unsupported(
                "the mask does not mask exactly the padded keys (and the causal positions) with "
                f"values <= {_MASK_MIN:g} or -inf"
            )
        raise _Unsupported("a mask on scores must be a constant or derived from the ids/attention mask")

    # -- the walk -----------------------------------------------------------------------------
    def walk(self):
        sig, ep = self.ep.graph_signature, self.ep
        kinds = {s.arg.name: s for s in sig.input_specs}
        bad, users = [], 0
        for n in ep.graph.nodes:
            try:
                if n.op == "placeholder":
                    spec = kinds[n.name]
                    kind = spec.kind.name
                    if kind == "USER_INPUT":
                        users += 1
                        if users == 1:
                            self.env[n.name] = _Ids(self.ids)
                        elif users == 2 and self.pad_id is not None:
                            src = self.call("padmask", self.unique("pad_mask"), "input", int(self.pad_id))
                            self.env[n.name] = _Keep(src, lambda k: k.long())
                        else:
                            raise ValueError(
                                f"the model takes {users}+ inputs; supported: ids, or (ids, attention_mask) "
                                "with pad_id="
                            )
                    else:
                        t = ep.state_dict.get(spec.target)
                        t = ep.constants[spec.target] if t is None else t
                        self.params[n.name] = spec.target
                        self.env[n.name] = _Const(t.detach())
                elif n.op == "get_attr":
                    self.env[n.name] = _Const(getattr(ep.graph_module, n.target).detach())
                elif n.op == "output":
                    self.output(n)
                elif n.op == "call_function":
                    self.node(n)
                else:
                    raise _Unsupported(f"node kind {n.op}")
            except _Unsupported as e:
                bad.append((n, str(e)))
                self.env[n.name] = _Bad()
            except (KeyError, IndexError, TypeError, AttributeError, RuntimeError) as e:
                bad.append((n, f"arguments not understood: {type(e).__name__}: {e}"))
                self.env[n.name] = _Bad()
        if bad:
            items = []
            for n, why in bad:
                src = source_line(n)
                items.append(f"{n.target} ({why})" + (f" at {src}" if src else ""))
            raise ValueError(
                f"cannot export {len(items)} op(s) of {type(self.model).__name__}: "
                + "; ".join(items)
                + f"; supported: {SUPPORTED}"
            )
        return self.calls

    def output(self, n):
        outs = n.args[0]
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if len(outs) != 1:
            raise _Unsupported(f"the model returns {len(outs)} values; one is supported")
        v = self.env[outs[0].name]
        if isinstance(v, _Bad):
            return
        v = self.act(v, "the output")
        if not self.calls or self.calls[-1][1][0] != v.name:
            raise _Unsupported("the output must be the last op computed")

    def node(self, n):
        t = n.target
        if t in _SKIP:
            return
        vals = [self.env.get(a.name) for a in n.all_input_nodes]
        if any(isinstance(v, _Bad) for v in vals):
            if not handled(t):
                raise _Unsupported("no integer op for it")
            self.env[n.name] = _Bad()  # reported at its cause
            return
        if all(isinstance(v, _Const) for v in vals) or (t in _SHAPE_ONLY and isinstance(vals[0], _Ids)):
            self.env[n.name] = _Const(self.run(n, lambda v: v.t))  # constant folding (model dtype)
            return
        if any(isinstance(v, _Keep) for v in vals) and all(isinstance(v, (_Const, _Keep)) for v in vals):
            fns = {a.name: self.env[a.name] for a in n.all_input_nodes}

            def fn(k, n=n, fns=fns):
                return self.run(n, lambda v: v.fn(k) if isinstance(v, _Keep) else v.t, fns)

            self.env[n.name] = _Keep(next(v.src for v in vals if isinstance(v, _Keep)), fn)
            return
        self.env[n.name] = self.op(n, t, n.args)

    def run(self, n, f, env=None):
        env = env or self.env

        def sub(a):
            if isinstance(a, torch.fx.Node):
                return f(env[a.name])
            if isinstance(a, (list, tuple)):
                return type(a)(sub(x) for x in a)
            return a

        return n.target(*sub(n.args), **{k: sub(v) for k, v in n.kwargs.items()})

    def v(self, a):
        return self.env[a.name] if isinstance(a, torch.fx.Node) else a

    def op(self, n, t, a):
        return apply(self, n, t, a)


def _trace(model, ids, pad_id):
    args = (ids,) if pad_id is None else (ids, (ids != pad_id).long())
    try:
        return torch.export.export(model, args)
    except Exception as e:  # noqa: BLE001 - any tracing failure is the user's model's
        hint = " (a model called as model(ids, attention_mask) needs pad_id=)" if pad_id is None else ""
        raise ValueError(
            f"torch.export could not trace {type(model).__name__}: {type(e).__name__}: {e}{hint}"
        ) from e


def export_module(model, calib_ids, config=None, pad_id=None):
    """Export a user's transformer module (every nn.Linear with `nupes_quant` codes,
    reference.api.quantize_model) for token ids of length T = calib_ids.shape[1].

    The model is called as model(ids), or as model(ids, attention_mask) when pad_id is
    given (the mask is then derived from the ids in the graph: PadMask). Returns an
    ExportedTransformer; outputs of shape (B, T, C) come out as (B·T, C)."""
    cfg = config or TransformerExportConfig()
    calib_ids = torch.as_tensor(calib_ids, dtype=torch.long)
    if calib_ids.ndim != 2 or calib_ids.shape[0] < 1:
        raise ValueError(f"calib_ids must be (batch, T) token ids, got shape {tuple(calib_ids.shape)}")
    model = model.eval()
    calls = _Walk(_trace(model, calib_ids, pad_id), model, calib_ids, pad_id).walk()
    b = _Builder(cfg, calib_ids.shape[1])
    for method, args, kw in calls:
        getattr(b, method)(*args, **kw)
    return _finish(b, calib_ids, cfg)


__all__ = ["export_module", "SUPPORTED"]
