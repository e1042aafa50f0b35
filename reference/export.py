"""Export a (batch-norm folded, weight-quantized) PyTorch model to the integer simulator.

The exporter walks the torch.fx graph of the model, fuses ReLU/ReLU6 into the preceding
op's requantization, calibrates a power format for every activation tensor, and produces
two views of one op list:

- `graph`: the integer `nupes_sim.graph.Graph` (codes, LUTs, thresholds, bias tables);
- `fake_quant(x)`: a float64 PyTorch execution of the same ops on decoded weights with the
  same activation quantizers, the float reference the integer model must match up to the
  table rounding bound of docs/ARITHMETIC.md §9.

Supported ops: Conv2d, Linear (each must carry `nupes_quant` codes from
`nupes_sim.reference`, or is quantized here by RTN-power with the given exponent), ReLU,
ReLU6, residual add, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten. Anything else is
an error listing these.
"""

import math
import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from nupes_sim.formats import CodebookFormat, PowerFormat, UniformWeightFormat
from nupes_sim.graph import Graph, Node
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d

from .activation import calibrate_activation, quantize_act

# the exporter's historical name for the one activation calibrator (export_transformer uses it)
calibrate_format = calibrate_activation

SUPPORTED = "Conv2d, Linear, ReLU, ReLU6, residual add, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Flatten"
_RELU_FUNCS = (F.relu, torch.relu)
_ADD_FUNCS = (operator.add, torch.add)
_FLATTEN_FUNCS = (torch.flatten,)


@dataclass
class ExportConfig:
    """Integer settings of the exported graph.

    *_lut_bits: magnitude bits of the largest LUT entry; each table's fractional bits are
    chosen so its largest entry lies in [2^(bits-1), 2^bits).
    """

    datapath: str = "operand"
    w_lut_bits: int = 20
    x_lut_bits: int = 16
    p_lut_bits: int = 24
    add_lut_bits: int = 16
    acc: Accumulator = field(default_factory=lambda: Accumulator(48, "saturate"))
    act_bits: int = 8
    act_exponent: float = None  # None: searched per activation tensor on the calibration data
    act_percentile: float = 100.0
    rounding: str = "half_even"


def _frac_bits(max_abs, bits):
    """Fractional bits so that round(max_abs·2^F) < 2^bits, clamped to [0, 40]."""
    if max_abs <= 0:
        return bits
    return int(min(40, max(0, bits - 1 - math.floor(math.log2(max_abs)))))


@dataclass
class _Op:
    kind: str  # mac | add | maxpool | avgpool | gap | flatten
    name: str
    inputs: tuple
    module: object = None
    relu: bool = False
    clip_max: float = None
    out: str = None  # value name produced


def _weight_codes(module, name):
    q = getattr(module, "nupes_quant", None)
    if q is None:
        raise ValueError(f"layer {name!r} has no quantized weights (nupes_quant); quantize the model first")
    codes = np.asarray(q.codes.cpu().numpy() if torch.is_tensor(q.codes) else q.codes).astype(np.int64)
    codes = codes.reshape(module.weight.shape)
    if hasattr(q, "format"):  # baselines.AsymWeight, codebooks.CodebookWeight: their own format
        return codes, q.format()
    scales = np.asarray(q.scales.cpu().numpy() if torch.is_tensor(q.scales) else q.scales, dtype=np.float64)
    gran = q.granularity
    if gran == "group":
        scales = scales.reshape(codes.shape[0], -1)
    elif gran == "channel":
        scales = scales.reshape(-1)
    else:
        scales = scales.reshape(1)
    full = bool(getattr(q, "full_range", False))
    fmt = PowerFormat(int(q.bits), True, float(q.exponent), scales, gran, int(q.group_size or 0), full)
    return codes, fmt


class Exported:
    """The integer graph, the float64 fake-quant reference, and the formats at each tensor."""

    def __init__(self, ops, formats, weights, graph, input_name):
        self.ops, self.formats, self.weights, self.graph = ops, formats, weights, graph
        self.input_name = input_name

    @property
    def input_format(self):
        return self.formats[self.input_name]

    def encode_input(self, x):
        return self.input_format.encode(np.asarray(x, dtype=np.float64))

    def logit_unit(self):
        return self.graph.nodes[-1].layer.unit

    def fake_quant(self, x, return_values=False):
        """Float64 forward of the same ops: decoded weights, activations quantized at every
        point the integer graph requantizes (the last layer's output stays real)."""
        vals = {self.input_name: quantize_act(self.input_format, torch.as_tensor(x))}
        for op in self.ops:
            y = _apply(op, [vals[i] for i in op.inputs], self.weights)
            fmt = self.formats.get(op.out)
            if fmt is not None and op.kind not in ("maxpool", "flatten"):
                y = quantize_act(fmt, y)
            vals[op.out] = y
        out = vals[self.ops[-1].out]
        return (out, vals) if return_values else out


