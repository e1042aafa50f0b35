"""Layout layers: they move codes, never change them (Flatten)."""

from dataclasses import dataclass

import numpy as np

from .base import Layer, check_name, register


@register
@dataclass(frozen=True, eq=False)
class Flatten(Layer):
    """(B, C, H, W) -> (B, C*H*W), C-major as torch.flatten(x, 1)."""

    passthrough = True

    name: str

    def __post_init__(self):
        check_name(self)

    # ---- layer protocol (base.py) ----

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        if len(s) < 1:
            raise ValueError(f"{self.name}: input needs a batch dimension, got shape {s}")
        return (s[0], int(np.prod(s[1:], dtype=np.int64)))

    def feeding(self, multi, inputs, input_names):
        x = inputs[0]
        flat = int(np.ravel_multi_index(multi, self.out_shape([x.shape])))
        return dict(
            input=input_names[0],
            source_index=[int(v) for v in np.unravel_index(flat, x.shape)],
            source_value=int(x.reshape(-1)[flat]),
        )


__all__ = ["Flatten"]
