"""Layers are frozen and validated completely at construction (issue #9, #12 items 12-13).

What construction accepts, every backend runs (and gives the oracle's result); what it
refuses names the field, the value and what is allowed. Model loading goes through the same
constructors, so a file can never hold a layer the API would refuse.
"""

import dataclasses

import h5py
import numpy as np
import pytest
from h5_mutations import _rewrite
from tiny_models import add_net, conv_net

from nupes_sim import cpu, oracle
from nupes_sim.formats import PowerFormat, UniformFormat
from nupes_sim.layers import LAYER_TYPES, Accumulator, Add, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d
from nupes_sim.serialize import ModelFormatError, load_model, save_model
from nupes_sim.tables import DecodeTable, Rescale, Thresholds, product_table

WF = PowerFormat(4, True, 0.5, 0.1)
XF = PowerFormat(4, True, 0.5, 0.1)
UF = UniformFormat(8, False, 1.0, 0)


def one_of_each():
    w = np.arange(-3, 3).reshape(2, 3)
    return [
        Linear.build("lin", w, WF, XF, out_fmt=XF),
        Linear.build("prod", w, WF, XF, datapath="product", out_fmt=UF),
        Conv2d.build("conv", np.ones((2, 1, 2, 2), int), WF, XF, out_fmt=XF),
        Add.build("add", XF, XF, out_fmt=XF),
        AvgPool2d.build("avg", XF, kernel=2, out_fmt=XF),
        MaxPool2d("max", 2),
        Flatten("flat"),
    ]


def _kw(layer, **over):
    kw = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer) if f.init}
    kw.update(over)
    return kw


