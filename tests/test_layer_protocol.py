"""The layer protocol (nupes_sim/layers/base.py): every registered layer type has a kernel in
every backend, and what it declares (stages, output shape, stage ranges, golden parameters,
feeding description) agrees with what the backends compute."""

import dataclasses
import importlib

import numpy as np
import pytest
from hypothesis import given
from strategies import any_case
from tiny_models import add_inputs, add_net, conv_inputs, conv_net

from nupes_sim import oracle
from nupes_sim.graph import BACKENDS, Graph
from nupes_sim.layers import LAYER_TYPES, Layer, is_layer, register
from nupes_sim.serialize import LAYER_CLASSES


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_layer_type_has_a_kernel_in_every_backend(backend):
    try:
        module = importlib.import_module(BACKENDS[backend])
    except RuntimeError as e:  # cuda without numba-cuda: nothing to check there
        pytest.skip(f"{backend} backend not importable: {e}")
    missing = sorted(n for n, c in LAYER_TYPES.items() if c not in module.OPS)
    assert not missing, f"{backend} backend has no kernel for {missing}"


def test_registry_is_what_model_files_and_graphs_use():
    cnn = {"Linear", "Conv2d", "Add", "MaxPool2d", "AvgPool2d", "Flatten"}
    transformer = {"Embedding", "ElementwiseTable", "MatMul", "Softmax", "LayerNorm", "Reshape", "Transpose"}
    assert set(LAYER_TYPES) == cnn | transformer | {"Slice", "PadMask"}
    assert LAYER_CLASSES is LAYER_TYPES
    for name, cls in LAYER_TYPES.items():
        assert cls.__name__ == name and issubclass(cls, Layer) and dataclasses.is_dataclass(cls)


def test_unregistered_subclass_is_refused_by_graph():
    sub = type("MyFlatten", (LAYER_TYPES["Flatten"],), {})
    assert not is_layer(sub("f"))
    with pytest.raises(TypeError, match="unsupported layer type MyFlatten"):
        Graph([sub("f")])


def test_register_refuses_a_second_class_of_the_same_name():
    with pytest.raises(TypeError, match="already registered"):
        register(type("Flatten", (Layer,), {}))


def _check_layer(layer, inputs, backend="numpy"):
    st = oracle.run_layer(layer, *inputs) if backend == "numpy" else None
    assert tuple(st) == tuple(layer.stages())
    shape = layer.out_shape([x.shape for x in inputs])
    shapes = layer.stage_shapes([x.shape for x in inputs])
    assert shapes["out"] == shape and tuple(shapes) == tuple(st)
    for s, a in st.items():
        assert a.shape == shapes[s], (type(layer).__name__, s)
    in_r = tuple(None if r is None else (r.qmin, r.qmax) for r in layer.in_ranges())
    for x, r in zip(inputs, layer.in_ranges()):
        if r is not None and x.size:
            assert r.qmin <= x.min() and x.max() <= r.qmax
    # pass-through layers take their range from their input: give them the observed one
    in_r = tuple(
        (int(x.min(initial=0)), int(x.max(initial=0))) if r is None else r for x, r in zip(inputs, in_r)
    )
    for s, a in st.items():
        r = layer.stage_range(s, in_r)
        if r is not None and a.size:
            assert r[0] <= a.min() and a.max() <= r[1], (type(layer).__name__, s, r)
    ds, info = layer.golden_params()
    for k, a in ds.items():
        assert np.asarray(a).dtype.kind in "iu", k
        w = layer.param_width(k)
        if w is not None and a.size:
            bits, signed = w
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            assert lo <= a.min() and a.max() <= hi, k
    out = st["out"]
    if out.size:
        for flat in (0, out.size - 1):
            multi = tuple(int(v) for v in np.unravel_index(flat, out.shape))
            feed = layer.feeding(multi, inputs, tuple(f"in{i}" for i in range(len(inputs))))
            assert isinstance(feed, dict)
            if "window_codes" in feed and type(layer).__name__ == "MaxPool2d":
                taps = [v for row in feed["window_codes"] for v in row if v is not None]
                assert max(taps) == out[multi]  # the feeding window is the one the kernel used
            if "source_value" in feed:
                assert feed["source_value"] == out[multi]
            if "a" in feed:
                assert (feed["a"], feed["b"]) == (inputs[0][multi], inputs[1][multi])
    for s, a in st.items():  # stages of another shape (row statistics) have feeding too
        if a.shape != shape and a.size:
            multi = tuple(int(v) for v in np.unravel_index(a.size - 1, a.shape))
            assert isinstance(layer.feeding(multi, inputs, tuple(f"in{i}" for i in range(len(inputs)))), dict)
    ref, kind = layer.float_reference(inputs)
    assert (ref is None) == ("acc" not in st)
    if ref is not None:
        assert ref.shape == shapes["acc"] and kind in ("real formats", "LUT values x unit")


