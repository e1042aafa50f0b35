"""Integer transformer ops (docs/ARITHMETIC.md §10-§16): Embedding, MatMul of two activation
tensors, Softmax with masks, LayerNorm, element-wise code->code tables, layout ops.

`layers` holds the integer tables and settings, `tables` builds them on the host, `oracle`
is the plain NumPy truth, `prims` the scalar integer rules compiled for both backends and
`cpu` the Numba kernels; the numba.cuda kernels live in cuda/transformer.py.
"""
