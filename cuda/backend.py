"""numba.cuda backend: ``run_layer(layer, *inputs)`` returns exactly what
``nupes_sim.oracle.run_layer`` returns (same keys, int64 arrays, shapes, values, and the
same input validation errors).

``ensure_available()`` raises nupes_sim.extras.Unavailable (a RuntimeError) naming the cause
when numba-cuda is missing, fails to import, or ``numba.cuda.is_available()`` is false. There is never a silent fallback to
another backend. The CUDA simulator (NUMBA_ENABLE_CUDASIM=1) counts as available.

``run_layer(layer, *inputs, threads=None, gemm=None, fast=None)``: the launch options are
described in launch.py (results never depend on them); ``STATS`` counts which MAC path ran.

By job: launch.py (defaults, options, counters), host_mac.py (Linear, Conv2d), host_requant.py
(thresholds and rescale), this module (availability, the other ops, dispatch), kernels.py (the
device code). Layers are frozen and validated at construction, so the ops check only their
inputs (codes and shapes, with the oracle's errors).
"""

import numpy as np

from nupes_sim.extras import Unavailable
from nupes_sim.layers import Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.transformer.layers import TRANSFORMER_TYPES

from ._compat import SIMULATOR, import_cuda
from .host_mac import (  # noqa: F401  (bench.py and the tests use these through backend)
    _at_dtype,
    _mac_launch,
    _mac_weights,
    _plan,
    _x_lut,
    conv2d,
    linear,
)
from .host_requant import _requantize
from .launch import FAST, GEMM, STATS, THREADS, _k, _launch, _note, _opts  # noqa: F401


def ensure_available():
    """Raise Unavailable (a RuntimeError) naming the cause unless numba.cuda can run kernels here."""
    cuda = import_cuda()
    if not cuda.is_available():
        reason = "no CUDA driver or GPU is visible"
        try:
            cuda.current_context()
        except Exception as e:  # CudaSupportError & co. carry the driver's reason
            reason = f"{type(e).__name__}: {e}"
        raise Unavailable(
            f"the cuda backend cannot run: numba.cuda.is_available() is False ({reason}). "
            "Use backend='cpu' or 'numpy', or NUMBA_ENABLE_CUDASIM=1 for the (slow) "
            "CUDA simulator"
        )


# ------------------------------------------------------------------------------------------
# Other ops
# ------------------------------------------------------------------------------------------
def add(layer, a, b, **kw):
    opt = _opts(**kw)
    layer.a_range.check_codes(f"{layer.name} input a", a)
    layer.b_range.check_codes(f"{layer.name} input b", b)
    if a.shape != b.shape:
        raise ValueError(f"{layer.name}: input shapes differ: {a.shape} and {b.shape}")
    K = _k()
    cuda = K.cuda
    shape = a.shape
    size = int(np.prod(shape, dtype=np.int64))
    acc = layer.acc
    exact_d = cuda.device_array(size, np.int64)
    acc_d = cuda.device_array(size, np.int64)
    _launch(
        K.add_seq,
        size,
        opt["threads"],
        cuda.to_device(np.ascontiguousarray(a, np.int64).reshape(-1)),
        cuda.to_device(np.ascontiguousarray(b, np.int64).reshape(-1)),
        cuda.to_device(np.ascontiguousarray(layer.a_table.lut[0], np.int64)),
        layer.a_range.qmin,
        cuda.to_device(np.ascontiguousarray(layer.b_table.lut[0], np.int64)),
        layer.b_range.qmin,
        K.MODES[acc.overflow],
        acc.width,
        acc.tile,
        acc.lo,
        acc.hi,
        exact_d,
        acc_d,
    )
    out = _requantize(
        acc_d, shape, layer.requant, 1 if len(shape) > 1 else 0, layer.seed, layer.tensor_id, opt
    )
    return dict(
        acc_exact=exact_d.copy_to_host().reshape(shape), acc=acc_d.copy_to_host().reshape(shape), out=out
    )


