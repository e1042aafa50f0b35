"""Building requantizers (docs/ARITHMETIC.md §6): the defects of issue #15 items 2-5, each
pinned by a test that failed before its fix."""

from fractions import Fraction

import exact_ref
import numpy as np
import pytest

from nupes_sim import oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import Accumulator, Linear
from nupes_sim.tables import THRESHOLD_MODES, _boundary, rescale_table, threshold_table


def test_tiny_output_exponent_thresholds_are_monotone_and_exact():
    """Item 2: y_β underflows float64 for a = 0.0013; the thresholds alternated [1, 0, 1, 0, ...]
    and acc = 0 mapped to code 6. They are now exactly 'the smallest acc whose code >= c'."""
    fmt = PowerFormat(5, False, 0.0013, 0.03125)
    for rounding in THRESHOLD_MODES:
        tab = threshold_table(1e-3, fmt, 32, rounding)
        assert (np.diff(tab.thr[0]) >= 0).all(), rounding
        code0 = tab.qmin + int((0 >= tab.thr[0]).sum())
        assert code0 == 0, rounding  # acc = 0: y = 0, z = 0, every mode gives code 0
        for j, t in enumerate(tab.thr[0]):
            beta, inclusive = _boundary(tab.qmin + 1 + j, rounding)
            want = exact_ref.first_acc(
                ((Fraction(0.03125) * abs(beta), 0.0013),),
                (1 if beta > 0 else -1) / Fraction(1e-3),
                inclusive,
            )
            assert t == min(max(want, -(2**31)), 2**31), (rounding, j)


@pytest.mark.parametrize("a", [0.001, 0.0013, 0.004, 0.02])
@pytest.mark.parametrize("signed", [True, False])
def test_small_exponents_monotone(a, signed):
    for rounding in THRESHOLD_MODES:
        for unit in (1e-3, 2.0**-20, 0.37):
            tab = threshold_table(unit, PowerFormat(4, signed, a, 0.05), 24, rounding, relu=not signed)
            assert (np.diff(tab.thr[0]) >= 0).all(), (rounding, unit)


def test_rescale_multiplier_never_below_its_range():
    """Item 3: a small f = unit/s_out used to clamp the shift at 62 and leave m < 2^(mb-1),
    down to m = 0 (ceil then output 0 where the true result is 1). Now refused, naming mult_bits."""
    out = UniformFormat(8, True, 1.0, 0)
    with pytest.raises(ValueError, match="mult_bits"):
        rescale_table(2.0**-40, out, 16, 31, "ceil")
    # the same factor fits a narrower multiplier
    r = rescale_table(2.0**-40, out, 16, 20, "ceil")
    assert 2**19 <= int(r.multiplier[0]) < 2**20 and int(r.shift[0]) <= 62
    rng = np.random.default_rng(3)
    built = 0
    for _ in range(600):
        mb = int(rng.integers(1, 32))
        f = float(2.0 ** rng.uniform(-70, 8))
        try:
            r = rescale_table(f, out, 16, min(mb, 47), "ceil")
        except ValueError as e:
            assert "mult_bits" in str(e)
            continue
        built += 1
        m, sh = int(r.multiplier[0]), int(r.shift[0])
        assert 2 ** (mb - 1) <= m < 2**mb and 0 <= sh <= 62
    assert built > 300


def test_exact_mode_rescale_needs_bound_times_m_only():
    """Item 4: exact mode checks bound·m < 2^62 (§6(ii)), not width + mult_bits <= 63."""
    wf = PowerFormat(4, True, 1.0, 1.0)
    xf = UniformFormat(8, True, 1.0, 0)
    out = UniformFormat(8, True, 4.0, 0)
    layer = Linear.build(
        "l",
        np.array([[7, -3]]),
        wf,
        xf,
        w_frac_bits=2,
        x_frac_bits=0,
        acc=Accumulator(48, "exact"),
        out_fmt=out,
        mult_bits=31,
    )
    assert int(layer.requant.multiplier[0]) >= 2**30
    x = np.array([[127, -128]])
    assert oracle.run_layer(layer, x)["out"].tolist() == [[min(round((7 * 127 + 3 * 128) / 4), 127)]]
    with pytest.raises(ValueError, match="exceeds 63"):  # wrap still needs width + mb <= 63
        Linear.build("l", np.array([[7, -3]]), wf, xf, acc=Accumulator(48, "wrap"), out_fmt=out, mult_bits=31)
    with pytest.raises(ValueError, match="rescale needs"):  # exact: the bound decides
        Linear.build(
            "l",
            np.full((1, 64), 7),
            wf,
            xf,
            w_frac_bits=30,
            x_frac_bits=0,
            acc=Accumulator(64, "exact"),
            out_fmt=out,
            mult_bits=31,
        )


def test_stochastic_threshold_refused_even_with_one_code():
    """Item 5: ReLU6 folding that leaves one code used to skip the stochastic check."""
    fmt = PowerFormat(4, False, 1.0, 1.0)
    with pytest.raises(ValueError, match="stochastic"):
        threshold_table(0.01, fmt, 16, "stochastic", relu=True, clip_max=1e-9)
    with pytest.raises(ValueError, match="stochastic"):
        threshold_table(0.01, fmt, 16, "stochastic")
    # the one-code case itself builds for a deterministic mode: c(1e-9) = 0, so qmin = qmax = 0
    tab = threshold_table(0.01, fmt, 16, "half_even", relu=True, clip_max=1e-9)
    assert (tab.qmin, tab.qmax, tab.thr.shape) == (0, 0, (1, 0))
    with pytest.raises(ValueError, match="stochastic"):
        Linear.build(
            "l",
            np.array([[1]]),
            PowerFormat(4, True, 1.0, 1.0),
            fmt,
            out_fmt=fmt,
            relu=True,
            clip_max=1e-9,
            requant_rounding="stochastic",
        )


def test_double_round_in_golden_files(tmp_path):
    """Item 6: double_round (id 7) is stored in golden files and verified by every backend."""
    from nupes_sim.golden import read_golden, write_golden
    from nupes_sim.graph import Graph
    from nupes_sim.verify import verify

    rng = np.random.default_rng(6)
    wf = PowerFormat(4, True, 0.7, 0.1)
    xf = PowerFormat(4, False, 0.7, 0.05)
    fc = Linear.build(
        "fc",
        rng.integers(-7, 8, (5, 16)),
        wf,
        xf,
        acc=Accumulator(24, "wrap"),
        out_fmt=UniformFormat(8, True, 0.003, -2),
        requant_rounding="double_round",
        mult_bits=31,
        w_frac_bits=10,
        x_frac_bits=10,
    )
    assert fc.requant.rounding == 7 and int(fc.requant.shift[0]) > 31
    p = str(tmp_path / "g.h5")
    write_golden(Graph([fc]), rng.integers(0, 16, (4, 16)), p)
    assert read_golden(p).graph.nodes[0].layer.requant.rounding == 7
    for backend in ("numpy", "cpu"):
        rep = verify(p, backend=backend)
        assert rep.ok and rep.compared > 0
