"""numba.cuda kernels of the integer simulator (docs/ARITHMETIC.md), by job:

  device.py       the primitives compiled with cuda.jit(device=True) from the very bytecode
                  the CPU backend compiles with numba.njit; overflow-mode and datapath ids;
                  product_of and out_index.
  elementwise.py  one thread per element: mac_seq (k ascending: exact sum + saturating
                  accumulator with tiles; any overflow mode, either datapath, int64), decode_t
                  / codes / im2col_t into the AT (K, N) layout, requant_thr / requant_rescale
                  (row = channel), add_seq, avgpool_seq, maxpool.
  gemm.py         make_gemm: the register-tiled GEMM for order-free sums (wrap, exact,
                  saturate that cannot clamp) of both datapaths, one body (loads, staging and
                  epilogue written once); int32 accumulators when every partial sum is < 2^31,
                  else int64. gemm_grid, gemm_default.
  ptx.py          ptx_cases / compile_all_ptx: every kernel compiled to PTX without a GPU.

Integer arithmetic only: no float is ever formed in a kernel (numba.cuda cannot turn off
FMA contraction, so exactness arguments about floats would not carry over). This module
re-exports the names backend.py, bench.py and the tests use.
"""

from numba import int32, int64  # noqa: F401

from .device import (  # noqa: F401
    DP_OPERAND,
    DP_PRODUCT,
    MODE_EXACT,
    MODE_SAT,
    MODE_WRAP,
    MODES,
    PRIMITIVE_NAMES,
    count_ge,
    cuda,
    hash32,
    out_index,
    prim,
    product_of,
    rescale,
    sat_add,
    sat_step,
    wrap,
)
from .elementwise import (  # noqa: F401
    add_seq,
    avgpool_seq,
    decode_t,
    im2col_t,
    mac_seq,
    maxpool,
    requant_rescale,
    requant_thr,
)
from .gemm import SMEM_STATIC_MAX, gemm_default, gemm_grid, make_gemm  # noqa: F401
from .ptx import compile_all_ptx, ptx_cases  # noqa: F401
