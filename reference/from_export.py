"""A torch.export program (.pt2) as an ordinary nn.Module the quantizer and exporter take.

`ExportedProgram.module()` cannot be put in eval mode, keeps the batch-size guards of a
static export and holds its weights as graph constants, so the exporter saw no Conv2d/Linear
modules. Instead the program's ATen graph is rebuilt as an fx.GraphModule whose layers are
real nn.Conv2d / nn.Linear / nn.BatchNorm2d / pooling modules carrying the program's weights
(names from the original module paths, e.g. 'stem' for 'stem.weight'), with ReLU, residual
add and flatten as functions. Static and dynamic batch programs give the same module.

Every op outside that set is collected first and reported in one error, each with the
source line torch.export recorded for it.
"""

import operator
import os

import torch
import torch.fx as fx
from torch import nn

aten = torch.ops.aten

_IDENTITY = {
    aten.dropout.default,
    aten.clone.default,
    aten.alias.default,
    aten.detach.default,
    aten.contiguous.default,
    aten.feature_dropout.default,
}
_SKIP = {
    aten._assert_tensor_metadata.default,
    aten.sym_size.int,
    aten._assert_scalar.default,
    aten.sym_constrain_range_for_size.default,
}


def source_line(node):
    """'file:line: code' of the user's code that produced an fx node, or '' if unknown."""
    st = node.meta.get("stack_trace") or getattr(node, "stack_trace", None) or ""
    lines = [ln for ln in st.strip().splitlines() if ln.strip()]
    frames = [i for i, ln in enumerate(lines) if ln.strip().startswith("File ")]
    user = [i for i in frames if f"{os.sep}torch{os.sep}" not in lines[i]]  # the user's code, not torch's
    for i in reversed(user or frames):
        ln = lines[i].strip()
        if ln.startswith("File "):
            parts = ln.split(",")
            f = parts[0][len("File ") :].strip().strip('"')
            line = parts[1].strip().replace("line ", "") if len(parts) > 1 else "?"
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{f}:{line}: {code}"
    return ""


def _val(node):
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v


def _mod_name(used, target, fallback):
    base = target.rsplit(".", 1)[0] if target and "." in target else fallback
    name = base.replace(".", "_")
    k, i = name, 1
    while k in used:
        i += 1
        k = f"{name}_{i}"
    used.add(k)
    return k


