"""Bad command-line values and bad input files: always one line on stderr and exit 2, never a
traceback, never an input overwritten, nothing allocated that cannot fit (issue #18)."""

import argparse
import os

import numpy as np
import pytest
from tiny_models import add_inputs, add_net, conv_net

from nupes_sim import cli
from nupes_sim.serialize import save_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cliv")
    save_model(conv_net(acc_width=16), d / "conv.h5", input_shape=(3, 8, 8))
    save_model(add_net(), d / "add.h5")
    np.save(d / "x.npy", add_inputs(4))
    np.save(d / "xf.npy", add_inputs(4).astype(np.float64))
    np.save(d / "x3.npy", add_inputs(4)[:, :3])
    np.save(d / "xobj.npy", np.zeros((2, 6), np.float32).astype(np.complex64))
    np.save(d / "xu64.npy", np.full((2, 6), 2**63 + 5, np.uint64))
    (d / "empty.npy").write_bytes(b"")
    (d / "text.npy").write_text("hello\n")
    (d / "text.h5").write_text("hello\n")
    return d


def call(capsys, *argv):
    """Run the CLI in-process; (exit code, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_2(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


# (verb args before the option, option, bad values) for every numeric option of every verb
M = "{d}/conv.h5"
NUMERIC = [
    (
        ["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"],
        "--wbits",
        ["1", "9", "0", "-4", "x", "nan", "4.5"],
    ),
    (
        ["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"],
        "--abits",
        ["1", "9", "0", "inf", ""],
    ),
    (["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"], "--group-size", ["0", "-1", "2.0"]),
    (["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"], "--steps", ["-1", "1e9", "many"]),
    (
        ["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"],
        "--acc-width",
        ["7", "65", "0", "32.5"],
    ),
    (["quantize", "fashion-resnet", "--calib", "c.npy", "--out", "m.h5"], "--seed", ["-1", str(2**63), "s"]),
    (["quantize", "charlm", "--out", "m.h5"], "--seq-len", ["0", "4097", "1.5"]),
    (["quantize", "minilm", "--out", "m.h5"], "--n-calib", ["0", "-2", "x"]),
    (
        ["simulate", M, "--input", "x.npy", "--out", "y.npy"],
        "--max-memory",
        ["0", "-1G", "nan", "1x", "1K", "inf"],
    ),
    (["golden", M, "--out", "g.h5"], "--random", ["0", "-1", "1e3", "two"]),
    (["golden", M, "--random", "1", "--out", "g.h5"], "--seed", ["-1", str(2**63), "1.5"]),
    (
        ["golden", M, "--random", "1", "--out", "g.h5"],
        "--shape",
        ["0,8,8", "a,b", "", "3,-8,8", "1,1,1,1,1,1,1,1,1"],
    ),
    (["golden", M, "--random", "1", "--out", "g.h5"], "--max-memory", ["0", "nan", "10Q"]),
    (["golden", M, "--stress", "--out", "g.h5"], "--stress-max", ["0", "-1", "x", str(10**7)]),
    (["verify", "g.h5"], "--max-memory", ["0", "-5", "inf"]),
    (["audit", M, "--out", "a"], "--random", ["0", "-3"]),
    (["audit", M, "--random", "1", "--out", "a"], "--seed", ["-1"]),
    (["audit", M, "--random", "1", "--out", "a"], "--shape", ["0"]),
    (
        ["audit", M, "--random", "1", "--out", "a"],
        "--clip-tolerance",
        ["nan", "inf", "-inf", "2", "-0.1", "1.0001", "x"],
    ),
    (["audit", M, "--random", "1", "--out", "a"], "--max-memory", ["0"]),
]


def test_table_covers_every_numeric_option():
    """Every option with a value type (int/float/size/shape) of every verb is in NUMERIC."""
    covered = {(a[0], opt) for a, opt, _ in NUMERIC}
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    want = set()
    for verb, sp in sub.choices.items():
        for act in sp._actions:
            if act.type is not None and act.option_strings:
                want.add((verb, act.option_strings[0]))
    assert want == covered, (want - covered, covered - want)


@pytest.mark.parametrize("pre,opt,bad", [(p, o, b) for p, o, bs in NUMERIC for b in bs])
def test_bad_numeric_value_one_line_exit_2(capsys, files, tmp_path, pre, opt, bad):
    argv = [a.format(d=files) for a in pre] + [f"{opt}={bad}"]
    code, err = call(capsys, *argv)
    assert_one_line_2(code, err, opt)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["golden", "{d}/conv.h5", "--random", "10000000000", "--out", "{t}/g.h5"], "memory budget"),
        (
            ["golden", "{d}/conv.h5", "--random", "2", "--shape", "3,100000,100000", "--out", "{t}/g.h5"],
            "memory budget",
        ),
        (
            ["golden", "{d}/conv.h5", "--random", "2", "--shape", "3,12,12", "--out", "{t}/g.h5"],
            "does not fit the model",
        ),
        (
            ["golden", "{d}/conv.h5", "--random", "2", "--shape", "3,8", "--out", "{t}/g.h5"],
            "does not fit the model",
        ),
        (
            [
                "golden",
                "{d}/conv.h5",
                "--random",
                "4",
                "--max-memory",
                "64M",
                "--shape",
                "3,2000,2000",
                "--out",
                "{t}/g.h5",
            ],
            "memory budget",
        ),
        (["audit", "{d}/conv.h5", "--random", "10000000000", "--out", "{t}/a"], "memory budget"),
        (["golden", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{d}/add.h5"], "same file as the model"),
        (["golden", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{d}/x.npy"], "same file as the input"),
        (
            ["golden", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{t}/g.h5", "--hex", "{d}"],
            "contains the model",
        ),
        (["golden", "{d}/add.h5", "--random", "1", "--out", "{t}/nofolder/g.h5"], "does not exist"),
        (["simulate", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{d}/x.npy"], "same file as the input"),
        (["simulate", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{d}/add.h5"], "same file as the model"),
        (["audit", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{d}"], "contains the model"),
        (["simulate", "{d}/add.h5", "--input", "{d}/empty.npy", "--out", "{t}/y.npy"], "is empty"),
        (["simulate", "{d}/add.h5", "--input", "{d}/text.npy", "--out", "{t}/y.npy"], "not a readable .npy"),
        (["simulate", "{d}/add.h5", "--input", "{d}/text.h5", "--out", "{t}/y.npy"], "not a readable HDF5"),
        (["simulate", "{d}/add.h5", "--input", "{d}/xf.npy", "--out", "{t}/y.npy"], "dtype float64"),
        (["simulate", "{d}/add.h5", "--input", "{d}/xobj.npy", "--out", "{t}/y.npy"], "dtype complex64"),
        (["simulate", "{d}/add.h5", "--input", "{d}/xu64.npy", "--out", "{t}/y.npy"], "does not fit int64"),
        (["simulate", "{d}/add.h5", "--input", "{d}/x3.npy", "--out", "{t}/y.npy"], "does not fit the model"),
        (
            ["simulate", "{d}/text.npy", "--input", "{d}/x.npy", "--out", "{t}/y.npy"],
            "cannot read model file",
        ),
        (["simulate", "{d}/x.npy", "--input", "{d}/x.npy", "--out", "{t}/y.npy"], "cannot read model file"),
        (["simulate", "{d}/empty.npy", "--input", "{d}/x.npy", "--out", "{t}/y.npy"], "is empty"),
        (["simulate", "{d}/add.h5", "--input", "{d}/x.npy", "--out", "{t}/y.txt"], ".npy or .h5"),
        (["golden", "{d}/add.h5", "--input", "{d}/x.npy", "--random", "2", "--out", "{t}/g.h5"], "not both"),
        (["verify", "{d}/x.npy"], "not a readable HDF5"),
        (["verify", "{d}"], "not a regular file"),
    ],
)
def test_bad_files_and_sizes_one_line_exit_2(capsys, files, tmp_path, argv, needle):
    before = {p: p.read_bytes() for p in files.iterdir() if p.is_file()}
    code, err = call(capsys, *[a.format(d=files, t=tmp_path) for a in argv])
    assert_one_line_2(code, err, needle)
    assert {p: p.read_bytes() for p in files.iterdir() if p.is_file()} == before  # no input touched
    assert not os.listdir(tmp_path)


def test_simulate_npy_output_is_exactly_the_named_file(capsys, files, tmp_path):
    out = tmp_path / "y.npy"
    code, err = call(capsys, "simulate", files / "add.h5", "--input", files / "x.npy", "--out", out, "-q")
    assert code == 0, err
    assert os.listdir(tmp_path) == ["y.npy"]
    assert np.array_equal(np.load(out), add_net().run(add_inputs(4), backend="numpy").output)


# ---- quantize: bad model and calibration files, NumPy / float64 calibration ----------------


@pytest.fixture(scope="module")
def qfiles(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from user_models import trained

    d = tmp_path_factory.mktemp("q")
    torch.save(trained().state_dict(), d / "w.pt")
    (d / "model.txt").write_text("not a model\n")
    save_model(add_net(), d / "m.h5")
    np.save(d / "calib.npy", np.random.default_rng(0).normal(size=(8, 1, 8, 8)))  # float64
    np.save(d / "calib_shape.npy", np.zeros((4, 3, 5, 5), np.float32))
    np.save(d / "calib_nan.npy", np.full((4, 1, 8, 8), np.nan, np.float32))
    np.save(d / "calib_1d.npy", np.zeros(4, np.float32))
    (d / "calib_empty.npy").write_bytes(b"")
    return d


ARCH = "user_models:TinyResNet"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["{d}/model.txt", "--arch", ARCH, "--calib", "{d}/calib.npy"], "not a PyTorch state dict"),
        (["{d}/m.h5", "--arch", ARCH, "--calib", "{d}/calib.npy"], "is an HDF5 file"),
        (["{d}/m.h5", "--calib", "{d}/calib.npy"], "is an HDF5 file"),
        (["{d}/w.pt", "--arch", "nosuchmodule:Net", "--calib", "{d}/calib.npy"], "cannot import"),
        (["{d}/w.pt", "--arch", "user_models:Nope", "--calib", "{d}/calib.npy"], "no nn.Module class"),
        (["{d}/w.pt", "--arch", "user_models:ViewNet", "--calib", "{d}/calib.npy"], "does not fit"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/calib_empty.npy"], "is empty"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/model.txt"], ".npy or .h5"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/calib_shape.npy"], "does not fit the model"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/calib_nan.npy"], "NaN"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/calib_1d.npy"], "batch first"),
        (["{d}/w.pt", "--arch", ARCH, "--calib", "{d}/m.h5"], "name the dataset"),
    ],
)
def test_quantize_bad_files_one_line_exit_2(capsys, qfiles, tmp_path, argv, needle):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    code, err = call(
        capsys,
        "quantize",
        *[a.format(d=qfiles) for a in argv],
        "--method",
        "rtn",
        "--out",
        tmp_path / "o.h5",
        "-q",
    )
    assert_one_line_2(code, err, needle)
    assert not os.listdir(tmp_path)


def test_quantize_refuses_out_equal_to_an_input(capsys, qfiles):
    before = (qfiles / "calib.npy").read_bytes()
    code, err = call(
        capsys,
        "quantize",
        qfiles / "w.pt",
        "--arch",
        ARCH,
        "--calib",
        qfiles / "calib.npy",
        "--out",
        qfiles / "calib.npy",
    )
    assert_one_line_2(code, err, "same file as the calibration file")
    code, err = call(
        capsys,
        "quantize",
        qfiles / "w.pt",
        "--arch",
        ARCH,
        "--calib",
        qfiles / "calib.npy",
        "--out",
        qfiles / "w.pt",
    )
    assert_one_line_2(code, err, "same file as the model")
    assert (qfiles / "calib.npy").read_bytes() == before


def test_api_accepts_numpy_and_float64_calibration():
    torch = pytest.importorskip("torch")
    from user_models import trained

    from nupes_sim.reference.api import quantize_model
    from nupes_sim.reference.pipeline import quantize_to_graph

    x64 = np.random.default_rng(1).normal(size=(6, 1, 8, 8))
    ex, _ = quantize_to_graph(trained(), calib=x64, method="rtn", progress=False)  # NumPy float64
    ex2, _ = quantize_to_graph(
        trained(), calib=torch.from_numpy(x64), method="rtn", progress=False
    )  # torch float64
    ex3, _ = quantize_to_graph(trained(), calib=torch.from_numpy(x64).float(), method="rtn", progress=False)
    codes = ex.encode_input(x64)
    out = ex.graph.run(codes, backend="numpy").output
    assert np.array_equal(out, ex2.graph.run(codes, backend="numpy").output)
    assert np.array_equal(out, ex3.graph.run(codes, backend="numpy").output)
    q, rep = quantize_model(trained(), method="gptq", wbits=4, calib=x64, progress=False)
    assert len(rep["layers"]) == 4 and all(r["loss_kind"] == "output_rel_mse" for r in rep["layers"])
