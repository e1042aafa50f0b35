"""What every host-side op of the cuda backend shares: launch defaults, per-call options,
the kernel module (imported late: it needs numba.cuda) and the path counters.

Launch configuration (results never depend on it; the tests run several):
  threads: threads per block of the one-thread-per-element kernels (default THREADS)
  gemm:    dict(BM, BN, BK, TM, TN) tile shape of the register-tiled MAC kernel (default
           kernels.gemm_default: GEMM for the int32 operand path, BK=8 for the others)
  fast:    False forces the sequential per-output MAC kernel on every mode (default FAST)
``STATS`` counts which MAC path ran ("gemm_int32", "gemm_int64", "seq").
"""

THREADS = 128
GEMM = dict(BM=128, BN=128, BK=16, TM=8, TN=8)  # int32 operand path (others: kernels.gemm_default)
FAST = True
STATS = {}


def _k():
    from . import kernels

    return kernels


def _note(path):
    STATS[path] = STATS.get(path, 0) + 1


def _launch(kernel, n, threads, *args):
    if n > 0:
        kernel[(n + threads - 1) // threads, threads](*args)


def _opts(threads=None, gemm=None, fast=None):
    return dict(
        threads=THREADS if threads is None else int(threads),
        gemm=gemm,
        fast=FAST if fast is None else bool(fast),
    )