def _out_size(name, n, k, s, p=0):
    o = (n + 2 * p - k) // s + 1
    if o < 0:
        raise ValueError(f"{name}: input of size {n} is smaller than the window {k} (negative output size)")
    return o


def maxpool2d(layer, x, **kw):
    opt = _opts(**kw)
    if x.ndim != 4:
        raise ValueError(f"{layer.name}: input must be (B, C, H, W), got shape {x.shape}")
    B, C, H, W = x.shape
    kh, kw_ = layer.kernel
    ho = _out_size(layer.name, H, kh, layer.stride[0], layer.padding[0])
    wo = _out_size(layer.name, W, kw_, layer.stride[1], layer.padding[1])
    if x.dtype.kind not in "iub":  # the oracle stores the window max into int64 (truncation)
        x = np.trunc(x)
    x = np.ascontiguousarray(x).astype(np.int64)
    K = _k()
    cuda = K.cuda
    n = B * C * ho * wo
    out_d = cuda.device_array(n, np.int64)
    _launch(
        K.maxpool,
        n,
        opt["threads"],
        cuda.to_device(x),
        kh,
        kw_,
        layer.stride[0],
        layer.stride[1],
        layer.padding[0],
        layer.padding[1],
        ho,
        wo,
        out_d,
    )
    return dict(out=out_d.copy_to_host().reshape(B, C, ho, wo))


def avgpool2d(layer, x, **kw):
    opt = _opts(**kw)
    kernel, stride = layer.check_input(x)
    B, C, H, W = x.shape
    ho = _out_size(layer.name, H, kernel[0], stride[0])
    wo = _out_size(layer.name, W, kernel[1], stride[1])
    K = _k()
    cuda = K.cuda
    acc = layer.acc
    n = B * C * ho * wo
    shape = (B, C, ho, wo)
    exact_d = cuda.device_array(n, np.int64)
    acc_d = cuda.device_array(n, np.int64)
    _launch(
        K.avgpool_seq,
        n,
        opt["threads"],
        cuda.to_device(np.ascontiguousarray(x, np.int64)),
        cuda.to_device(np.ascontiguousarray(layer.x_table.lut[0], np.int64)),
        layer.x_range.qmin,
        kernel[0],
        kernel[1],
        stride[0],
        stride[1],
        ho,
        wo,
        K.MODES[acc.overflow],
        acc.width,
        acc.tile,
        acc.lo,
        acc.hi,
        exact_d,
        acc_d,
    )
    out = _requantize(acc_d, shape, layer.requant, 1, layer.seed, layer.tensor_id, opt)
    return dict(
        acc_exact=exact_d.copy_to_host().reshape(shape), acc=acc_d.copy_to_host().reshape(shape), out=out
    )


def flatten(layer, x, **kw):
    return dict(out=x.reshape(x.shape[0], -1).copy())  # as the oracle: a view change, dtype kept


OPS = {Linear: linear, Conv2d: conv2d, Add: add, MaxPool2d: maxpool2d, AvgPool2d: avgpool2d, Flatten: flatten}


def _transformer_op(cls):
    """The kernel of a transformer op (ARITHMETIC.md §10-§16, cuda/transformer.py), imported at
    the first call like the other kernels (importing them needs numba.cuda)."""

    def op(layer, *inputs, **kw):
        from . import transformer

        return transformer.OPS[cls](layer, *inputs, **kw)

    return op


OPS.update({cls: _transformer_op(cls) for cls in TRANSFORMER_TYPES})


def run_layer(layer, *inputs, threads=None, gemm=None, fast=None):
    """Run one layer on the GPU; identical results to nupes_sim.oracle.run_layer."""
    ensure_available()
    return OPS[type(layer)](layer, *(np.asarray(i) for i in inputs), threads=threads, gemm=gemm, fast=fast)


__all__ = ["ensure_available", "run_layer", "THREADS", "GEMM", "FAST", "STATS", "SIMULATOR"]
