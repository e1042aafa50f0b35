"""The ATen ops export_fx maps onto the transformer `_Builder`, one handler each, and the
symbolic values the walk passes between them (an op is built only once its consumers are
known: a matmul waits for its scale and masks, an added constant for its consumer)."""

import math
import operator
from dataclasses import dataclass

import torch
from torch import nn

from .from_export import _IDENTITY

aten = torch.ops.aten
_SHAPE_ONLY = (aten.zeros_like.default, aten.ones_like.default, aten.full_like.default)
_RESHAPES = (
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.flatten.using_ints,
)


class _Unsupported(Exception):
    pass


class _Bad:
    pass


@dataclass
class _Const:
    t: torch.Tensor


@dataclass
class _Ids:
    t: torch.Tensor  # the example ids


@dataclass
class _Act:
    name: str
    shape: tuple  # torch shape, batch first (the example's batch)
    flat: bool = False  # rank-3 (B, T, C) stored as (B·T, C)
    prob: bool = False  # a softmax output or a layout of one (|x| <= 1)


@dataclass
class _Keep:
    src: str  # the PadMask op
    fn: object  # keep (B, T) 0/1 -> this value


@dataclass
class _Biased:
    act: _Act
    c: torch.Tensor
    built: _Act = None


@dataclass
class _Scaled:
    act: object
    s: float


@dataclass
class _LazyT:  # transpose of the last two axes, read by matmuls as transpose_b
    act: object


@dataclass
class _Pending:  # a matmul not built yet: its scale and masks are still being collected
    a: _Act
    b: _Act
    transpose_b: bool
    alpha: float
    shape: tuple
    causal: bool = False
    keep: str = None
    built: str = None
    base: str = "matmul"  # the name of the matmul node


@dataclass
class _Split:
    act: _Act
    axis: int
    bounds: list


def _scalar(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, _Const) and v.t.numel() == 1:
        return float(v.t)
    return None


def _shape(n):
    val = n.meta.get("val")
    return tuple(int(s) for s in val.shape) if hasattr(val, "shape") else None


def _arg(n, i, key, default):
    return n.args[i] if len(n.args) > i else n.kwargs.get(key, default)