def _trace_ops(model, before_folding=False):
    """(ops, input name) of a model; every construct that cannot be exported is collected
    over the whole graph first and reported in one ValueError, each with its source line.
    before_folding: the check run on the user's model before batch norms are folded (they
    pass through; fold_batchnorm names those it cannot fold)."""
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    graph = tracer.trace(model)
    gm = fx.GraphModule(model, graph)
    modules = dict(gm.named_modules())
    ops, alias, placeholder = [], {}, None
    bad = []  # (node, message) of everything that cannot be exported

    def src(n):
        return alias.get(n.name, n.name)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if placeholder is not None:
                raise ValueError("only single-input models can be exported")
            placeholder = node.name
            continue
        if node.op == "output":
            continue
        mod = modules.get(node.target) if node.op == "call_module" else None
        is_relu = (
            isinstance(mod, (nn.ReLU, nn.ReLU6))
            or (node.op == "call_function" and node.target in _RELU_FUNCS)
            or (node.op == "call_method" and node.target == "relu")
        )
        if is_relu:
            prev = node.args[0]
            last = ops[-1] if ops else None
            if (
                last is None
                or last.out != src(prev)
                or last.relu
                or len(prev.users) != 1
                or last.kind in ("maxpool", "flatten")
            ):
                bad.append(
                    (node, f"ReLU {node.name!r} must directly follow a conv/linear/add/pool used only by it")
                )
                continue
            last.relu = True
            last.clip_max = 6.0 if isinstance(mod, nn.ReLU6) else None
            alias[node.name] = last.out
            continue
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            ops.append(_Op("mac", node.target, (src(node.args[0]),), mod, out=node.name))
        elif node.op == "call_function" and node.target in _ADD_FUNCS:
            a, b = node.args[:2]
            if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
                raise ValueError(f"add {node.name!r} must add two tensors")
            ops.append(_Op("add", node.name, (src(a), src(b)), out=node.name))
        elif isinstance(mod, nn.MaxPool2d):
            if mod.dilation not in (1, (1, 1)) or mod.ceil_mode:
                raise ValueError(f"MaxPool2d {node.target!r}: dilation and ceil_mode are not supported")
            ops.append(_Op("maxpool", node.target, (src(node.args[0]),), mod, out=node.name))
        elif isinstance(mod, nn.AdaptiveAvgPool2d):
            if mod.output_size not in (1, (1, 1)):
                raise ValueError(f"AdaptiveAvgPool2d {node.target!r}: only output size 1 is supported")
            ops.append(_Op("gap", node.target, (src(node.args[0]),), mod, out=node.name))
        elif isinstance(mod, nn.AvgPool2d):
            if mod.padding not in (0, (0, 0)):
                raise ValueError(f"AvgPool2d {node.target!r}: padding is not supported")
            ops.append(_Op("avgpool", node.target, (src(node.args[0]),), mod, out=node.name))
        elif isinstance(mod, nn.Flatten) or (node.op == "call_function" and node.target in _FLATTEN_FUNCS):
            ops.append(_Op("flatten", node.name, (src(node.args[0]),), out=node.name))
        elif (
            isinstance(mod, nn.Identity)
            or isinstance(mod, nn.Dropout)
            or (before_folding and isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)))
        ):
            alias[node.name] = src(node.args[0])
        else:
            bad.append((node, _unsupported_message(node, mod)))
    if any(msg for _, msg in bad):
        raise ValueError(unsupported_error(bad))
    return ops, placeholder


def _unsupported_message(node, mod):
    """What is refused and, where there is one, the supported way to write it."""
    if (
        node.op == "call_method"
        and node.target == "size"
        and all(u.op == "call_method" and u.target in ("view", "reshape") for u in node.users)
    ):
        return None  # part of x.view(x.size(0), -1): reported once, at the view
    what = (
        type(mod).__name__
        if mod is not None
        else f"{node.op} {getattr(node.target, '__name__', node.target)}"
    )
    msg = f"{node.target if mod is not None else node.name} ({what})"
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten"):
        msg += " - write torch.flatten(x, 1) instead"
    return msg


def unsupported_error(bad):
    """One message listing every refused op with its source line."""
    from .from_export import source_line

    items = []
    for node, msg in bad:
        if msg is None:
            continue
        src = source_line(node)
        items.append(msg + (f" at {src}" if src else ""))
    return f"cannot export {len(items)} op(s): " + "; ".join(items) + f"; supported: {SUPPORTED}"


