"""Requantization of a device accumulator array (ARITHMETIC.md §6), as oracle.requantize.

Layers guarantee what the kernels rely on at construction: Thresholds rows non-decreasing
and 1 row or one per output channel; rescale multipliers 1 or one per channel, shifts in
[0, 62] and |acc·m| < 2^62 for every accumulator value (layers.base.check_requant_input).
"""

import numpy as np

from nupes_sim.tables import Rescale, Thresholds

from .launch import _k, _launch


def _requantize(acc_d, shape, requant, channel_axis, seed, tensor_id, opt):
    """Same contract as oracle.requantize on the flat device array acc_d of `shape`."""
    K = _k()
    cuda = K.cuda
    if requant is None:
        return acc_d.copy_to_host().reshape(shape)
    ndim = len(shape)
    nch = shape[channel_axis] if ndim else 1
    inner = int(np.prod(shape[channel_axis + 1 :], dtype=np.int64)) if ndim else 1
    size = int(np.prod(shape, dtype=np.int64))
    out_d = cuda.device_array(size, np.int64)
    if isinstance(requant, Thresholds):
        if requant.thr.shape[1] == 0:  # a single code: nothing to compare
            return np.full(shape, requant.qmin, np.int64)
        _launch(
            K.requant_thr,
            size,
            opt["threads"],
            acc_d,
            cuda.to_device(requant.thr),
            max(inner, 1),
            max(nch, 1),
            requant.qmin,
            out_d,
        )
        return out_d.copy_to_host().reshape(shape)
    assert isinstance(requant, Rescale)
    _launch(
        K.requant_rescale,
        size,
        opt["threads"],
        acc_d,
        cuda.to_device(requant.multiplier),
        cuda.to_device(requant.shift),
        requant.zero_point,
        requant.qmin,
        requant.qmax,
        requant.rounding,
        seed,
        tensor_id,
        max(inner, 1),
        max(nch, 1),
        out_d,
    )
    return out_d.copy_to_host().reshape(shape)