def module_from_export(ep):
    """nn.Module (fx.GraphModule, eval mode) equivalent to the torch.export program `ep`."""
    sig = ep.graph_signature
    tensors = {}  # placeholder name -> (tensor, state-dict target)
    user_inputs = []
    for spec in sig.input_specs:
        name = spec.arg.name
        kind = spec.kind.name
        if kind == "USER_INPUT":
            user_inputs.append(name)
        elif kind in ("PARAMETER", "BUFFER"):
            t = ep.state_dict.get(spec.target)
            if t is None:
                t = ep.constants.get(spec.target)
            tensors[name] = (t, spec.target)
        elif kind in ("CONSTANT_TENSOR",):
            tensors[name] = (ep.constants[spec.target], spec.target)
        else:
            raise ValueError(f"torch.export program input {name!r} of kind {kind} is not supported")
    if len(user_inputs) != 1:
        raise ValueError(
            f"only single-input models can be exported; the program takes {len(user_inputs)} inputs"
        )

    root = nn.Module()
    g = fx.Graph()
    env, used, bad = {}, set(), []
    env[user_inputs[0]] = g.placeholder("x")

    def T(a):
        if not isinstance(a, fx.Node) or a.name not in tensors:
            return None
        return tensors[a.name]

    def add_module(mod, target, fallback, x):
        name = _mod_name(used, target, fallback)
        root.add_module(name, mod)
        return g.call_module(name, (env[x.name],))

    def unsupported(n, hint=""):
        src = source_line(n)
        bad.append(f"{n.target} ({n.name}){' at ' + src if src else ''}{hint}")
        # a stand-in value so that the ops after it are still checked (the graph is discarded)
        env[n.name] = g.placeholder(f"_unsupported_{n.name}")

    for n in ep.graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            outs = n.args[0]
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            if len(outs) != 1:
                raise ValueError(
                    f"only single-output models can be exported; the program returns {len(outs)} values"
                )
            if not bad:
                g.output(env[outs[0].name])
            continue
        if n.op != "call_function":
            unsupported(n)
            continue
        t, a = n.target, n.args
        try:
            if t in _SKIP:
                continue
            if t in _IDENTITY:
                env[n.name] = env[a[0].name]
            elif t in (aten.conv2d.default, aten.convolution.default):
                w, wt = T(a[1])
                b = T(a[2]) if len(a) > 2 else None
                if t == aten.convolution.default:
                    stride, pad, dil, transposed, _, groups = a[3], a[4], a[5], a[6], a[7], a[8]
                    if transposed:
                        unsupported(n, " (transposed convolution)")
                        continue
                else:
                    stride = a[3] if len(a) > 3 else 1
                    pad = a[4] if len(a) > 4 else 0
                    dil = a[5] if len(a) > 5 else 1
                    groups = a[6] if len(a) > 6 else 1
                if isinstance(pad, str):
                    unsupported(n, f" (padding={pad!r}: give numeric padding)")
                    continue
                m = nn.Conv2d(
                    w.shape[1] * groups,
                    w.shape[0],
                    tuple(w.shape[2:]),
                    stride,
                    pad,
                    dil,
                    groups,
                    bias=b is not None,
                )
                _copy(m, w, b)
                env[n.name] = add_module(m, wt, n.name, a[0])
            elif t == aten.linear.default:
                w, wt = T(a[1])
                b = T(a[2]) if len(a) > 2 else None
                m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                _copy(m, w, b)
                env[n.name] = add_module(m, wt, n.name, a[0])
            elif t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
                if t == aten.batch_norm.default:
                    w, b, rm, rv, eps = T(a[1]), T(a[2]), T(a[3]), T(a[4]), a[7]
                    if a[5]:
                        unsupported(n, " (batch norm in training mode)")
                        continue
                else:
                    w, b, rm, rv, eps = T(a[1]), T(a[2]), T(a[3]), T(a[4]), a[6]
                nd = _val(a[0]).dim() if _val(a[0]) is not None else 4
                C = rm[0].shape[0]
                m = (nn.BatchNorm2d if nd == 4 else nn.BatchNorm1d)(C, eps=float(eps), affine=w is not None)
                with torch.no_grad():
                    if w is not None:
                        m.weight.copy_(w[0])
                        m.bias.copy_(b[0])
                    m.running_mean.copy_(rm[0])
                    m.running_var.copy_(rv[0])
                m.eval()
                env[n.name] = add_module(m, rm[1], n.name, a[0])
            elif (
                t == operator.getitem
                and a[1] == 0
                and a[0].target
                in (aten._native_batch_norm_legit_no_training.default, aten.max_pool2d_with_indices.default)
            ):
                env[n.name] = env[a[0].name]
            elif t in (aten.relu.default, aten.relu_.default):
                env[n.name] = g.call_function(torch.relu, (env[a[0].name],))
            elif t in (aten.hardtanh.default, aten.hardtanh_.default) and tuple(a[1:3]) == (0.0, 6.0):
                env[n.name] = add_module(nn.ReLU6(), None, n.name, a[0])
            elif (
                t in (aten.add.Tensor, aten.add_.Tensor)
                and isinstance(a[1], fx.Node)
                and n.kwargs.get("alpha", 1) == 1
            ):
                env[n.name] = g.call_function(operator.add, (env[a[0].name], env[a[1].name]))
            elif t in (aten.max_pool2d.default, aten.max_pool2d_with_indices.default):
                k = a[1]
                s = a[2] if len(a) > 2 and a[2] else k
                p = a[3] if len(a) > 3 else 0
                d = a[4] if len(a) > 4 else 1
                c = a[5] if len(a) > 5 else False
                env[n.name] = add_module(nn.MaxPool2d(k, s, p, d, ceil_mode=c), None, n.name, a[0])
            elif t == aten.avg_pool2d.default:
                k = a[1]
                s = a[2] if len(a) > 2 and a[2] else k
                p = a[3] if len(a) > 3 else 0
                env[n.name] = add_module(nn.AvgPool2d(k, s, p), None, n.name, a[0])
            elif t == aten.adaptive_avg_pool2d.default:
                env[n.name] = add_module(nn.AdaptiveAvgPool2d(tuple(a[1])), None, n.name, a[0])
            elif (
                t == aten.mean.dim
                and sorted(int(v) % 4 for v in a[1]) == [2, 3]
                and (a[2] if len(a) > 2 else n.kwargs.get("keepdim", False))
            ):
                env[n.name] = add_module(nn.AdaptiveAvgPool2d(1), None, n.name, a[0])
            elif (
                t == aten.flatten.using_ints
                and (a[1] if len(a) > 1 else 0) == 1
                and (a[2] if len(a) > 2 else -1)
                in (-1, _val(a[0]).dim() - 1 if _val(a[0]) is not None else -1)
            ):
                env[n.name] = g.call_function(torch.flatten, (env[a[0].name], 1))
            elif t in (aten.view.default, aten.reshape.default, aten._unsafe_view.default) and _is_flatten(n):
                env[n.name] = g.call_function(torch.flatten, (env[a[0].name], 1))
            else:
                unsupported(n)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            unsupported(n, f" ({type(e).__name__}: {e})")
    if bad:
        raise ValueError(f"cannot export {len(bad)} op(s) of the torch.export program: " + "; ".join(bad))
    gm = fx.GraphModule(root, g)
    return gm.eval()


def _is_flatten(n):
    """view/reshape (B, C, H, W) -> (B, C*H*W) keeping the batch dimension: a flatten."""
    vi, vo = _val(n.args[0]), _val(n)
    if vi is None or vo is None or vo.dim() != 2 or vi.dim() < 2:
        return False
    return str(vi.shape[0]) == str(vo.shape[0])


def _copy(m, w, b):
    with torch.no_grad():
        m.weight.copy_(w)
        if b is not None:
            m.bias.copy_(b[0])
    m.eval()
