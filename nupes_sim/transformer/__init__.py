"""Integer transformer ops (docs/ARITHMETIC.md §10-§16): Embedding, MatMul of two activation
tensors, Softmax with masks, LayerNorm, element-wise code->code tables, layout ops.

`layers` gathers the layer types (registered with the layer protocol when this package is
imported: one module per job, see its docstring), `tables` builds their tables on the host,
`oracle` is the plain NumPy truth, `prims` the scalar integer rules and `bodies` what one
kernel thread computes (both compiled for both backends), `cpu` the Numba loops over the
bodies; the numba.cuda launches live in cuda/transformer.py.
"""

from . import layers  # noqa: F401 (registers the layer types)