class ActivationWalk:
    """The exporter's op walk over the calibration inputs, one op at a time.

    Each op runs in float64 on its decoded weights with every upstream value already
    quantized, and the format of its output is calibrated (activation.calibrate_activation)
    on exactly those values: the formats and fake-quant values of the integer graph.
    `input_of(name)` advances the walk up to the mac op `name` and returns its fake-quant
    input, so a weight quantizer can optimize layer `name` against the input the integer graph
    will feed it; the ops before it must carry their quantized weights (nupes_quant) by then.
    `finish()` runs the remaining ops (export_model builds the graph from its result).
    """

    def __init__(self, model, calib, config=None, input_signed=None):
        self.cfg = cfg = config or ExportConfig()
        self.model = model.eval()
        self.ops, self.inp = _trace_ops(self.model)
        calib = torch.as_tensor(calib).double()
        signed_in = bool((calib < 0).any()) if input_signed is None else input_signed
        self.formats = {
            self.inp: calibrate_activation(
                calib.numpy(), cfg.act_bits, signed_in, cfg.act_exponent, cfg.act_percentile, name="input"
            )
        }
        self.vals = {self.inp: quantize_act(self.formats[self.inp], calib)}
        self.weights, self.shapes, self.i = {}, {}, 0

    def _step(self):
        op, cfg = self.ops[self.i], self.cfg
        if op.kind == "mac":
            self.weights[op.name] = _weight_codes(op.module, op.name)
        y = _apply(op, [self.vals[n] for n in op.inputs], self.weights)  # upstream already quantized
        if op.kind in ("maxpool", "flatten"):
            self.formats[op.out] = self.formats[op.inputs[0]]  # codes pass through unchanged
        elif self.i < len(self.ops) - 1:
            signed = not op.relu and bool((y < 0).any())
            self.formats[op.out] = calibrate_activation(
                y.numpy(),
                cfg.act_bits,
                signed,
                cfg.act_exponent,
                cfg.act_percentile,
                name=f"{op.name}: output",
            )
        self.shapes[op.out] = tuple(y.shape)
        self.vals[op.out] = (
            quantize_act(self.formats[op.out], y)
            if (op.out in self.formats and op.kind not in ("maxpool", "flatten"))
            else y
        )
        self.i += 1

    def input_of(self, name):
        """Float64 fake-quant input of mac op `name` (None: no such op after the walk's position)."""
        while self.i < len(self.ops):
            op = self.ops[self.i]
            if op.kind == "mac" and op.name == name:
                return self.vals[op.inputs[0]]
            self._step()
        return None

    def finish(self):
        """(ops, input name, formats, weights, shapes) after running every op."""
        while self.i < len(self.ops):
            self._step()
        return self.ops, self.inp, self.formats, self.weights, self.shapes


def export_model(model, calib, config=None, input_signed=None, walk=None):
    """Export a folded, weight-quantized model to (integer graph, float64 fake-quant view).

    calib: float input batch (torch tensor) used to calibrate activation formats.
    walk: an ActivationWalk of this model (for example the one that fed its weight
    quantizers, see pipeline.quantize_for_export) to finish instead of starting a new one.
    """
    if walk is None:
        walk = ActivationWalk(model, calib, config, input_signed)
    elif config is not None and config is not walk.cfg:
        raise ValueError("export_model: config differs from the walk's config; pass one of them")
    cfg = walk.cfg
    ops, inp, formats, weights, shapes = walk.finish()
    # 2. integer graph
    nodes = []
    for i, op in enumerate(ops):
        last = i == len(ops) - 1
        out_fmt = None if last else formats[op.out]
        name = op.name
        if op.kind == "mac":
            codes, wfmt = weights[op.name]
            xfmt = formats[op.inputs[0]]
            xmax = float(np.abs(xfmt.decode_real(xfmt.range.all_codes())).max())
            if not isinstance(wfmt, PowerFormat) and cfg.datapath != "operand":
                what = "codebook" if isinstance(wfmt, CodebookFormat) else "uniform zero-point"
                raise ValueError(
                    f"{op.name}: datapath={cfg.datapath!r} is not allowed for {what} weights; "
                    "allowed: 'operand' (the product datapath needs power formats)"
                )
            kw = dict(
                datapath=cfg.datapath,
                w_frac_bits=_frac_bits(_table_max(wfmt), cfg.w_lut_bits),
                x_frac_bits=_frac_bits(xmax, cfg.x_lut_bits),
                product_frac_bits=_frac_bits(_product_max(wfmt, xmax), cfg.p_lut_bits),
                bias=None if op.module.bias is None else op.module.bias.detach().double().numpy(),
                acc=cfg.acc,
                out_fmt=out_fmt,
                relu=op.relu,
                clip_max=op.clip_max,
                rounding=cfg.rounding,
                tensor_id=(3 * i) % 2**32,
            )
            if isinstance(op.module, nn.Conv2d):
                m = op.module
                if isinstance(m.padding, str) or m.padding_mode != "zeros":
                    raise ValueError(f"{op.name}: only numeric zero padding is supported")
                layer = Conv2d.build(
                    name,
                    codes,
                    wfmt,
                    xfmt,
                    stride=m.stride,
                    padding=m.padding,
                    dilation=m.dilation,
                    groups=m.groups,
                    **kw,
                )
            else:
                layer = Linear.build(name, codes, wfmt, xfmt, **kw)
        elif op.kind == "add":
            fa, fb = formats[op.inputs[0]], formats[op.inputs[1]]
            vmax = max(_table_max(fa), _table_max(fb))
            layer = Add.build(
                name,
                fa,
                fb,
                frac_bits=_frac_bits(2 * vmax, cfg.add_lut_bits),
                acc=cfg.acc,
                out_fmt=out_fmt,
                relu=op.relu,
                clip_max=op.clip_max,
                rounding=cfg.rounding,
                tensor_id=(3 * i) % 2**32,
            )
        elif op.kind == "maxpool":
            m = op.module
            layer = MaxPool2d(name, m.kernel_size, m.stride, m.padding)
        elif op.kind in ("gap", "avgpool"):
            fx_ = formats[op.inputs[0]]
            h, w = shapes[op.inputs[0]][2:] if op.kind == "gap" else (None, None)
            layer = AvgPool2d.build(
                name,
                fx_,
                frac_bits=_frac_bits(_table_max(fx_), cfg.x_lut_bits),
                acc=cfg.acc,
                kernel=None if op.kind == "gap" else op.module.kernel_size,
                stride=None if op.kind == "gap" else op.module.stride,
                window=h * w if op.kind == "gap" else None,
                out_fmt=out_fmt,
                rounding=cfg.rounding,
                tensor_id=(3 * i) % 2**32,
            )
        else:
            layer = Flatten(name)
        nodes.append(Node(layer, tuple(_node_name(ops, n, inp) for n in op.inputs)))
    graph = Graph(nodes)
    return Exported(ops, formats, weights, graph, inp)


