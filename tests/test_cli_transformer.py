"""`nupes-sim quantize charlm|minilm`: what it refuses (one line, exit 2) before any work.
The full path (quantize -> golden -> verify -> diff -> audit) of the shipped models takes
minutes; it is what `nupes-sim demo --model charlm|minilm` runs."""

import numpy as np
import pytest
from test_cli_validation import assert_one_line_2, call


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--arch", "fashion-resnet"], "--arch is for state dicts; charlm is a built-in model"),
        (["--granularity", "group", "--group-size", "4"], "charlm is quantized per channel"),
        (["--data-free", "--method", "nupes"], "method nupes needs data"),
    ],
)
def test_quantize_charlm_refusals(capsys, tmp_path, extra, needle):
    code, err = call(capsys, "quantize", "charlm", "--out", tmp_path / "m.h5", *extra)
    assert_one_line_2(code, err, needle)
    assert not (tmp_path / "m.h5").exists()


def test_quantize_minilm_calibration_must_be_token_ids(capsys, tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 8), np.float32))
    code, err = call(capsys, "quantize", "minilm", "--calib", tmp_path / "f.npy", "--out", tmp_path / "m.h5")
    assert_one_line_2(code, err, "expected integer codes")
    np.save(tmp_path / "i.npy", np.zeros((4, 8, 2), np.int64))
    code, err = call(capsys, "quantize", "minilm", "--calib", tmp_path / "i.npy", "--out", tmp_path / "m.h5")
    assert_one_line_2(code, err, "expected (N, T) token ids")


def test_demo_knows_the_transformers():
    from nupes_sim import demo

    with pytest.raises(SystemExit) as e:
        demo.main(["--model", "gpt2"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