def test_every_layer_type_is_frozen_with_read_only_arrays():
    layers = one_of_each()
    assert {type(layer).__name__ for layer in layers} == set(LAYER_TYPES) - {
        n for n in LAYER_TYPES if LAYER_TYPES[n].__module__.startswith("nupes_sim.transformer")
    }
    for layer in layers:
        assert dataclasses.fields(layer) and type(layer).__dataclass_params__.frozen, type(layer)
        with pytest.raises(dataclasses.FrozenInstanceError):
            layer.name = "other"
        arrays = [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
        for t in (getattr(layer, k, None) for k in ("w_table", "x_table", "p_table", "a_table", "requant")):
            if t is not None:
                arrays += [v for v in vars(t).values() if isinstance(v, np.ndarray)]
        for a in arrays:
            with pytest.raises(ValueError, match="read-only"):
                a.reshape(-1)[:1] = 0


@pytest.mark.parametrize(
    "thr, qmin, qmax, match",
    [
        (
            [[0, 2, 1]],
            -1,
            2,
            r"thresholds thr row 0 is not non-decreasing: thr\[0, 1\] = 2 > thr\[0, 2\] = 1",
        ),
        ([[0, 1, 2], [5, 4, 6]], -1, 2, r"row 1 is not non-decreasing"),
        ([[0, 1]], -1, 2, r"thresholds thr has shape \(1, 2\); allowed: \(rows >= 1, qmax - qmin = 3\)"),
        (np.zeros((0, 3), np.int64), -1, 2, r"thresholds thr has shape \(0, 3\)"),
        ([[0.5, 1, 2]], -1, 2, r"thresholds thr must be an integer array, got dtype float64"),
        ([[0, 1, 2]], 2, -1, r"thresholds qmax=-1 is out of range"),
    ],
)
def test_thresholds_are_validated(thr, qmin, qmax, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Thresholds(np.asarray(thr), qmin, qmax)


def test_thresholds_lie_in_the_accumulator_range():
    lin = Linear.build("lin", np.zeros((3, 2), int), WF, XF, acc=Accumulator(16, "saturate"), out_fmt=XF)
    rq = lin.requant
    for v, ok in ((-(2**15), True), (2**15, True), (-(2**15) - 1, False), (2**15 + 1, False)):
        thr = np.full_like(rq.thr, v)
        make = lambda: dataclasses.replace(lin, requant=Thresholds(thr, rq.qmin, rq.qmax))  # noqa: E731
        if ok:
            make()
        else:
            with pytest.raises(
                ValueError, match=rf"lin.requant thresholds hold {v}; allowed: \[-32768, 32768\]"
            ):
                make()
    exact = Linear.build("lin", np.zeros((3, 2), int), WF, XF, acc=Accumulator(16, "exact"), out_fmt=XF)
    dataclasses.replace(exact, requant=Thresholds(np.full_like(rq.thr, 2**40), rq.qmin, rq.qmax))


def test_requant_rows_match_the_channels():
    lin = Linear.build("lin", np.zeros((3, 2), int), WF, XF, out_fmt=XF)
    two = Thresholds(np.repeat(lin.requant.thr, 2, axis=0), lin.requant.qmin, lin.requant.qmax)
    with pytest.raises(ValueError, match=r"lin.requant has 2 threshold rows; allowed: 1 or 3"):
        dataclasses.replace(lin, requant=two)
    add = Add.build("add", XF, XF, out_fmt=XF)
    with pytest.raises(ValueError, match=r"add.requant has 2 threshold rows; allowed: 1"):
        dataclasses.replace(add, requant=two)
    rq = Rescale(np.array([1, 1], np.int64), np.array([3, 3], np.int64), 0, 0, 255, 0, 31)
    avg = AvgPool2d.build("avg", XF, kernel=2, out_fmt=UF)
    with pytest.raises(ValueError, match=r"avg.requant has 2 rescale multipliers; allowed: 1"):
        dataclasses.replace(avg, requant=rq)


@pytest.mark.parametrize("overflow", ["wrap", "saturate", "exact"])
def test_out_of_precondition_rescale_is_refused_at_construction(overflow):
    """The known CPU/CUDA divergence (#9): a rescale whose |acc·m| can reach 2^62 made the
    CPU raise while CUDA finished the value on the host. Such a layer cannot be built, nor
    made by mutation (frozen fields, read-only arrays), so both backends dropped that code."""
    w = np.array([[7, 7, 7, 7]])
    layer = Linear.build("l", w, WF, XF, w_frac_bits=40, x_frac_bits=20, acc=Accumulator(64, overflow))
    rq = Rescale(np.array([2**31 - 1], np.int64), np.array([62], np.int64), 0, -128, 127, 0, 31)
    assert int(layer.bound.max()) * (2**31 - 1) >= 2**62  # |acc| <= bound < 2^63 in every mode
    with pytest.raises(ValueError, match=r"l: rescale needs \|acc\|·multiplier < 2\^62"):
        dataclasses.replace(layer, requant=rq)
    with pytest.raises(ValueError, match=r"l: rescale needs"):
        Linear(**_kw(layer, requant=rq))
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.requant = rq
    ok = Linear.build("l", w, WF, UF, acc=Accumulator(32, overflow), out_fmt=UF)
    with pytest.raises(ValueError, match="read-only"):
        ok.requant.multiplier[0] = 2**31 - 1


def test_rescale_fields_are_validated():
    args = dict(multiplier=[2**20], shift=[3], zero_point=0, qmin=0, qmax=255, rounding=0, mult_bits=20)
    Rescale(**dict(args, mult_bits=21))
    with pytest.raises(ValueError, match=r"multipliers must lie in \[0, 2\^mult_bits\) = \[0, 2\^20\)"):
        Rescale(**args)
    with pytest.raises(ValueError, match=r"rescale zero_point=4294967296 is out of range"):
        Rescale(**dict(args, mult_bits=21, zero_point=2**32))
    with pytest.raises(ValueError, match=r"rescale rounding=8 is out of range"):
        Rescale(**dict(args, mult_bits=21, rounding=8))


def test_tables_cover_the_code_ranges():
    lin = Linear.build("lin", np.zeros((2, 3), int), WF, XF)
    short = DecodeTable(lin.x_table.lut[:, :-1], lin.x_table.qmin, lin.x_table.unit, lin.x_table.frac_bits)
    with pytest.raises(ValueError, match=r"lin.x_table covers 14 codes from -7; allowed: the 15 codes -7..7"):
        dataclasses.replace(lin, x_table=short)
    shifted = dataclasses.replace(lin.w_table, qmin=0)
    with pytest.raises(ValueError, match=r"lin.w_table covers 15 codes from 0"):
        dataclasses.replace(lin, w_table=shifted)
    p = Linear.build("p", np.zeros((2, 3), int), WF, XF, datapath="product")
    pt = p.p_table
    for bad in (
        dataclasses.replace(pt, lut=pt.lut[:, :-1]),
        dataclasses.replace(pt, mx=pt.mx - 1),
        product_table(PowerFormat(3, True, 0.5, 0.1), XF, 16),
    ):
        with pytest.raises(
            ValueError, match=r"p.p_table has mx=\d+ and \d+ entries per row; allowed: mx=7 and"
        ):
            dataclasses.replace(p, p_table=bad)
    with pytest.raises(ValueError, match=r"p.w_table_index contains 1; allowed: 0..0"):
        dataclasses.replace(p, w_table_index=np.ones((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"lin.p_table must be None for the operand datapath"):
        dataclasses.replace(lin, p_table=pt)


def test_product_table_index_is_the_one_formula():
    """ProductTable.index is what the builder's layout means, and what the CPU and CUDA
    weight-side terms (base + step·|qx|) compute, for every (|qw|, |qx|) of the ranges."""
    from nupes_sim.cpu.ops import _weights

    for xexp in (0.5, 0.75):  # by-product table, pair table
        xf = PowerFormat(4, True, xexp, 0.1)
        w = np.arange(-7, 8).reshape(1, 15)
        layer = Linear.build("p", w, WF, xf, datapath="product")
        pt = layer.p_table
        assert pt.by_product == (xexp == 0.5)
        m, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        want = m * n if pt.by_product else m * 8 + n
        assert (pt.index(m, n) == want).all()
        assert pt.lut.shape[1] == pt.length(7) == int(want.max()) + 1
        base, step = pt.index_terms(m)
        assert (base + step * n == want).all()
        wts = _weights(layer)  # CPU: off + mul·|qx| (row 0 of the table: off has no t·L)
        for qx in range(-7, 8):
            assert (wts["off"] + wts["mul"] * abs(qx) == pt.index(np.abs(w), abs(qx))).all()


def test_per_channel_activation_formats_are_refused():
    """#12 item 13: only scale entry 0 of an activation format was used."""
    pc = PowerFormat(4, True, 0.5, np.array([0.1, 0.2]), "channel")
    with pytest.raises(
        ValueError, match=r"avg: x_fmt.granularity='channel' is not implemented for activations"
    ):
        AvgPool2d.build("avg", pc, kernel=2)
    with pytest.raises(ValueError, match=r"add: b_fmt.granularity='channel'"):
        Add.build("add", XF, pc)
    with pytest.raises(ValueError, match=r"fc: x_fmt.granularity='channel'"):
        Linear.build("fc", np.zeros((2, 3), int), WF, pc)
    avg = AvgPool2d.build("avg", XF, kernel=2)
    two = DecodeTable(np.repeat(avg.x_table.lut, 2, axis=0), avg.x_table.qmin, avg.x_table.unit, 12)
    with pytest.raises(
        ValueError, match=r"avg.x_table has 2 rows \(per-channel activation scales\); allowed: 1"
    ):
        dataclasses.replace(avg, x_table=two)
    add = Add.build("add", XF, XF)
    with pytest.raises(ValueError, match=r"add.a_table has 2 rows"):
        dataclasses.replace(add, a_table=two)
    lin = Linear.build("fc", np.zeros((2, 3), int), WF, XF)
    with pytest.raises(ValueError, match=r"fc.x_table has 2 rows"):
        dataclasses.replace(lin, x_table=dataclasses.replace(two, frac_bits=lin.x_table.frac_bits))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaxPool2d("m", 0), r"m.kernel=0 is out of range"),
        (lambda: MaxPool2d("m", 2, stride=(1, 0)), r"m.stride=0 is out of range"),
        (lambda: MaxPool2d("m", 2, padding=-1), r"m.padding=-1 is out of range"),
        (lambda: MaxPool2d("m", 2, padding=2), r"m.padding=\(2, 2\) is not allowed: at most half the kernel"),
        (lambda: MaxPool2d("m", 2.5), r"m.kernel must be an int or a pair"),
        (lambda: Flatten(""), r"layer name must be a non-empty string"),
        (lambda: AvgPool2d.build("a", XF, kernel=(2, 0)), r"kernel=0 is out of range"),
        (lambda: AvgPool2d.build("a", XF, window=0), r"a.window=0 is out of range"),
        (lambda: Add.build("a", XF, XF, seed=-1), r"a.seed=-1 is out of range"),
    ],
)
def test_geometry_and_ids_are_validated(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_unused_lut_entry_runs_on_every_backend():
    """#12 item 12: 8-bit weights, exponent 0.5, w_frac_bits=38: the weight LUT's largest
    entry times the largest activation reaches 2^62, but no weight present uses it. The rule
    (decided at construction, docs/ARITHMETIC.md §4): every product the layer can form, i.e.
    the weights present times every activation code, is < 2^62. The CPU backend used to
    check the whole LUT and refuse what the oracle ran."""
    wf = PowerFormat(8, True, 0.5, np.array([0.847]))
    layer = Linear.build(
        "l", np.array([[1, -3, 5, 2]]), wf, UF, w_frac_bits=38, x_frac_bits=4, acc=Accumulator(64)
    )
    assert int(np.abs(layer.w_table.lut).max()) * int(np.abs(layer.x_table.lut).max()) >= 2**62
    x = np.array([[255, 255, 255, 255], [0, 1, 2, 3], [255, 0, 255, 0]])
    want = oracle.run_layer(layer, x)
    for fast in (True, False):
        got = cpu.run_layer(layer, x, fast=fast)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ValueError, match=r"l: a single product can reach \d+ >= 2\^62"):
        Linear.build(
            "l", np.array([[127, 1, 0, 0]]), wf, UF, w_frac_bits=38, x_frac_bits=4, acc=Accumulator(64)
        )


@pytest.mark.parametrize(
    "net, key, fn, match",
    [
        (
            conv_net,
            "requant.thr",
            lambda a: a[:, ::-1].copy(),
            r"node 0 \(conv\).requant: thresholds thr row 0 is not non-decreasing",
        ),
        (conv_net, "x_table.lut", lambda a: np.repeat(a, 2, axis=0), r"x_table has 2 rows"),
        (conv_net, "multiplier", lambda a: np.full_like(a, 2**31), r"multipliers must lie in"),
        (add_net, "p_table.lut", lambda a: a[:, :-1].copy(), r"p_table has mx=\d+ and \d+ entries per row"),
        (add_net, "a_table.lut", lambda a: a[:, ::-1].copy() * 2**61, r"decoded values too large"),
    ],
)
def test_model_files_holding_a_refused_layer_do_not_load(tmp_path, net, key, fn, match):
    g = net()
    path = str(tmp_path / "m.h5")
    save_model(g, path)
    with h5py.File(path, "r") as f:
        keys = []
        f.visit(
            lambda name: (
                keys.append(name) if isinstance(f[name], h5py.Dataset) and name.endswith(key) else None
            )
        )
    assert keys, f"{net.__name__} has no {key}"
    with h5py.File(path, "r+") as f:
        _rewrite(f, keys[0], fn(f[keys[0]][()]))  # checksum recomputed: only the constructor can refuse
    with pytest.raises(ModelFormatError, match=match):
        load_model(path)
