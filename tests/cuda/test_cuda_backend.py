"""numba.cuda backend == NumPy oracle (and the CPU backend when present), bit for bit.

Runs under the CUDA simulator in CI (NUMBA_ENABLE_CUDASIM=1, a separate pytest process; tiny
shapes, since every simulated thread costs ~0.3 ms) and on the hardware on a GPU machine
(cuda/gpu_check.sh). Every case runs under two launch configurations (threads per block,
GEMM tile shapes) plus the forced sequential MAC kernel: results must not depend on them.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_gate import cuda_unavailable_reason, require_or_skip

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.graph import Graph
from nupes_sim.layers import Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.rounding import HOST_MODES, RESCALE_MODES

ROOT = Path(__file__).resolve().parents[2]
_REASON = cuda_unavailable_reason()


@pytest.fixture(scope="module")
def cb():
    if _REASON is not None:
        require_or_skip(_REASON)
    from nupes_sim.cuda import backend

    return backend


try:
    from nupes_sim import cpu as CPU  # the Numba CPU backend, when this branch has it
except Exception:  # noqa: BLE001 - absent on this branch / not built
    CPU = None

# Two launch configurations (odd sizes on purpose: K and N tails, partial blocks) and the
# default one (256 threads, used once per test on the simulator: it is slow there).
LAUNCHES = [
    dict(threads=32, gemm=dict(BM=8, BN=8, BK=4, TM=2, TN=2)),
    dict(threads=7, gemm=dict(BM=6, BN=4, BK=3, TM=3, TN=1)),
]
ROUNDINGS = sorted(HOST_MODES)  # table roundings
RESCALE_ROUNDINGS = sorted(RESCALE_MODES)  # + double_round


def check(cb, layer, *inputs, default_launch=False):
    want = oracle.run_layer(layer, *inputs)
    runs = [dict(l) for l in LAUNCHES] + [dict(LAUNCHES[0], fast=False)]
    if default_launch:
        runs.append({})
    for kw in runs:
        got = cb.run_layer(layer, *inputs, **kw)
        assert sorted(got) == sorted(want), kw
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (k, kw)
            bad = np.flatnonzero(got[k] != want[k])
            assert bad.size == 0, (
                f"{layer.name} {k} {kw}: {bad.size} mismatches, first at {bad[:5]}: "
                f"got {got[k].reshape(-1)[bad[:5]]}, want {want[k].reshape(-1)[bad[:5]]}"
            )
    if CPU is not None:
        got = CPU.run_layer(layer, *inputs)
        for k in want:
            assert (got[k] == want[k]).all(), ("cpu", k)
    return want


# ------------------------------------------------------------------------------------------
# Random small layers
# ------------------------------------------------------------------------------------------
def _pfmt(rng, bits, signed, gran="tensor", channels=1, k=1):
    a = float(rng.choice([0.25, 0.5, 1.0, 2.0, 0.7]))
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    base = float(rng.choice([0.5, 1.0, 2.0])) ** a / qmax
    if gran == "tensor":
        return PowerFormat(bits, signed, a, base)
    if gran == "channel":
        return PowerFormat(bits, signed, a, base * rng.uniform(0.5, 2, channels), "channel")
    g = int(rng.choice([d for d in range(1, k + 1) if k % d == 0]))
    return PowerFormat(bits, signed, a, base * rng.uniform(0.5, 2, (channels, k // g)), "group", g)


def _requant(rng, kind, acc):
    if kind == "none":
        return dict(out_fmt=None)
    if kind == "thr":
        return dict(
            out_fmt=_pfmt(rng, int(rng.integers(2, 5)), bool(rng.integers(2))),
            relu=bool(rng.integers(2)),
            requant_rounding=str(rng.choice([r for r in ROUNDINGS if r != "stochastic"])),
        )
    zp_signed = bool(rng.integers(2))
    b = int(rng.integers(3, 9))
    lo = -(2 ** (b - 1)) if zp_signed else 0
    return dict(
        out_fmt=UniformFormat(
            b, zp_signed, float(rng.choice([0.05, 0.5, 2.0])), int(rng.integers(lo, lo + 2 ** (b - 1)))
        ),
        requant_rounding="stochastic" if kind == "stochastic" else str(rng.choice(RESCALE_ROUNDINGS)),
        mult_bits=int(rng.choice([8, 15, 31])),
        relu=bool(rng.integers(2)),
    )


def mac_layer(seed, conv, datapath, overflow, rq):
    """A random small Linear/Conv2d; narrow accumulators so that saturate and wrap act."""
    rng = np.random.default_rng(seed)
    for _ in range(50):
        try:
            if conv:
                groups = int(rng.choice([1, 2]))
                O, Cg, kh, kw = (
                    2 * int(rng.integers(1, 3)),
                    int(rng.integers(1, 3)),
                    int(rng.integers(1, 4)),
                    int(rng.integers(1, 3)),
                )
                shape = (O, Cg, kh, kw)
            else:
                O, K = int(rng.integers(1, 6)), int(rng.integers(1, 10))
                shape = (O, K)
            K = int(np.prod(shape[1:]))
            gran = str(
                rng.choice(["tensor", "channel", "group"] if datapath == "operand" else ["tensor", "channel"])
            )
            wbits = int(rng.integers(2, 6))
            wf = _pfmt(rng, wbits, True, gran, O, K)
            if datapath == "operand" and rng.integers(3) == 0:
                xb = int(rng.integers(2, 7))
                xs = bool(rng.integers(2))
                xf = UniformFormat(xb, xs, 0.1, int(rng.integers(0, 2)))
            else:
                xf = _pfmt(rng, int(rng.integers(2, 6)), bool(rng.integers(2)))
                if datapath == "product" and rng.integers(2):  # equal exponents: by-product table
                    xf = PowerFormat(xf.bits, xf.signed, wf.exponent, xf.scale)
            width = int(rng.choice([8, 10, 12, 16, 24, 32, 40, 64]))
            acc = Accumulator(width, overflow, int(rng.choice([0, 0, 1, 2, 3, 5])))
            bias = rng.uniform(-1, 1, O) * float(rng.choice([0, 0.1, 2]))
            w = rng.integers(wf.range.qmin, wf.range.qmax + 1, shape)
            kw_ = dict(
                datapath=datapath,
                w_frac_bits=int(rng.integers(2, 12)),
                x_frac_bits=int(rng.integers(2, 10)),
                product_frac_bits=int(rng.integers(4, 16)),
                bias=bias,
                acc=acc,
                rounding=str(rng.choice(ROUNDINGS)),
                seed=int(rng.integers(0, 2**32)),
                tensor_id=int(rng.integers(0, 1000)),
                **_requant(rng, rq, acc),
            )
            if conv:
                kw_.update(
                    stride=tuple(int(v) for v in rng.integers(1, 3, 2)),
                    padding=tuple(int(v) for v in rng.integers(0, 3, 2)),
                    dilation=tuple(int(v) for v in rng.integers(1, 3, 2)),
                    groups=groups,
                )
                w = rng.integers(wf.range.qmin, wf.range.qmax + 1, (O, Cg, kh, kw))
                x = rng.integers(
                    xf.range.qmin, xf.range.qmax + 1, (int(rng.integers(1, 3)), Cg * groups, 4, 5)
                )

                def build(**k):
                    return Conv2d.build("conv", w, wf, xf, **dict(kw_, **k))
            else:
                x = rng.integers(xf.range.qmin, xf.range.qmax + 1, (int(rng.integers(1, 5)), K))

                def build(**k):
                    return Linear.build("fc", w, wf, xf, **dict(kw_, **k))

            L = build()
            if overflow != "exact" and rng.integers(4):
                # an accumulator a few bits narrower than the worst case, so clamps/wraps happen
                bits = int(L.bound.max()).bit_length() + 1 - int(rng.integers(1, 5))
                acc = Accumulator(max(8, bits), overflow, acc.tile)
                L = build(acc=acc, **_requant(rng, rq, acc))
            if conv:
                L.out_hw(4, 5)
            return L, x
        except ValueError:
            continue
    raise AssertionError("no valid random layer")


CASES = [
    (dp, ov, rq)
    for dp in ("operand", "product")
    for ov in ("wrap", "saturate", "exact")
    for rq in ("none", "thr", "rescale", "stochastic")
]


@pytest.mark.parametrize("dp,ov,rq", CASES)
def test_linear_random(cb, dp, ov, rq):
    for s in range(3):
        L, x = mac_layer(1000 + 17 * s + 3 * CASES.index((dp, ov, rq)), False, dp, ov, rq)
        check(cb, L, x)


@pytest.mark.parametrize("dp,ov,rq", CASES[::2] + [CASES[5], CASES[17]])
def test_conv_random(cb, dp, ov, rq):
    L, x = mac_layer(5000 + CASES.index((dp, ov, rq)), True, dp, ov, rq)
    check(cb, L, x)


def test_saturate_clamps_and_tiles(cb):
    # ARITHMETIC.md §4 worked examples through a real layer: unit products on an 8-bit
    # accumulator, order [-100, -100, 100, 100]: untiled 72, tiles of 2 give -1.
    wf = PowerFormat(8, True, 1.0, 1.0)
    xf = PowerFormat(8, True, 1.0, 1.0)
    w = np.array([[100, 100, 100, 100]])
    x = np.array([[-1, -1, 1, 1]])
    for tile, want in ((0, 72), (2, -1), (3, 72 - 100 + 100 - 100 + 100)):
        L = Linear.build("s", w, wf, xf, w_frac_bits=0, x_frac_bits=0, acc=Accumulator(8, "saturate", tile))
        got = check(cb, L, x)
        if tile != 3:
            assert got["acc"].tolist() == [[want]]
        assert got["acc_exact"].tolist() == [[0]]


def test_int64_gemm_path_and_default_launch(cb):
    """A bound above 2^31 takes the int64 GEMM; the default (256-thread) tile config runs once."""
    rng = np.random.default_rng(7)
    wf = PowerFormat(6, True, 0.5, 0.01)
    xf = PowerFormat(6, False, 0.5, 0.01)
    w = rng.integers(-31, 32, (3, 6))
    x = rng.integers(0, 64, (2, 6))
    for dp in ("operand", "product"):
        L = Linear.build(
            "big",
            w,
            wf,
            xf,
            datapath=dp,
            w_frac_bits=24,
            x_frac_bits=24,
            product_frac_bits=40,
            acc=Accumulator(40, "wrap"),
        )
        assert int(L.bound.max()) >= 2**31
        cb.STATS.clear()
        check(cb, L, x, default_launch=(dp == "operand"))
        assert cb.STATS.get("gemm_int64", 0) >= 1 and cb.STATS.get("gemm_int32", 0) == 0


def test_add_pools_flatten_graph(cb):
    rng = np.random.default_rng(11)
    for i, ov in enumerate(("wrap", "saturate", "exact")):
        af, bf = _pfmt(rng, 4, True), _pfmt(rng, 3, False)
        acc = Accumulator(int(rng.choice([8, 10, 16])), ov, i)
        for rq in ("none", "thr", "stochastic"):
            A = Add.build(
                "add",
                af,
                bf,
                frac_bits=int(rng.integers(4, 9)),
                acc=acc,
                tensor_id=5,
                seed=9,
                **_requant(rng, rq, acc),
            )
            a = rng.integers(af.range.qmin, af.range.qmax + 1, (2, 3, 2, 3))
            b = rng.integers(bf.range.qmin, bf.range.qmax + 1, (2, 3, 2, 3))
            check(cb, A, a, b)
            check(cb, A, a[0, 0, 0], b[0, 0, 0])  # 1-D: channel axis 0
        xf = _pfmt(rng, 4, bool(i % 2))
        for kernel, stride in (((2, 2), None), ((3, 2), (1, 2)), (None, None)):
            x = rng.integers(xf.range.qmin, xf.range.qmax + 1, (2, 3, 4, 5))
            window = None if kernel else 20
            rq = _requant(rng, ("thr", "rescale", "stochastic")[i], acc)
            rq.pop("relu", None)
            P = AvgPool2d.build(
                "avg",
                xf,
                frac_bits=int(rng.integers(4, 12)),
                acc=acc,
                kernel=kernel,
                stride=stride,
                window=window,
                tensor_id=3,
                seed=1,
                **rq,
            )
            check(cb, P, x)
    x = rng.integers(-7, 8, (2, 3, 5, 4))
    for kernel, stride, pad in (((2, 2), None, (0, 0)), ((3, 3), (2, 1), (1, 1)), ((2, 3), (1, 1), (1, 0))):
        check(cb, MaxPool2d("mp", kernel, stride, pad), x)
    check(cb, Flatten("fl"), x)
    # a small graph through Graph.run(backend='cuda'), every stage compared
    wf, xf = _pfmt(rng, 4, True), _pfmt(rng, 4, False)
    conv = Conv2d.build(
        "c1",
        rng.integers(-7, 8, (2, 1, 2, 2)),
        wf,
        xf,
        padding=1,
        acc=Accumulator(16, "saturate"),
        out_fmt=_pfmt(rng, 4, False),
        relu=True,
    )
    g = Graph(
        [
            conv,
            MaxPool2d("p1", 2),
            Flatten("f"),
            Linear.build("fc", rng.integers(-7, 8, (3, 2 * 2 * 3)), wf, xf, acc=Accumulator(20, "wrap")),
        ]
    )
    x = rng.integers(0, 16, (2, 1, 4, 5))
    want = g.run(x, backend="numpy", intermediates=True)
    got = g.run(x, backend="cuda", intermediates=True)
    assert (got.output == want.output).all()
    for name, st in want.stages.items():
        for k in st:
            assert (got.stages[name][k] == st[k]).all(), (name, k)
    assert got.overflow == want.overflow


def test_input_validation_matches_oracle(cb):
    wf, xf = PowerFormat(4, True, 0.5, 1.0), PowerFormat(4, False, 0.5, 1.0)
    L = Linear.build("fc", np.ones((2, 3), int), wf, xf)
    for bad in (np.array([[0, 1, 16]]), np.array([[0, 1]]), np.array([[-1, 0, 0]])):
        with pytest.raises(ValueError) as e1:
            oracle.run_layer(L, bad)
        with pytest.raises(ValueError) as e2:
            cb.run_layer(L, bad)
        assert str(e1.value) == str(e2.value)


def test_empty_batch(cb):
    wf, xf = PowerFormat(4, True, 0.5, 1.0), PowerFormat(4, False, 0.5, 1.0)
    L = Linear.build(
        "fc", np.ones((2, 3), int), wf, xf, out_fmt=UniformFormat(8, True, 0.1), requant_rounding="stochastic"
    )
    check(cb, L, np.zeros((0, 3), np.int64))


def test_ensure_available_names_the_cause(monkeypatch):
    from nupes_sim.cuda import _compat, backend

    monkeypatch.setattr(_compat, "numba_cuda_installed", lambda: False)
    with pytest.raises(RuntimeError, match="numba-cuda"):
        backend.ensure_available()
    monkeypatch.undo()
    if not _compat.numba_cuda_installed():
        pytest.skip("numba-cuda is not installed")
    from numba import cuda

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"is_available\(\) is False"):
        backend.ensure_available()
    with pytest.raises(RuntimeError, match=r"is_available\(\) is False"):
        Graph([Flatten("f")]).run(np.zeros((1, 2, 2, 2), int), backend="cuda")


def test_repo_root_first_does_not_shadow_nvidia_cuda():
    """`python -c` from the repository root puts cuda/ first on sys.path as a top-level `cuda`:
    NVIDIA's cuda namespace (cuda.bindings) and numba.cuda must still import."""
    from nupes_sim.cuda import _compat

    if not _compat.numba_cuda_installed():
        require_or_skip("numba-cuda is not installed")
    for name in ("bindings", "core", "pathfinder"):
        assert not (ROOT / "cuda" / name).exists(), f"cuda/{name} would shadow NVIDIA's cuda.{name}"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import sys; assert sys.path[0] in ('', %r); import cuda, cuda.bindings; "
        "from numba import cuda as nc; import nupes_sim.cuda.kernels as k; "
        "from nupes_sim import primitives as P; assert k.PRIMITIVE_NAMES == P.NAMES; "
        "print(cuda.bindings.__name__, nc.__name__, len(k.PRIMITIVE_NAMES))" % str(ROOT)
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cuda.bindings numba.cuda 10" in r.stdout


