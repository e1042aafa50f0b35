"""Calibration plumbing: capturing layer inputs with hooks, and the activation quantizer module."""

import numpy as np
import torch
from torch import nn

from nupes_sim.formats import PowerFormat

from .activation import calibrate_activation, quantize_act
from .quantizer import check_finite_tensor


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the layer's input is recorded."""


def as_batches(calib, batch_size=64, dtype=None):
    """A tensor or NumPy array (split along dim 0) or an iterable of batches (tensors or arrays,
    or tuples/lists whose first element is the input) → list of input tensors, cast to `dtype`
    (the model's floating dtype) when given, so float64 data feeds a float32 model; integer
    batches (token ids) are never cast."""
    if calib is None:
        return None
    if dtype is not None:
        return [b.to(dtype) if b.is_floating_point() else b for b in as_batches(calib, batch_size)]
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(np.ascontiguousarray(calib))
    if torch.is_tensor(calib):
        if calib.dim() == 0 or calib.shape[0] == 0:
            raise ValueError(
                f"calib must have at least one sample along dim 0, got shape {tuple(calib.shape)}"
            )
        return list(torch.split(calib, batch_size))
    out = []
    for b in calib:
        if isinstance(b, (tuple, list)):
            b = b[0]
        if isinstance(b, np.ndarray):
            b = torch.from_numpy(np.ascontiguousarray(b))
        if not torch.is_tensor(b):
            raise TypeError(
                f"calibration batches must be tensors (or tuples starting with one), got {type(b).__name__}"
            )
        out.append(b)
    if not out:
        raise ValueError("calib is empty: give at least one batch")
    return out


def capture_inputs(model, module, batches, name="layer"):
    """Concatenated first positional input of `module` over the batches (None if it never
    runs). The forward stops at the module, so later layers cost nothing."""
    got = []

    def hook(mod, args):
        got.append(args[0].detach())
        raise _Stop

    h = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    model(b)
                except _Stop:
                    pass
    finally:
        h.remove()
    if not got:
        return None
    x = torch.cat(got, 0)
    check_finite_tensor(f"layer {name!r}: calibration input", x)
    return x


def execution_order(model, modules, batch):
    """Names of `modules` ({name: module}) in the order a forward pass first calls them."""
    order, handles = [], []
    for n, m in modules.items():
        handles.append(
            m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n) if n not in order else None)
        )
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return order


class PowerActQuant(nn.Module):
    """Fake power quantization of an activation with a per-tensor PowerFormat (activation.py).

    Readable for export: `bits`, `signed`, `exponent`, `scale` (floats/ints), `qmin`, `qmax`.
    Output dtype = input dtype; arithmetic is the exact float64 contract (formats.PowerFormat).
    """

    def __init__(self, fmt: PowerFormat):
        super().__init__()
        if fmt.granularity != "tensor":
            raise ValueError(
                f"PowerActQuant: activation formats are per tensor, got granularity={fmt.granularity!r}"
            )
        self.fmt = fmt

    bits = property(lambda self: self.fmt.bits)
    signed = property(lambda self: self.fmt.signed)
    exponent = property(lambda self: self.fmt.exponent)
    scale = property(lambda self: float(self.fmt.scale[0]))
    qmin = property(lambda self: self.fmt.range.qmin)
    qmax = property(lambda self: self.fmt.range.qmax)

    @classmethod
    def calibrate(cls, samples, bits=8, signed=None, exponent=None, seed=0, name="activation"):
        """Unsigned if every sample is >= 0 (post-ReLU), else signed; see calibrate_activation."""
        return cls(calibrate_activation(samples, bits, signed, exponent, seed=seed, name=name))

    def forward(self, x):
        return quantize_act(self.fmt, x).to(
            device=x.device, dtype=x.dtype
        )  # unsigned: negatives saturate to code 0

    def extra_repr(self):
        return f"bits={self.bits}, signed={self.signed}, exponent={self.exponent:.6g}, scale={self.scale:.6g}"


def act_prehook(module, args):
    """Forward pre-hook applying `module.nupes_act` to the layer's input."""
    return (module.nupes_act(args[0]),) + tuple(args[1:])


def attach_act_quant(module, act):
    """Make `act` (a PowerActQuant) quantize `module`'s input: child `nupes_act` + pre-hook."""
    module.nupes_act = act
    module.register_forward_pre_hook(act_prehook)
    return module


def capture_all_inputs(model, modules, batches):
    """({name: input}, {name: key}) for every module of {name: module} in one forward pass
    per batch (None-valued entries are left out: modules that never run). key identifies the
    tensor a module received in the first batch (storage pointer, offset, shape, strides):
    modules with equal keys were fed the same tensor (q/k/v of one attention; a residual
    block's first conv and its shortcut), so in the quantized network they also share it."""
    got = {n: [] for n in modules}
    keys = {}
    handles = []
    for n, m in modules.items():

        def hook(mod, args, n=n):
            x = args[0]
            if n not in keys:
                keys[n] = (
                    x.untyped_storage().data_ptr(),
                    x.storage_offset(),
                    tuple(x.shape),
                    tuple(x.stride()),
                )
            got[n].append(x.detach())

        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for b in batches:
                model(b)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, xs in got.items():
        if xs:
            out[n] = torch.cat(xs, 0) if len(xs) > 1 else xs[0].clone()
            check_finite_tensor(f"layer {n!r}: calibration input", out[n])
    return out, keys


def batches_key(batches):
    """A cheap identity of a list of calibration batches (for input caches)."""
    return tuple((b.data_ptr(), tuple(b.shape)) for b in batches)
