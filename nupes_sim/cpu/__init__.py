"""Numba CPU backend: bit-exact twin of nupes_sim.oracle, fast.

API: ``run_layer(layer, *inputs, fast=None, options=None)`` returns exactly what
``oracle.run_layer`` returns (same keys, int64 arrays, shapes, values, and the same input
validation errors). ``options`` is a frozen ``CpuOptions`` (default ``DEFAULT``) choosing
among exact paths; ``fast=False`` sends every MAC through the integer kernels (the tests
compare every path). ``STATS`` counts the paths taken.

Modules: kernels (integer numba kernels over the shared primitives), gemm (the exact
float-GEMM planner and its one proof: chunking, splits, one-hot decomposition), fused (the
fused GEMM path), plancache (its weight-side plans kept per layer), requant, threads (worker
pool, opt-in passive OpenMP wait), jit (numba with a never-stale on-disk cache), options, ops
(the layer functions). Floating point appears only
in the GEMMs that gemm.py proves exact; everything else is int64. Importing this package
changes no environment variable.
"""

from .kernels import PRIMITIVE_NAMES, prim
from .ops import OPS, add, avgpool2d, conv2d, flatten, linear, maxpool2d, run_layer
from .options import DEFAULT, STATS, CpuOptions
from .threads import use_passive_omp_wait

__all__ = [
    "run_layer",
    "linear",
    "conv2d",
    "add",
    "maxpool2d",
    "avgpool2d",
    "flatten",
    "OPS",
    "CpuOptions",
    "DEFAULT",
    "STATS",
    "use_passive_omp_wait",
    "PRIMITIVE_NAMES",
    "prim",
]