def test_numpy_without_row_stack_imports_numba_cuda():
    """NumPy 2.5 removed np.row_stack, which numba-cuda 0.30.4 overloads at import: the shim in
    cuda/_compat.py must make the import work and leave np.vstack untouched."""
    from nupes_sim.cuda import _compat

    if not _compat.numba_cuda_installed():
        require_or_skip("numba-cuda is not installed")
    code = (
        "import numpy as np\n"
        "if hasattr(np, 'row_stack'): del np.row_stack\n"
        "vstack = np.vstack\n"
        "import nupes_sim.cuda.kernels as k\n"
        "from nupes_sim.cuda import _compat as c\n"
        "assert c.ROW_STACK_SHIM and np.vstack is vstack and np.row_stack is not vstack\n"
        "assert (np.row_stack(([1], [2])) == [[1], [2]]).all()\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# Tile shapes of the register-tiled GEMM beyond LAUNCHES: several n and o tiles with tails in
# n, o and k, many BK slices (both shared-memory stages, the unguarded interior fast path of
# "SIMPLE" shapes next to guarded edge tiles), runs of 4 and 2 contiguous rows/columns per
# thread, and the grouped block order with a partial last group (GROUP smaller than the
# number of n tiles).
TILINGS = [
    dict(BM=64, BN=32, BK=4, TM=8, TN=4, GROUP=2),  # SIMPLE, two runs of 4 rows
    dict(BM=8, BN=8, BK=4, TM=2, TN=2, GROUP=3),  # SIMPLE, runs of 2
    dict(BM=6, BN=4, BK=3, TM=3, TN=1, GROUP=2),
]  # not SIMPLE: guarded loads only


@pytest.mark.parametrize("dp", ["operand", "product"])
def test_gemm_tilings_partial_tiles(cb, dp):
    rng = np.random.default_rng(23 if dp == "operand" else 29)
    wf = PowerFormat(4, True, 0.5, 1.0 / 7)
    xf = PowerFormat(4, dp == "product", 0.5, 1.0 / 7)
    kw = dict(datapath=dp, w_frac_bits=6, x_frac_bits=6, product_frac_bits=10, acc=Accumulator(16, "wrap"))
    fc = Linear.build("fc", rng.integers(-7, 8, (37, 21)), wf, xf, **kw)
    xl = rng.integers(xf.range.qmin, xf.range.qmax + 1, (70, 21))
    cv = Conv2d.build("cv", rng.integers(-7, 8, (20, 2, 3, 3)), wf, xf, padding=1, **kw)
    xc = rng.integers(xf.range.qmin, xf.range.qmax + 1, (2, 2, 6, 6))
    for L, x in ((fc, xl), (cv, xc)):
        want = oracle.run_layer(L, x)
        assert int(L.bound.max()) < 2**31 and (want["acc"] != want["acc_exact"]).any()  # wraps happen
        for g in TILINGS:
            cb.STATS.clear()
            got = cb.run_layer(L, x, gemm=g)
            assert cb.STATS == {"gemm_int32": 1}, (g, cb.STATS)
            for k in want:
                bad = np.flatnonzero(got[k] != want[k])
                assert bad.size == 0, f"{L.name} {k} {g}: {bad.size} mismatches, first at {bad[:5]}"


def test_unused_lut_entry_runs_like_the_oracle(cb):
    """#12 item 12 (tests/test_layer_validation.py): what construction accepts, cuda runs.
    The weight LUT's largest entry times the largest activation reaches 2^62, unused."""
    wf = PowerFormat(8, True, 0.5, np.array([0.847]))
    xf = UniformFormat(8, False, 1.0, 0)
    w = np.array([[1, -3, 5, 2]])
    layer = Linear.build("l", w, wf, xf, w_frac_bits=38, x_frac_bits=4, acc=Accumulator(64))
    assert int(np.abs(layer.w_table.lut).max()) * int(np.abs(layer.x_table.lut).max()) >= 2**62
    check(cb, layer, np.array([[255, 255, 255, 255], [0, 1, 2, 3], [255, 0, 255, 0]]))


def test_weight_side_terms_agree_with_product_table_index(cb):
    """The device reads lut[Bbase + |Bm·qx|]: that is tidx·L + ProductTable.index(|qw|, |qx|)
    wherever the product is nonzero (qw = 0 or qx = 0: sign(v) = 0, any valid entry adds 0)."""
    from nupes_sim.cuda.host_mac import _weights_t

    wf = PowerFormat(4, True, 1.5, np.array([[0.01, 0.02], [0.03, 0.04]]), "group", 3)
    for xexp in (1.5, 2.5):  # by-product table, pair table
        xf = PowerFormat(4, True, xexp, np.array([0.03]))
        w = np.array([[-7, 0, 3, 7, -1, 2], [5, -5, 0, 1, 6, -6]])
        layer = Linear.build("p", w, wf, xf, datapath="product")
        pt, L = layer.p_table, layer.p_table.lut.shape[1]
        t = _weights_t(layer, slice(None))
        for qx in range(-7, 8):
            got = t["Bbase"].T + np.abs(t["Bm"].T * qx)
            want = layer.w_table_index * L + pt.index(np.abs(w), abs(qx))
            assert (got == want)[(w != 0) & (qx != 0)].all()
            assert ((got >= 0) & (got < pt.lut.size)).all()