def apply(w, n, t, a):
    """The symbolic value of call_function node n (target t, args a), builder calls queued."""
    v, shape = w.v, _shape(n)
    if t in _IDENTITY or (
        t in (aten.to.dtype, aten._to_copy.default) and shape is not None and _float_out(n)
    ):
        return v(a[0])
    if t == aten.embedding.default:
        W, idx = v(a[0]), v(a[1])
        if not isinstance(W, _Const) or not isinstance(idx, _Ids):
            raise _Unsupported("an embedding must look up the input token ids")
        path, _ = w.module_of(a[0], "embedding")
        return _Act(w.call("embedding", w.unique(path), W.t, "input"), shape)
    if t == aten.linear.default:
        path, mod = w.module_of(a[1], "linear")
        if not isinstance(mod, nn.Linear):
            raise _Unsupported(f"its weight belongs to {type(mod).__name__} {path!r}, not an nn.Linear")
        x = _rows(w, w.act(v(a[0]), "a Linear"), "a Linear")
        last = all(u.op == "output" for u in n.users)
        return _Act(w.call("linear", w.unique(path), mod, x.name, last=last), shape, len(shape) == 3)
    if t == aten.layer_norm.default:
        x = w.act(v(a[0]), "a LayerNorm")
        C = x.shape[-1]
        if list(a[1]) != [C]:
            raise _Unsupported(f"LayerNorm over {list(a[1])}; only the last axis ({C}) is supported")
        wt, bs = _arg(n, 2, "weight", None), _arg(n, 3, "bias", None)
        weight = v(wt).t if wt is not None else torch.ones(C, dtype=torch.float64)
        bias = v(bs).t if bs is not None else None
        name = w.params[wt.name].rsplit(".", 1)[0] if wt is not None and wt.name in w.params else w.scoped(n)
        x = _rows(w, x, "a LayerNorm")
        eps = float(_arg(n, 4, "eps", 1e-5))
        return _Act(w.call("norm", w.unique(name), x.name, weight, bias, eps), shape, x.flat)
    if t in (aten.gelu.default, aten.silu.default, aten.relu.default):
        fn = {aten.silu.default: "silu", aten.relu.default: "relu"}.get(t)
        if fn is None:
            fn = "gelu" if _arg(n, 1, "approximate", "none") == "none" else "gelu_tanh"
        x = w.act(v(a[0]), fn)
        return _Act(w.call("elementwise", w.unique(w.scoped(n)), x.name, fn), shape, x.flat)
    if t in (aten.add.Tensor, aten.add_.Tensor):
        return _add(w, n, v(a[0]), v(a[1]), shape)
    if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        return _scale(w, t, v(a[0]), v(a[1]))
    if t == aten.matmul.default:
        return _matmul(w, v(a[0]), v(a[1]), shape, w.scoped(n))
    if t in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        p, fill = v(a[0]), _scalar(v(a[2]))
        if not isinstance(p, _Pending) or fill is None:
            raise _Unsupported("masked_fill is supported on attention scores before softmax")
        return w.add_mask(p, v(a[1]), fill)
    if t in (aten.softmax.int, aten._softmax.default):
        p = v(a[0])
        if a[1] % len(shape) != len(shape) - 1:
            raise _Unsupported(f"softmax over axis {a[1]}; only the last axis is supported")
        if not isinstance(p, _Pending):
            raise _Unsupported("softmax is supported on the scores of a matmul (uniform scores, §13)")
        return _softmax(w, p, w.scoped(n))
    if t == aten.scaled_dot_product_attention.default:
        return _sdpa(w, n, [v(x) for x in a[:3]], shape)
    if t in _RESHAPES:
        return _reshape(w, w.act(v(a[0]), "a reshape"), shape)
    if t == aten.transpose.int:
        r = len(shape)
        d0, d1 = sorted((a[1] % r, a[2] % r))
        if d0 == d1:
            return v(a[0])
        if (d0, d1) == (r - 2, r - 1) and all(
            u.target == aten.matmul.default and u.args[1] is n and u.args[0] is not n for u in n.users
        ):
            return _LazyT(v(a[0]))
        return _transpose(w, w.act(v(a[0]), "a transpose"), d0, d1)
    if t == aten.permute.default:
        x = w.act(v(a[0]), "a permute")
        dims, cur = [d % len(shape) for d in a[1]], list(range(len(shape)))
        for i, d in enumerate(dims):
            j = cur.index(d)
            if j != i:
                x = _transpose(w, x, i, j)
                cur[i], cur[j] = cur[j], cur[i]
        return x
    if t in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
        x = w.act(v(a[0]), "a split")
        axis = _arg(n, 2, "dim", 0) % len(x.shape)
        sizes = [int(o.shape[axis]) for o in n.meta["val"]]
        bounds = [(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes))]
        return _Split(x, axis, bounds)
    if t is operator.getitem and isinstance(v(a[0]), _Split):
        sp = v(a[0])
        return _slice(w, sp.act, sp.axis, *sp.bounds[a[1]], shape)
    if t == aten.slice.Tensor:
        x = w.act(v(a[0]), "a slice")
        axis = _arg(n, 1, "dim", 0) % len(x.shape)
        if _arg(n, 4, "step", 1) != 1:
            raise _Unsupported("a slice with a step")
        start, stop, _ = slice(_arg(n, 2, "start", None), _arg(n, 3, "end", None)).indices(x.shape[axis])
        if (start, stop) == (0, x.shape[axis]):
            return x
        return _slice(w, x, axis, start, stop, shape)
    if t in (aten.eq.Scalar, aten.ne.Scalar) and isinstance(v(a[0]), _Ids):
        pad = int(a[1])
        key = ("pad", pad)
        if key not in w.cache:
            w.cache[key] = w.call("padmask", w.unique("pad_mask"), "input", pad)
        return _Keep(w.cache[key], (lambda k: k == 0) if t == aten.eq.Scalar else (lambda k: k != 0))
    raise _Unsupported("no integer op for it")


