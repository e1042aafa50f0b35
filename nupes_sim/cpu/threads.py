"""Threads of the CPU backend: the fused path's worker pool with single-threaded BLAS, and
the (opt-in) passive OpenMP wait policy.

GEMM threading. OpenBLAS wakes and joins its threads at every call; on a loaded machine (the
project's 2 shared cores) a descheduled BLAS thread stalls the call for a time slice, and
k-chunked GEMMs make many calls (measured: 6 GEMMs of 256x180x1024 took ~100 ms with 2
OpenBLAS threads, 16 ms with 1). So the fused path splits its rows over its own worker
threads, each building its features (nogil numba) and calling single-threaded BLAS:
OpenBLAS's thread-local setting (openblas_set_num_threads_local, found through threadpoolctl;
nothing global is changed). Without that symbol the workers use BLAS as configured.

OpenMP wait policy. Numba's OpenMP threads spin-wait after every parallel region by default;
the fused path alternates numba regions with OpenBLAS GEMMs, whose threads then compete with
the spinning ones for the same cores (measured on the 2-core project machine: a 0.3 ms decode
kernel took 15 ms and GEMMs several times longer). ``use_passive_omp_wait()`` (or
OMP_WAIT_POLICY=PASSIVE set by the user, or NUPES_OMP_PASSIVE=1 read by the command line)
removes that; it must run before the first parallel kernel loads libgomp, and it applies to
every libgomp of the process (torch's too). Nothing is changed unless asked.
"""

import os

import numba
import numpy as np

_POOL = None  # (pid, executor, workers): a forked child builds its own (threads do not fork)


def use_passive_omp_wait():
    """Ask OpenMP threads to sleep at once after parallel regions (OMP_WAIT_POLICY=PASSIVE),
    unless the user set OMP_WAIT_POLICY. Returns the policy in force from now on; it only
    takes effect if no OpenMP runtime has started in this process yet."""
    return os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def passive_omp_requested():
    """NUPES_OMP_PASSIVE=1 in the environment (the command line's opt-in)."""
    return os.environ.get("NUPES_OMP_PASSIVE", "0").strip() not in ("", "0")


def blas_local_setter():
    """openblas_set_num_threads_local of the OpenBLAS numpy uses (via threadpoolctl), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure numpy's BLAS is loaded
    import ctypes

    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local64_"):
            fn = getattr(lib.dynlib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                return fn
    return None


def pool():
    """(executor, number of workers) of this process."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        from concurrent.futures import ThreadPoolExecutor

        setter = blas_local_setter()
        n = max(1, numba.get_num_threads())
        _POOL = (
            os.getpid(),
            ThreadPoolExecutor(
                n, thread_name_prefix="nupes-gemm", initializer=(lambda: setter(1)) if setter else None
            ),
            n,
        )
    return _POOL[1], _POOL[2]
