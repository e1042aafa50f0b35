"""A user's own CNN from float data to a passing comparison on the command line (#12 item 3
and "Done means"): torch.export -> quantize -> simulate --float-input -> golden --hex ->
verify -> diff -> audit, in process (nupes_sim.cli.main); the model file's stored input
format and output unit (model format 2 and later), old version-1 files, and the audit's counts (#12.7)."""

import json
import os
import re

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from user_models import trained  # noqa: E402

from nupes_sim.cli import main  # noqa: E402
from nupes_sim.serialize import load_model  # noqa: E402
from nupes_sim.versions import MODEL_FORMAT_VERSION  # noqa: E402


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    d = tmp_path_factory.mktemp("floatcli")
    m = trained()
    batch = torch.export.Dim("batch")
    prog = torch.export.export(m, (torch.randn(2, 1, 8, 8),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(prog, d / "my.pt2")
    rng = np.random.default_rng(0)
    np.save(d / "calib.npy", rng.normal(size=(16, 1, 8, 8)).astype(np.float32))
    np.save(d / "x.npy", rng.normal(size=(3, 1, 8, 8)).astype(np.float32))
    return d


@pytest.fixture(scope="module")
def model(user):
    from nupes_sim.cli import main as _main

    out = user / "model.h5"
    assert _main(["quantize", str(user / "my.pt2"), "--calib", str(user / "calib.npy"), "--method", "rtn",
                  "--out", str(out), "-q"]) == 0  # fmt: skip
    return out


def test_quantize_stores_input_format_and_output_unit_and_prints_the_scale_exactly(
    user, model, capsys, tmp_path
):
    m = load_model(model, full=True)
    assert m.version == MODEL_FORMAT_VERSION == 3
    assert m.input_format is not None and m.input_format.granularity == "tensor"
    assert np.allclose(m.output_unit, m.graph.nodes[-1].layer.unit, rtol=0, atol=0)
    rc, out, _ = cli(capsys, "quantize", user / "my.pt2", "--calib", user / "calib.npy", "--method", "rtn",
                     "--out", tmp_path / "m2.h5")  # fmt: skip
    assert rc == 0
    s = re.search(r"scale s=([0-9.e+-]+)", out).group(1)
    a = re.search(r"exponent a=([0-9.e+-]+)", out).group(1)
    assert float(s) == float(m.input_format.scale[0]) and float(a) == m.input_format.exponent  # exact


def test_float_input_path_end_to_end(user, model, capsys, tmp_path):
    """simulate/golden/audit take real inputs encoded with the stored format; the decoded
    outputs are output codes x output unit; golden -> hex -> verify -> diff pass."""
    m = load_model(model, full=True)
    x = np.load(user / "x.npy")
    codes = m.input_format.encode(x.astype(np.float64)).astype(np.int64)
    rc, out, err = cli(capsys, "simulate", model, "--float-input", user / "x.npy", "--out", tmp_path / "y.npy",
                       "--real-out", tmp_path / "yr.npy")  # fmt: skip
    assert rc == 0, err
    want = m.graph.run(codes, backend="numpy").output
    y, yr = np.load(tmp_path / "y.npy"), np.load(tmp_path / "yr.npy")
    assert np.array_equal(y, want)
    assert np.array_equal(yr, want.astype(np.float64) * np.float64(m.output_unit))
    assert "decoded outputs" in out and f"argmax {int(np.argmax(yr[0]))}" in out
    g, hexd = tmp_path / "g.h5", tmp_path / "g_hex"
    rc, out, err = cli(
        capsys, "golden", model, "--float-input", user / "x.npy", "--out", g, "--hex", hexd, "-q"
    )
    assert rc == 0, err
    import nupes_sim.golden as golden

    gold = golden.read_golden(str(g))
    assert gold.attrs["input_shape"] == [1, 8, 8] and json.loads(json.dumps(gold.attrs["seeds"]))
    assert all(np.array_equal(v["input"][0], codes[i]) for i, v in enumerate(gold.vectors))
    rc, out, err = cli(capsys, "verify", g, "--model", model)
    assert rc == 0 and "OK:" in out, err
    rc, out, err = cli(capsys, "diff", g, hexd, "--model", model)
    assert rc == 0 and "OK:" in out, err
    rc, out, err = cli(capsys, "audit", model, "--float-input", user / "x.npy", "--out", tmp_path / "a")
    assert rc == 0, err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["decoded_outputs"]["argmax"] == np.argmax(yr, axis=1).tolist()


def test_float_input_bad_values_are_one_line_errors(user, model, capsys, tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros((2, 1, 8, 8), np.int64))
    rc, _, err = cli(
        capsys, "simulate", model, "--float-input", tmp_path / "codes.npy", "--out", tmp_path / "y.npy"
    )
    assert rc == 2 and "float input" in err and "int64" in err and len(err.strip().splitlines()) == 1
    np.save(tmp_path / "nan.npy", np.full((2, 1, 8, 8), np.nan))
    rc, _, err = cli(
        capsys, "golden", model, "--float-input", tmp_path / "nan.npy", "--out", tmp_path / "g.h5"
    )
    assert rc == 2 and "NaN" in err
    rc, _, err = cli(
        capsys, "golden", model, "--float-input", user / "x.npy", "--random", 2, "--out", tmp_path / "g.h5"
    )
    assert rc == 2 and "--float-input" in err and "--random" in err


def _as_version_1(src, dst):
    """A model file as the previous format wrote it (no input_format / output_unit)."""
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["version"] = np.int64(1)
        del f.attrs["input_format"], f.attrs["output_unit"]


def test_old_model_files_still_read_and_float_input_says_why_not(user, model, capsys, tmp_path):
    old = tmp_path / "v1.h5"
    _as_version_1(model, old)
    m = load_model(old, full=True)
    assert m.version == 1 and m.input_format is None and m.output_unit is None
    rc, _, err = cli(capsys, "simulate", old, "--float-input", user / "x.npy", "--out", tmp_path / "y.npy")
    assert rc == 2 and "stores no input format" in err and "version 1" in err
    with h5py.File(old, "r+") as f:  # a version-1 file cannot carry the version-2 attributes
        f.attrs["input_format"] = "{}"
    from nupes_sim.serialize import ModelFormatError

    with pytest.raises(ModelFormatError, match="input_format"):
        load_model(old)


@pytest.mark.parametrize(
    "attr,value,match",
    [
        ("input_format", '{"kind": "power", "bits": 9}', "input_format"),
        ("input_format", "NaN", "input_format"),
        ("output_unit", '{"kind": "accumulator", "unit": -1.0}', "output_unit"),
        ("output_unit", '{"kind": "accumulator", "unit": 1.0, "x": 2}', "output_unit"),
        ("version", np.int64(4), "version 4"),
    ],
)
def test_bad_stored_float_io_is_refused_naming_the_field(model, tmp_path, attr, value, match):
    import shutil

    from nupes_sim.serialize import ModelFormatError

    p = tmp_path / "bad.h5"
    shutil.copy(model, p)
    with h5py.File(p, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(ModelFormatError, match=match):
        load_model(p)


def test_audit_clipping_counts_in_report_and_failure_line(user, model, capsys, tmp_path):
    """#12.7: the failure line names each failing layer with its count; report.md shows the
    count next to a percentage that never reads 0 for a non-zero count."""
    from nupes_sim.audit import _count_pct

    assert _count_pct(2, 115440) == "2 (<0.01 %)" and _count_pct(2, 1000) == "2 (0.20 %)"
    assert _count_pct(0, 10) == "0 (0.00 %)"
    rc, _, err = cli(capsys, "audit", model, "--random", 4, "--out", tmp_path / "a", "--fail-on", "clipping")
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    clipped = {r["name"]: (r["clipped_count"], r["elements"]) for r in rep["layers"] if r["clipped_count"]}
    md = (tmp_path / "a" / "report.md").read_text()
    if not clipped:
        pytest.skip("no clipped codes with these inputs")
    assert rc == 1
    line = [t for t in err.splitlines() if t.startswith("audit failed:")]
    assert len(line) == 1
    named = dict(
        (n, (int(c), int(e))) for n, c, e in re.findall(r"(\w+): (\d+) of (\d+) clipped codes", line[0])
    )
    assert named == clipped
    for name, (c, e) in clipped.items():
        row = [t for t in md.splitlines() if t.startswith(f"| {name} |")][0]
        assert _count_pct(c, e) in row
    assert os.path.exists(tmp_path / "a" / "report.md")