_HANDLED = {
    aten.to.dtype,
    aten._to_copy.default,
    aten.embedding.default,
    aten.linear.default,
    aten.layer_norm.default,
    aten.gelu.default,
    aten.silu.default,
    aten.relu.default,
    aten.add.Tensor,
    aten.add_.Tensor,
    aten.mul.Tensor,
    aten.mul.Scalar,
    aten.div.Tensor,
    aten.div.Scalar,
    aten.matmul.default,
    aten.masked_fill.Scalar,
    aten.masked_fill.Tensor,
    aten.softmax.int,
    aten._softmax.default,
    aten.scaled_dot_product_attention.default,
    *_RESHAPES,
    aten.transpose.int,
    aten.permute.default,
    aten.split.Tensor,
    aten.split_with_sizes.default,
    aten.chunk.default,
    aten.slice.Tensor,
    aten.eq.Scalar,
    aten.ne.Scalar,
    operator.getitem,
}


def handled(t):
    """Whether op t is one this module maps (with supported arguments) onto the builder."""
    return t in _HANDLED or t in _IDENTITY or t in _SHAPE_ONLY


def _float_out(n):
    return n.meta["val"].dtype.is_floating_point


def _rows(w, x, what):
    if len(x.shape) == 3:
        return w.as_flat(x)
    if len(x.shape) != 2:
        raise _Unsupported(f"{what} on a rank-{len(x.shape)} input; supported: (B, C) or (B, T, C)")
    return x


def _add(w, n, x, y, shape):
    if n.kwargs.get("alpha", 1) != 1:
        raise _Unsupported("add with alpha != 1")
    if isinstance(x, _Pending) or isinstance(y, _Pending):
        p, m = (x, y) if isinstance(x, _Pending) else (y, x)
        return w.add_mask(p, m)
    if isinstance(x, _Const) != isinstance(y, _Const):
        act, c = (x, y.t) if isinstance(y, _Const) else (y, x.t)
        if isinstance(act, _Biased):
            return _Biased(act.act, act.c + c)  # in the model's dtype, as the structural exporter
        if isinstance(act, _Act):
            return _Biased(act, c)
    if not all(isinstance(z, (_Act, _Biased, _Pending, _Scaled)) for z in (x, y)):
        raise _Unsupported(
            "add of a scalar or a non-activation; residual adds of two activations are supported"
        )
    xa, ya = w.act(x, "an add"), w.act(y, "an add")
    if tuple(xa.shape) != tuple(ya.shape):
        raise _Unsupported(f"a broadcasting add {xa.shape} + {ya.shape}")
    if xa.flat != ya.flat:
        xa, ya = w.as_flat(xa), w.as_flat(ya)
    return _Act(w.call("add", w.unique(w.scoped(n)), xa.name, ya.name), shape, xa.flat)


def _scale(w, t, x, y):
    s = _scalar(y)
    if s is None and t in (aten.mul.Tensor, aten.mul.Scalar):
        s, x = _scalar(x), y
    if s is None:
        raise _Unsupported("an element-wise product of two tensors; only scaling by a scalar is supported")
    if t in (aten.div.Tensor, aten.div.Scalar):
        s = 1.0 / s if s else float("inf")
    if not (math.isfinite(s) and s > 0):
        raise _Unsupported(f"a scale of {s!r}; only finite positive scales are supported")
    if isinstance(x, _Pending):
        return _Pending(**{**x.__dict__, "alpha": x.alpha * s, "built": None})
    if isinstance(x, _Scaled):
        return _Scaled(x.act, x.s * s)
    return _Scaled(w.act(x, "a scale"), s)


