"""PTX tooling: every kernel with the argument types backend.py launches it with, compiled to
PTX without a GPU (tests/cuda/test_ptx.py checks the result)."""

from numba import int32, int64

from . import elementwise as E
from .device import DP_OPERAND, DP_PRODUCT, cuda
from .gemm import gemm_default, make_gemm


def ptx_cases():
    """[(name, python function, argument types)] for the kernels and dtypes backend.py uses."""
    from numba import types as T

    def arr(dt, nd):
        return T.Array(dt, nd, "C")

    i64, i32 = T.int64, T.int32
    cases = []
    for at in (i64, i32):
        cases.append((f"decode_t[{at}]", E.decode_t.py_func, (arr(i64, 2), arr(i64, 1), i64, arr(at, 2))))
        cases.append(
            (
                f"im2col_t[{at}]",
                E.im2col_t.py_func,
                (arr(i64, 4), arr(i64, 1), i64, i64) + (i64,) * 12 + (arr(at, 2),),
            )
        )
    for at, wt in ((i64, i64), (i32, i64), (i32, i32)):
        cases.append(
            (
                f"mac_seq[{at},{wt}]",
                E.mac_seq.py_func,
                (i64, arr(at, 2), arr(wt, 2), arr(wt, 2), arr(wt, 2), arr(i64, 1), arr(i64, 1))
                + (i64,) * 11
                + (arr(i64, 1), arr(i64, 1)),
            )
        )
    for acc_name, acc_t in (("int32", int32), ("int64", int64)):
        for dp in (DP_OPERAND, DP_PRODUCT):
            cfg, lmax = gemm_default(acc_name, dp)
            for lut_shared in (0, lmax) if dp == DP_PRODUCT else (0,):
                g = make_gemm(acc_t, dp, lut_shared=lut_shared, **cfg)
                if dp == DP_OPERAND:  # B1 = WV (int32 or int64), B2 = a (1, 1) int64 placeholder
                    a = b1 = {"int32": i32, "int64": i64}[acc_name]
                    b2 = i64
                else:  # B1 = Bbase, B2 = Bm, both int32
                    a = b1 = b2 = i32
                sig = (
                    (arr(a, 2), arr(b1, 2), arr(b2, 2), arr(i64, 1), arr(i64, 1))
                    + (i64,) * 8
                    + (arr(i64, 1), arr(i64, 1))
                )
                cases.append((f"gemm[{acc_name},dp={dp},lut_shared={lut_shared}]", g.py_func, sig))
    cases.append(
        ("requant_thr", E.requant_thr.py_func, (arr(i64, 1), arr(i64, 2), i64, i64, i64, arr(i64, 1)))
    )
    cases.append(
        (
            "requant_rescale",
            E.requant_rescale.py_func,
            (arr(i64, 1), arr(i64, 1), arr(i64, 1)) + (i64,) * 8 + (arr(i64, 1),),
        )
    )
    cases.append(
        (
            "add_seq",
            E.add_seq.py_func,
            (arr(i64, 1), arr(i64, 1), arr(i64, 1), i64, arr(i64, 1), i64)
            + (i64,) * 5
            + (arr(i64, 1), arr(i64, 1)),
        )
    )
    cases.append(
        (
            "avgpool_seq",
            E.avgpool_seq.py_func,
            (arr(i64, 4), arr(i64, 1), i64) + (i64,) * 11 + (arr(i64, 1), arr(i64, 1)),
        )
    )
    cases.append(("maxpool", E.maxpool.py_func, (arr(i64, 4),) + (i64,) * 8 + (arr(i64, 1),)))
    return cases


def compile_all_ptx(cc=(9, 0)):
    """{name: ptx} for every case of ptx_cases(), for compute capability `cc`, without a GPU.

    Device functions called from a kernel are compiled by numba-cuda for the *current*
    device's compute capability (dispatcher.compile_device asks the driver). Where no GPU
    is present, that query is answered with `cc` for the duration of the call only."""
    import contextlib
    import types as _types

    from numba.cuda import dispatcher as _disp

    @contextlib.contextmanager
    def _cc_without_gpu():
        real = _disp.get_current_device
        if cuda.is_available():
            yield
            return
        _disp.get_current_device = lambda: _types.SimpleNamespace(compute_capability=tuple(cc))
        try:
            yield
        finally:
            _disp.get_current_device = real

    out = {}
    with _cc_without_gpu():
        for name, f, sig in ptx_cases():
            out[name] = cuda.compile_ptx(f, sig, cc=cc)[0]
    return out
