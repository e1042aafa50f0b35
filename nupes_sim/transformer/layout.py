"""Layout ops (ARITHMETIC.md §16): they move codes and never change them; and PadMask, which
derives the key-padding mask of a Softmax from the token ids."""

from dataclasses import dataclass

import numpy as np

from ..layers import Layer, register, set_fields
from .common import source_feeding


@register
@dataclass(frozen=True, eq=False)
class Reshape(Layer):
    """C-order reshape; shape entries: -1 (one, inferred) or 0 (copy that input axis), as ONNX."""

    name: str
    shape: tuple
    n_inputs = 1
    passthrough = True

    def __post_init__(self):
        set_fields(self, shape=tuple(int(s) for s in self.shape))
        if sum(s == -1 for s in self.shape) > 1 or any(s < -1 for s in self.shape):
            raise ValueError(f"{self.name}: shape {self.shape} may hold one -1 and no other negative entry")

    def target_shape(self, in_shape):
        """The output shape for one input shape (or ValueError)."""
        in_shape = tuple(in_shape)
        if any(s == 0 and i >= len(in_shape) for i, s in enumerate(self.shape)):
            raise ValueError(f"{self.name}: cannot reshape {in_shape} to {self.shape}")
        shp = [in_shape[i] if s == 0 else s for i, s in enumerate(self.shape)]
        if -1 in shp:
            known = int(np.prod([s for s in shp if s != -1]))
            total = int(np.prod(in_shape))
            if known == 0 or total % known:
                raise ValueError(f"{self.name}: cannot reshape {in_shape} to {self.shape}")
            shp[shp.index(-1)] = total // known
        if int(np.prod(shp)) != int(np.prod(in_shape)):
            raise ValueError(f"{self.name}: cannot reshape {in_shape} to {self.shape}")
        return tuple(shp)

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def out_shape(self, in_shapes):
        return self.target_shape(in_shapes[0])

    def golden_params(self):
        return {}, {"shape": list(self.shape), "rule": "C-order reshape (-1: inferred, 0: copy that axis)"}

    def feeding(self, multi, inputs, input_names):
        x = inputs[0]
        flat = int(np.ravel_multi_index(tuple(multi), self.target_shape(x.shape)))
        return source_feeding(x, input_names[0], np.unravel_index(flat, x.shape))


@register
@dataclass(frozen=True, eq=False)
class Transpose(Layer):
    """Swap axes dim0 and dim1 (torch.transpose), output C-contiguous."""

    name: str
    dim0: int
    dim1: int
    n_inputs = 1
    passthrough = True

    def _axes(self, ndim):
        if not (-ndim <= self.dim0 < ndim and -ndim <= self.dim1 < ndim):
            raise ValueError(f"{self.name}: cannot swap axes {self.dim0}, {self.dim1} of a rank-{ndim} input")
        return self.dim0 % ndim, self.dim1 % ndim

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def out_shape(self, in_shapes):
        s = list(in_shapes[0])
        a, b = self._axes(len(s))
        s[a], s[b] = s[b], s[a]
        return tuple(s)

    def golden_params(self):
        return {}, {"dim0": int(self.dim0), "dim1": int(self.dim1), "rule": "swap axes dim0 and dim1"}

    def feeding(self, multi, inputs, input_names):
        src = list(multi)
        a, b = self._axes(len(src))
        src[a], src[b] = src[b], src[a]
        return source_feeding(inputs[0], input_names[0], src)


@register
@dataclass(frozen=True, eq=False)
class Slice(Layer):
    """x[..., start:stop, ...] along `axis` (torch.split pieces are Slices)."""

    name: str
    axis: int
    start: int
    stop: int
    n_inputs = 1
    passthrough = True

    def __post_init__(self):
        if not 0 <= self.start < self.stop:
            raise ValueError(f"{self.name}: need 0 <= start < stop, got {self.start}, {self.stop}")

    def _axis(self, shape):
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(f"{self.name}: no axis {self.axis} in an input of shape {tuple(shape)}")
        ax = self.axis % len(shape)
        if self.stop > shape[ax]:
            raise ValueError(f"{self.name}: slice {self.start}:{self.stop} of an axis of length {shape[ax]}")
        return ax

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def out_shape(self, in_shapes):
        s = list(in_shapes[0])
        s[self._axis(s)] = self.stop - self.start
        return tuple(s)

    def golden_params(self):
        return {}, {"axis": int(self.axis), "start": int(self.start), "stop": int(self.stop)}

    def feeding(self, multi, inputs, input_names):
        src = list(multi)
        src[self._axis(inputs[0].shape)] += self.start
        return source_feeding(inputs[0], input_names[0], src)


@register
@dataclass(frozen=True, eq=False)
class PadMask(Layer):
    """mask = (ids != pad_id) as int64 0/1: the key-padding mask of a Softmax from token ids."""

    name: str
    pad_id: int
    n_inputs = 1

    # ---- layer protocol (nupes_sim/layers/base.py) ----

    def stage_range(self, stage, in_ranges):
        super().stage_range(stage, in_ranges)
        return 0, 1

    def golden_params(self):
        return {}, {"pad_id": int(self.pad_id), "rule": "out = 1 if id != pad_id else 0"}

    def feeding(self, multi, inputs, input_names):
        return dict(input=input_names[0], id=int(inputs[0][tuple(multi)]), pad_id=int(self.pad_id))


__all__ = ["Reshape", "Transpose", "Slice", "PadMask"]