@given(any_case())
def test_self_description_agrees_with_the_oracle(case):
    layer, inputs = case
    _check_layer(layer, inputs)


@pytest.mark.parametrize(
    "make,inputs",
    [(conv_net, conv_inputs), (add_net, add_inputs), (lambda: conv_net(datapath="product"), conv_inputs)],
)
def test_graph_out_shapes_match_runs(make, inputs):
    g = make()
    x = inputs(2)
    r = g.run(x, backend="numpy", intermediates=True)
    shapes = g.out_shapes(x.shape)
    values = {"input": x}
    for n in g.nodes:
        assert {s: a.shape for s, a in r.stages[n.name].items()} == {
            s: shapes[n.name] for s in n.layer.stages()
        }
        _check_layer(n.layer, [values[i] for i in n.inputs])
        values[n.name] = r.stages[n.name]["out"]


def test_out_shape_refuses_what_the_layer_cannot_take():
    g = conv_net()
    with pytest.raises(ValueError, match="conv: input shape"):
        g.out_shapes((1, 2, 8, 8))
    with pytest.raises(ValueError, match="avg: input 1x1 is smaller than the 2x2 window"):
        g.nodes[2].layer.out_shape([(1, 4, 1, 1)])
    gap = dataclasses.replace(
        g.nodes[2].layer, kernel=None, stride=None
    )  # global pooling built for 4 elements
    assert gap.out_shape([(1, 4, 2, 2)]) == (1, 4, 1, 1)
    with pytest.raises(ValueError, match="requant tables were built for 4"):
        gap.out_shape([(1, 4, 3, 3)])
    with pytest.raises(ValueError, match="fc: input shape"):
        g.nodes[4].layer.out_shape([(1, 15)])


def test_unsigned_8bit_weight_codes_keep_their_values_in_golden_files(tmp_path):
    """weight_codes were stored as int8, so an unsigned 8-bit code 217 read back as -39."""
    from nupes_sim.formats import PowerFormat
    from nupes_sim.golden import read_golden, write_golden
    from nupes_sim.layers import Accumulator, Linear

    w = np.array([[0, 127, 128, 217, 255]])
    lin = Linear.build(
        "l",
        w,
        PowerFormat(8, False, 0.9, 0.01),
        PowerFormat(4, False, 0.9, 0.1),
        acc=Accumulator(32),
        w_frac_bits=4,
        x_frac_bits=4,
    )
    g = Graph([lin])
    write_golden(g, np.zeros((1, 5), np.int64), tmp_path / "g.h5")
    got = read_golden(tmp_path / "g.h5").layers["l"]["datasets"]["weight_codes"]
    assert np.array_equal(got, w)


@pytest.mark.parametrize("where", ["x_table", "w_table", "p_table", "add", "avgpool"])
def test_int64_min_table_entry_is_refused(where):
    """#12 item 11: np.abs(-2^63) is -2^63, so such an entry passed every bound check."""
    from nupes_sim.formats import PowerFormat
    from nupes_sim.layers import Accumulator, Add, AvgPool2d, Linear

    lo = np.iinfo(np.int64).min
    xf, wf = PowerFormat(4, True, 0.8, 0.1), PowerFormat(4, True, 0.8, 0.1)
    if where in ("x_table", "w_table", "p_table"):
        lin = Linear.build(
            "l",
            np.ones((2, 3), np.int64),
            wf,
            xf,
            datapath="product" if where == "p_table" else "operand",
            acc=Accumulator(64),
        )
        t = getattr(lin, where)
        lut = t.lut.copy()
        lut[0, {"p_table": -1, "x_table": 0, "w_table": 1 - lin.w_range.qmin}[where]] = (
            lo  # w: the used code 1
        )
        kw = {f.name: getattr(lin, f.name) for f in dataclasses.fields(lin) if f.init}
        kw[where] = dataclasses.replace(t, lut=lut)
        with pytest.raises(ValueError, match="2\\^62"):
            Linear(**kw)
    elif where == "add":
        a = Add.build("a", xf, xf, acc=Accumulator(64))
        lut = a.a_table.lut.copy()
        lut[0, 0] = lo
        with pytest.raises(ValueError, match="too large"):
            dataclasses.replace(a, a_table=dataclasses.replace(a.a_table, lut=lut))
    else:
        p = AvgPool2d.build("p", xf, acc=Accumulator(64), kernel=2)
        lut = p.x_table.lut.copy()
        lut[0, 0] = lo
        with pytest.raises(ValueError, match="does not fit int64"):
            dataclasses.replace(p, x_table=dataclasses.replace(p.x_table, lut=lut), kernel=(4, 4))