def _table_max(fmt):
    """Largest |real value| of the format's decode LUT (before the 2^F scaling); uniform
    weights: max |q − z| (their scale lives in the accumulator unit, ARITHMETIC.md §2)."""
    if isinstance(fmt, UniformWeightFormat):
        return float(np.abs(fmt.range.all_codes()[None, :] - fmt.zero_point[:, None]).max())
    if isinstance(fmt, CodebookFormat):
        return float(np.abs(fmt.values).max())
    return (
        float(np.abs(fmt.decode_real(np.array([fmt.range.max_magnitude]), None)).max())
        if fmt.granularity == "tensor"
        else float((fmt.scale.max() * fmt.range.max_magnitude) ** (1 / fmt.exponent))
    )


def _product_max(wfmt, xmax):
    """Largest real value in the product table: per-tensor/channel weight scales are
    factored out of it (tables.ProductTable), per-group scales are not. Uniform and codebook
    weights have no product table (the product datapath refuses them); the value only sizes an unused F."""
    if wfmt.granularity == "group" or not isinstance(wfmt, PowerFormat):
        return _table_max(wfmt) * xmax
    return wfmt.range.max_magnitude ** (1 / wfmt.exponent) * xmax


def _node_name(ops, value, inp):
    if value == inp:
        return "input"
    for op in ops:
        if op.out == value:
            return op.name
    raise ValueError(f"internal: value {value!r} has no producer")


def _apply(op, args, weights):
    """One op in float64 on decoded weights, ReLU included, output not quantized."""
    if op.kind == "mac":
        w, fmt = weights[op.name]
        idx = fmt.scale_index(w.shape)
        wd = torch.from_numpy(fmt.decode_real(w.reshape(w.shape[0], -1), idx).reshape(w.shape))
        m = op.module
        b = m.bias.detach().double() if m.bias is not None else None
        y = (
            F.conv2d(args[0], wd, b, m.stride, m.padding, m.dilation, m.groups)
            if isinstance(m, nn.Conv2d)
            else F.linear(args[0], wd, b)
        )
    elif op.kind == "add":
        y = args[0] + args[1]
    elif op.kind == "maxpool":
        m = op.module
        y = F.max_pool2d(args[0], m.kernel_size, m.stride, m.padding)
    elif op.kind == "gap":
        y = args[0].mean(dim=(2, 3), keepdim=True)
    elif op.kind == "avgpool":
        y = F.avg_pool2d(args[0], op.module.kernel_size, op.module.stride)
    else:
        y = torch.flatten(args[0], 1)
    if op.relu:
        y = torch.clamp(y, min=0.0) if op.clip_max is None else torch.clamp(y, 0.0, op.clip_max)
    return y
