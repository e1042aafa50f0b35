"""The Numba CPU backend equals the NumPy oracle bit for bit (values, dtypes, shapes, errors)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import add_case, avgpool_case, conv_case, flatten_case, linear_case, maxpool_case

from nupes_sim import cpu, oracle
from nupes_sim import primitives as P
from nupes_sim.cpu import CpuOptions
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.tables import Rescale, Thresholds


def assert_same(want, got, what=""):
    assert set(want) == set(got), what
    for k in want:
        w, g = want[k], got[k]
        assert g.dtype == w.dtype, f"{what} {k}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{what} {k}: shape {g.shape} != {w.shape}"
        if not np.array_equal(w, g):
            bad = np.argwhere(w != g)[:5]
            raise AssertionError(
                f"{what} {k}: {len(np.argwhere(w != g))} differ, first at {bad.tolist()}: "
                f"oracle {[w[tuple(i)] for i in bad]} cpu {[g[tuple(i)] for i in bad]}"
            )


def check(layer, inputs, both=True):
    want = oracle.run_layer(layer, *inputs)
    assert_same(want, cpu.run_layer(layer, *inputs), "fast")
    if both:
        assert_same(want, cpu.run_layer(layer, *inputs, fast=False), "integer-only")
    return want


# ---- property tests: every op, random valid layers ------------------------------------------
@given(linear_case())
def test_linear_matches_oracle(case):
    check(*case)


@given(conv_case())
def test_conv2d_matches_oracle(case):
    check(*case)


@given(add_case())
def test_add_matches_oracle(case):
    check(*case)


@given(avgpool_case())
def test_avgpool_matches_oracle(case):
    check(*case)


@given(maxpool_case())
def test_maxpool_matches_oracle(case):
    check(*case)


@given(flatten_case())
def test_flatten_matches_oracle(case):
    check(*case)


@given(linear_case(max_batch=4, max_out=5, max_k=24), st.booleans())
def test_fast_path_flag_agrees(case, use_f32):
    """Option off (integer kernels only) == on (BLAS paths, float32 allowed or not)."""
    layer, (x,) = case
    a = cpu.run_layer(layer, x, options=CpuOptions(fast=True, use_float32=use_f32))
    b = cpu.run_layer(layer, x, options=CpuOptions(fast=False, use_float32=use_f32))
    assert_same(b, a)


# ---- explicit layers with exact integer tables ----------------------------------------------
def exact_linear(w, acc, xbits=8, xsigned=True, bias=None, requant=None, datapath="operand", **kw):
    """Operand layer whose decoded weights equal the codes (exponent 1, scale 1, F = 0) and
    whose activations decode to their codes (uniform, scale 1, zero point 0)."""
    w = np.asarray(w, np.int64)
    bits = max(2, int(np.abs(w).max()).bit_length() + 1)
    wf = PowerFormat(bits, True, 1.0, np.array([1.0]))
    xf = (
        UniformFormat(xbits, xsigned, 1.0, 0)
        if datapath == "operand"
        else PowerFormat(xbits, xsigned, 1.0, np.array([1.0]))
    )
    layer = Linear.build(
        "lin", w, wf, xf, datapath=datapath, w_frac_bits=0, x_frac_bits=0, product_frac_bits=0, acc=acc, **kw
    )
    if bias is not None or requant is not None:
        layer = dataclasses.replace(
            layer, bias=None if bias is None else np.asarray(bias, np.int64), requant=requant
        )
    return layer


@pytest.mark.parametrize("overflow", ["wrap", "saturate", "exact"])
@pytest.mark.parametrize("width", [8, 9, 16, 32, 63, 64])
@pytest.mark.parametrize("tile", [0, 1, 2])
def test_accumulator_at_its_limits(overflow, width, tile):
    """Exact sums at 2^(w-1)-1, 2^(w-1), -2^(w-1), -2^(w-1)-1 and int64 extremes."""
    lo, hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    xbits = 2  # activations in [-2, 1]: the layer bound stays tiny next to the bias
    w = np.array([[1, 1, 1], [-1, -1, -1], [1, -1, 1], [1, 1, -1]], np.int64)
    x = np.array([[1, 1, 1], [-2, -2, -2], [1, -2, 1], [0, 0, 0], [-2, 1, -2], [1, 0, 0]], np.int64)
    for b0 in (hi, hi - 1, hi - 2, hi - 3, lo, lo + 1, lo + 2, lo + 6, 0):
        bias = [b0] * 4
        acc = Accumulator(width, overflow, tile)
        try:
            layer = exact_linear(w, acc, xbits=xbits, bias=bias)
        except ValueError:  # width 64: bound beyond int64, rejected by the layer itself
            assert width == 64
            continue
        check(layer, (x,))


def test_int64_extreme_exact_sums():
    """Width 64: exact sums at +-(2^63-2), the largest the layer bound allows (2^63-1 is
    reserved as the 'never reached' threshold, ARITHMETIC.md §6)."""
    top = 2**63 - 2
    for bias, w, x in (
        (top - 28, [[-7, -7]], [[-2, -2], [1, 1], [0, 1]]),
        (-(top - 28), [[7, 7]], [[-2, -2], [1, 1], [0, 0]]),
    ):
        for overflow in ("wrap", "saturate", "exact"):
            layer = exact_linear(w, Accumulator(64, overflow), xbits=2, bias=[bias])
            assert int(layer.bound.max()) == top
            want = check(layer, (np.array(x, np.int64),))
            assert abs(want["acc_exact"]).max() == top


def test_saturate_clamps_every_step_and_tiles():
    """Sequence-dependent saturation: +max, +max, -max, ... with several tile sizes."""
    w = np.array([[7, 7, -7, -7, 7, -7, 7, 7, -7]], np.int64)
    x = np.array([[127] * 9, [-127] * 9, [127, 127, 127, -127, -127, -127, 0, 0, 127]], np.int64)
    for width in (8, 9, 10, 11, 12):
        for tile in range(0, 11):
            layer = exact_linear(w, Accumulator(width, "saturate", tile), bias=[0])
            assert not layer.no_overflow_possible()
            check(layer, (x,))


def test_thresholds_at_boundaries_and_unsorted():
    """acc equal to a threshold counts it (>=); per-channel rows; a non-monotone table is
    refused at construction (#9: backends rely on non-decreasing rows, binary search)."""
    w = np.array([[1], [1], [1]], np.int64)
    x = np.arange(-8, 8, dtype=np.int64)[:, None]
    for thr in ([[-5, 0, 0, 7]], [[-5, 0, 0, 7], [-8, -8, 7, 7], [1, 2, 3, 4]]):
        thr = np.array(thr, np.int64)
        rq = Thresholds(thr, -2, 2)
        layer = exact_linear(w, Accumulator(16, "wrap"), xbits=5, requant=rq)
        check(layer, (x,))
    with pytest.raises(ValueError, match=r"thresholds thr row 0 is not non-decreasing: thr\[0, 0\] = 3"):
        Thresholds(np.array([[3, -2, 5, 0]], np.int64), -2, 2)


@pytest.mark.parametrize("shift", [1, 2, 31, 32, 33, 40, 62])
def test_stochastic_rounding_ties_and_wide_shifts(shift):
    w = np.array([[1], [3]], np.int64)
    # |acc|·m < 2^62 is required (|acc| is about 2^(shift-1) here, from the bias)
    m = 1 if shift < 40 or shift > 55 else 2 ** (60 - shift) + 1
    m2 = m + 2 if shift <= 55 else m
    x = np.arange(-128, 128, dtype=np.int64)[:, None]
    for mode in range(8):  # every rescale rounding, double_round (7) included
        rq = Rescale(
            np.array([m, m2], np.int64),
            np.array([shift, max(shift - 1, 0)], np.int64),
            3,
            -100,
            100,
            mode,
            31,
        )
        for bias in (0, 2 ** (shift - 1), -(2 ** (shift - 1)), 2 ** (shift - 1) + 1):
            layer = exact_linear(
                w,
                Accumulator(63 if shift > 31 else 32, "wrap"),
                bias=[bias, -bias],
                requant=rq,
                seed=12345,
                tensor_id=7,
            )
            check(layer, (x,), both=False)


def test_rescale_beyond_int64_precondition_is_rejected_at_construction():
    """overflow='exact' passes sums wider than the accumulator to the requantizer; a rescale
    whose acc*m could exceed 2^62 is refused when the layer is built (ARITHMETIC.md §6)."""
    w = np.array([[127, 127, 127, 127]], np.int64)
    wf = PowerFormat(8, True, 1.0, np.array([1.0]))
    xf = UniformFormat(8, True, 1.0, 0)
    layer = Linear.build("big", w, wf, xf, w_frac_bits=20, x_frac_bits=20, acc=Accumulator(8, "exact"))
    rq = Rescale(np.array([2**31 - 1], np.int64), np.array([62], np.int64), 0, -(2**7), 2**7 - 1, 0, 31)
    with pytest.raises(ValueError, match="rescale needs"):
        dataclasses.replace(layer, requant=rq)


def test_split_gemm_path_when_bound_exceeds_2_53():
    rng = np.random.default_rng(1)
    w = rng.integers(-127, 128, (6, 5))
    wf = PowerFormat(8, True, 1.0, np.array([1.0 / 127]))
    xf = UniformFormat(8, False, 1.0, 0)
    for overflow in ("wrap", "exact"):
        layer = Linear.build("big", w, wf, xf, w_frac_bits=40, x_frac_bits=12, acc=Accumulator(64, overflow))
        assert int(layer.bound.max()) >= 2**53
        x = rng.integers(0, 256, (7, 5))
        x[0] = 255
        before = cpu.STATS.get("gemm_split", 0)
        check(layer, (x,))
        assert cpu.STATS.get("gemm_split", 0) > before


def test_fast_paths_are_taken():
    """The BLAS paths run where their proof applies (so the oracle comparisons cover them)."""
    rng = np.random.default_rng(2)
    wf = PowerFormat(4, True, 2.0, np.array([0.01]))
    xf = PowerFormat(8, False, 2.0, np.array([0.02]))
    w = rng.integers(-7, 8, (5, 12))
    x = rng.integers(0, 256, (4, 12))
    for dp, key in (("operand", "gemm"), ("product", "product_gemm")):
        for overflow in ("wrap", "exact", "saturate"):
            layer = Linear.build("l", w, wf, xf, datapath=dp, acc=Accumulator(48, overflow))
            assert layer.no_overflow_possible()
            cpu.STATS.clear()
            check(layer, (x,), both=False)
            assert any(k.startswith(key) for k in cpu.STATS), cpu.STATS
            assert "int_sum" not in cpu.STATS and "int_saturate" not in cpu.STATS


def test_product_datapath_per_group_and_pair_tables():
    rng = np.random.default_rng(3)
    O, K = 4, 12
    wf = PowerFormat(4, True, 1.5, rng.uniform(0.01, 0.02, (O, 3)), "group", 4)
    for xexp in (1.5, 2.5):  # equal exponents: by-product table; different: pair table
        xf = PowerFormat(5, True, xexp, np.array([0.03]))
        for overflow in ("wrap", "saturate"):
            layer = Linear.build(
                "p", rng.integers(-7, 8, (O, K)), wf, xf, datapath="product", acc=Accumulator(12, overflow, 5)
            )
            check(layer, (rng.integers(-15, 16, (3, K)),))


def test_conv_groups_padding_dilation_uniform_zero_point():
    """Padded taps add 0 even when code 0 of a uniform input does not decode to 0."""
    rng = np.random.default_rng(4)
    wf = PowerFormat(4, True, 1.0, np.array([0.1]))
    xf = UniformFormat(4, False, 0.5, 9)
    w = rng.integers(-7, 8, (4, 2, 3, 2))
    for overflow in ("wrap", "saturate", "exact"):
        layer = Conv2d.build(
            "c",
            w,
            wf,
            xf,
            acc=Accumulator(16, overflow, 4),
            stride=(2, 1),
            padding=(2, 1),
            dilation=(1, 2),
            groups=2,
        )
        check(layer, (rng.integers(0, 16, (2, 4, 5, 4)),))


# ---- same input validation as the oracle ----------------------------------------------------
def _errors(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare type and message
        return type(e), str(e)
    return None


def test_same_validation_errors():
    wf = PowerFormat(4, True, 1.0, np.array([0.1]))
    xf = PowerFormat(4, False, 1.0, np.array([0.1]))
    lin = Linear.build("lin", np.ones((2, 3), np.int64), wf, xf)
    conv = Conv2d.build("conv", np.ones((2, 1, 3, 3), np.int64), wf, xf)
    add = Add.build("add", xf, xf)
    avg = AvgPool2d.build("avg", xf, kernel=2)
    gavg = AvgPool2d.build("gavg", xf, window=4)
    cases = [
        (lin, (np.array([[0, 1, 16]]),)),
        (lin, (np.array([[0, -1, 1]]),)),
        (lin, (np.zeros((2, 4), np.int64),)),
        (lin, (np.zeros(3, np.int64),)),
        (lin, (np.zeros((2, 3)),)),
        (lin, ([[0, 1, 2]],)),
        (conv, (np.zeros((1, 2, 4, 4), np.int64),)),
        (conv, (np.zeros((1, 1, 2, 2), np.int64),)),
        (conv, (np.full((1, 1, 4, 4), 99),)),
        (add, (np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64))),
        (add, (np.full(3, 16), np.zeros(3, np.int64))),
        (avg, (np.zeros((1, 1, 4), np.int64),)),
        (gavg, (np.zeros((1, 1, 3, 3), np.int64),)),
        (avg, (np.full((1, 1, 2, 2), -1),)),
        (MaxPool2d("mp", 2), (np.zeros((2, 2), np.int64),)),
    ]
    for layer, inputs in cases:
        want = _errors(lambda: oracle.run_layer(layer, *inputs))
        got = _errors(lambda: cpu.run_layer(layer, *inputs))
        assert want is not None and got == want, (layer.name, want, got)


def test_graph_runs_on_cpu_backend():
    rng = np.random.default_rng(5)
    wf = PowerFormat(4, True, 2.0, np.array([0.01]))
    xf = PowerFormat(8, False, 2.0, np.array([0.02]))
    conv = Conv2d.build("conv", rng.integers(-7, 8, (4, 2, 3, 3)), wf, xf, padding=1, out_fmt=xf, relu=True)
    pool = MaxPool2d("pool", 2)
    flat = Flatten("flat")
    lin = Linear.build("fc", rng.integers(-7, 8, (3, 16)), wf, xf, datapath="product", out_fmt=xf)
    g = Graph([conv, pool, flat, lin])
    x = rng.integers(0, 256, (2, 2, 4, 4))
    a = g.run(x, backend="numpy", intermediates=True)
    for opts in (None, CpuOptions(fast=False), CpuOptions(fused=False, use_float32=False)):
        b = g.run(x, backend="cpu", intermediates=True, options=opts)
        assert np.array_equal(a.output, b.output) and a.overflow == b.overflow
        for name in a.stages:
            assert_same(a.stages[name], b.stages[name], f"{name} {opts}")


def test_primitives_compiled_from_the_shared_source():
    """The compiled copies are the primitives' own bytecode (no re-implementation)."""
    assert cpu.PRIMITIVE_NAMES == P.NAMES and "sat_step" in P.NAMES
    for name in cpu.PRIMITIVE_NAMES:
        assert getattr(cpu.prim, name).py_func.__code__ is getattr(P, name).__code__


def test_layer_rejects_products_beyond_2_62():
    wf = PowerFormat(8, True, 1.0, np.array([1.0]))
    xf = UniformFormat(8, True, 1.0, 0)
    with pytest.raises(ValueError):
        Linear.build(
            "huge", np.array([[127]]), wf, xf, w_frac_bits=30, x_frac_bits=20, acc=Accumulator(64, "exact")
        )


# ---- fused exact-float path (cpu.fused): forced on and off, chunking and one-hot sides -----
def _fused_variants(layer, inputs):
    """The oracle's result for every fused setting: off, both one-hot sides, float32/float64,
    small chunk limits (many chunks, k-cuts inside a conv window), tiny conv row blocks."""
    want = oracle.run_layer(layer, *inputs)
    assert_same(want, cpu.run_layer(layer, *inputs, options=CpuOptions(fused=False)), "fused off")
    for side in (None, "weights", "activations"):
        for f32 in (True, False):
            for lim in (None, 2**12, 2**16):
                opts = CpuOptions(
                    int8=False,  # the float path (the int8 path: tests/test_cpu_int8.py)
                    one_hot=side,
                    use_float32=f32,
                    chunk_limit_f32=lim or 2**24,
                    chunk_limit_f64=lim or 2**53,
                    f32_max_chunks=10**6,
                    feature_bytes=1 if lim == 2**12 else 16 << 20,
                )
                assert_same(
                    want, cpu.run_layer(layer, *inputs, options=opts), f"fused {side} f32={f32} limit={lim}"
                )
    return want


def test_options_are_validated_and_frozen():
    with pytest.raises(ValueError, match="one_hot"):
        CpuOptions(one_hot="both")
    with pytest.raises(ValueError, match="chunk_limit_f32"):
        CpuOptions(chunk_limit_f32=2**24 + 1)  # beyond float32's exact integers
    with pytest.raises(TypeError, match="fast"):
        CpuOptions(fast=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cpu.DEFAULT.fast = False
    wf = PowerFormat(4, True, 1.0, np.array([0.1]))
    lin = Linear.build("lin", np.ones((2, 3), np.int64), wf, wf)
    with pytest.raises(TypeError, match="CpuOptions"):
        cpu.run_layer(lin, np.zeros((1, 3), np.int64), options={"fast": False})


def test_import_changes_no_environment():
    """Importing the CPU backend sets no environment variable (OMP_WAIT_POLICY is opt-in)."""
    import subprocess
    import sys

    code = (
        "import os; before = dict(os.environ); import nupes_sim.cpu, nupes_sim.graph; "
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items()); "
        "nupes_sim.cpu.use_passive_omp_wait(); print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "PASSIVE"


@settings(max_examples=25, deadline=None)
@given(linear_case(max_batch=4, max_out=5, max_k=24))
def test_fused_linear_variants_match_oracle(case):
    _fused_variants(*case)


@settings(max_examples=25, deadline=None)
@given(conv_case())
def test_fused_conv_variants_match_oracle(case):
    _fused_variants(*case)


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("xexp", [2.0, 1.5])
def test_fused_path_is_taken_and_chunks(granularity, xexp):
    """Bench-like layers (W4 power weights, A8 activations): the fused path runs, float32 with
    several chunks for the product datapath, and equals the oracle with it on and off."""
    rng = np.random.default_rng(7)
    O, K = 6, 40
    scale = {
        "tensor": np.array([0.01]),
        "channel": rng.uniform(0.005, 0.02, O),
        "group": rng.uniform(0.005, 0.02, (O, 4)),
    }[granularity]
    wf = PowerFormat(4, True, 2.0, scale, granularity, 10)
    xf = PowerFormat(8, False, xexp, np.array([0.02]))
    of = PowerFormat(8, False, 2.0, np.array([0.05]))
    w = rng.integers(-7, 8, (O, K))
    x = rng.integers(0, 256, (5, K))
    for dp in ("operand", "product"):
        for overflow in ("wrap", "exact"):
            layer = Linear.build(
                "l",
                w,
                wf,
                xf,
                datapath=dp,
                acc=Accumulator(48, overflow),
                out_fmt=of,
                relu=True,
                product_frac_bits=20,
                w_frac_bits=14,
                x_frac_bits=10,
            )
            cpu.STATS.clear()
            _fused_variants(layer, (x,))
            if dp == "product" and granularity == "group":
                # one table row per group: 24 rows x 7 magnitudes, and 255 activation
                # magnitudes: no short decomposition, the integer kernel runs
                assert "int_sum" in cpu.STATS, cpu.STATS
                continue
            assert "gemm_float32" in cpu.STATS or "gemm_float64" in cpu.STATS, cpu.STATS
            if xexp == 2.0:  # products < 2^16: the small limits force several chunks
                assert "chunked" in cpu.STATS, cpu.STATS
            cpu.STATS.clear()
            check(layer, (x,), both=False)
            if dp == "product" and granularity != "group":
                assert "product_gemm" in cpu.STATS and "int_sum" not in cpu.STATS, cpu.STATS


def test_fused_per_group_product_takes_the_activation_side():
    """Per-group weight scales keep one product-table row per group; with 4-bit activations
    the one-hot decomposition over the 15 activation magnitudes is short and exact."""
    rng = np.random.default_rng(10)
    wf = PowerFormat(4, True, 2.0, rng.uniform(0.005, 0.02, (6, 4)), "group", 10)
    xf = PowerFormat(4, False, 2.0, np.array([0.3]))
    layer = Linear.build(
        "g",
        rng.integers(-7, 8, (6, 40)),
        wf,
        xf,
        datapath="product",
        acc=Accumulator(40, "wrap"),
        product_frac_bits=20,
    )
    x = rng.integers(0, 16, (5, 40))
    cpu.STATS.clear()
    _fused_variants(layer, (x,))
    cpu.STATS.clear()
    check(layer, (x,), both=False)
    assert "product_gemm" in cpu.STATS and "int_sum" not in cpu.STATS, cpu.STATS


def test_fused_conv_groups_stride_and_zero_point():
    rng = np.random.default_rng(8)
    wf = PowerFormat(4, True, 1.5, rng.uniform(0.01, 0.03, 6), "channel")
    for xf, dp in (
        (UniformFormat(4, False, 0.5, 9), "operand"),
        (PowerFormat(5, True, 1.5, np.array([0.1])), "product"),
    ):
        layer = Conv2d.build(
            "c",
            rng.integers(-7, 8, (6, 2, 3, 2)),
            wf,
            xf,
            datapath=dp,
            acc=Accumulator(24, "wrap"),
            stride=(2, 1),
            padding=(2, 1),
            dilation=(1, 2),
            groups=3,
            product_frac_bits=12,
            out_fmt=PowerFormat(6, True, 1.0, np.array([0.2])),
        )
        x = rng.integers(xf.range.qmin, xf.range.qmax + 1, (2, 6, 7, 6))
        _fused_variants(layer, (x,))


def test_fused_input_dtypes_and_views():
    """uint8/int16/uint64 codes and non-contiguous views decode as int64 codes do."""
    rng = np.random.default_rng(9)
    wf = PowerFormat(4, True, 2.0, np.array([0.01]))
    xf = PowerFormat(8, False, 2.0, np.array([0.02]))
    for dp in ("operand", "product"):
        layer = Linear.build("l", rng.integers(-7, 8, (3, 9)), wf, xf, datapath=dp)
        x = rng.integers(0, 256, (9, 4)).T  # non-contiguous view
        for dt in (np.uint8, np.int16, np.uint64, np.int64):
            check(layer, (np.asarray(x, dt),))
            check(layer, (np.asfortranarray(x.astype(dt)),))


@pytest.mark.parametrize(
    "acc",
    [
        Accumulator(8, "wrap"),
        Accumulator(8, "saturate"),
        Accumulator(8, "saturate", 1),
        Accumulator(8, "saturate", 2),
        Accumulator(64, "exact"),
    ],
)
def test_add_every_code_pair_at_the_clamps(acc):
    """Add (the fused per-element kernel): every (a, b) code pair of two 4-bit signed power
    formats whose decoded values reach +-2^7 each, so 8-bit sums wrap and saturate."""
    fa = PowerFormat(4, True, 1.0, np.array([1.0 / 7]))
    fb = PowerFormat(4, True, 0.5, np.array([1.0 / 7]))
    layer = Add.build("add", fa, fb, frac_bits=7 if acc.width == 8 else 20, acc=acc)
    a, b = np.meshgrid(np.arange(-7, 8), np.arange(-7, 8), indexing="ij")
    want = check(layer, (a.reshape(15, 15), b.reshape(15, 15)), both=False)
    assert (want["acc_exact"] != want["acc"]).any() == (acc.width == 8)  # the clamps act