def _matmul(w, x, y, shape, base):
    alpha, tb = 1.0, False
    if isinstance(x, _Scaled):
        alpha, x = alpha * x.s, x.act
    if isinstance(y, _LazyT):
        tb, y = True, y.act
    if isinstance(y, _Scaled):
        alpha, y = alpha * y.s, y.act
    xa, ya = w.as_torch(w.act(x, "a matmul")), w.as_torch(w.act(y, "a matmul"))
    if len(xa.shape) < 3 or len(xa.shape) != len(ya.shape) or xa.shape[:-2] != ya.shape[:-2]:
        raise _Unsupported(
            f"matmul of {xa.shape} and {ya.shape}; batched operands of one shape are supported"
        )
    return _Pending(xa, ya, tb, alpha, shape, base=base)


def _softmax(w, p, base):
    sc = w.matmul(p, "uniform", f"{base}.scores")
    return _Act(
        w.call("softmax", w.unique(base), sc, p.keep, p.causal, max_len=p.shape[-1]), p.shape, prob=True
    )


def _sdpa(w, n, qkv, shape):
    """F.scaled_dot_product_attention: scores (scale, is_causal, attn_mask), softmax, @ v."""
    q, k, v = qkv
    mask_node = _arg(n, 3, "attn_mask", None)
    mask = w.v(mask_node)
    if _arg(n, 4, "dropout_p", 0.0) or n.kwargs.get("enable_gqa", False):
        raise _Unsupported("attention dropout or grouped-query attention")
    base = w.scoped(n)
    qs, ks = _shape(n.args[0]), _shape(n.args[1])
    scale = n.kwargs.get("scale")
    scale = 1.0 / math.sqrt(qs[-1]) if scale is None else float(scale)
    q = _Scaled(q.act, q.s * scale) if isinstance(q, _Scaled) else _Scaled(q, scale)
    p = _matmul(w, q, _LazyT(k), qs[:-1] + ks[-2:-1], f"{base}.qk")
    if _arg(n, 5, "is_causal", False):
        p = w.add_mask(
            p, _Const(torch.ones(qs[-2], ks[-2], dtype=torch.bool).tril().logical_not()), -math.inf
        )
    if mask is not None:
        fill = None  # a float mask is added
        if _is_bool(mask_node):  # a bool mask: True takes part
            fill = -math.inf
            if isinstance(mask, _Const):
                mask = _Const(mask.t.logical_not())
            elif isinstance(mask, _Keep):
                mask = _Keep(mask.src, lambda kp, fn=mask.fn: fn(kp).logical_not())
        p = w.add_mask(p, mask, fill)
    prob = _softmax(w, p, f"{base}.softmax")
    return w.act(_Pending(prob, w.as_torch(w.act(v, "attention")), False, 1.0, shape, base=base))


def _is_bool(node):
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return val is not None and val.dtype == torch.bool


def _reshape(w, x, shape):
    if shape[0] != x.shape[0]:
        raise _Unsupported(f"a reshape {x.shape} -> {shape} that does not keep the batch axis first")
    if tuple(shape) == tuple(x.shape):
        return x
    target = (-1,) + tuple(shape[1:]) if len(shape) != 3 else (-1, shape[2])
    return _Act(
        w.call("reshape", w.unique(f"{x.name}.reshape"), x.name, target), shape, len(shape) == 3, x.prob
    )


def _transpose(w, x, d0, d1):
    x = w.as_torch(x)
    if d0 == 0:
        raise _Unsupported("a transpose that moves the batch axis")
    s = list(x.shape)
    s[d0], s[d1] = s[d1], s[d0]
    return _Act(w.call("transpose", w.unique(f"{x.name}.t"), x.name, d0, d1), tuple(s), False, x.prob)


def _slice(w, x, axis, start, stop, shape):
    if axis == 0:
        raise _Unsupported("a slice of the batch axis")
    if x.flat and axis != 2:
        x = w.as_torch(x)
    gaxis = 1 if x.flat else axis
    return _Act(
        w.call("slice", w.unique(f"{x.name}.slice"), x.name, gaxis, start, stop), shape, x.flat, x.prob
    )
