"""Audit: ranges vs bound and width, overflow/saturation accounting, float64 error, report files."""

import dataclasses
import json
import os

import numpy as np
import pytest
from tiny_models import add_inputs, add_net, conv_inputs, conv_net

from nupes_sim.audit import audit, bits_needed
from nupes_sim.serialize import save_model


def test_audit_overflowing_model(tmp_path):
    g = conv_net(acc_width=16)
    save_model(g, tmp_path / "m.h5", input_shape=(3, 8, 8), loss_history={"conv": [3.0, 2.0, 1.0]})
    x = conv_inputs(3)
    rep = audit(str(tmp_path / "m.h5"), x, str(tmp_path / "a"), fail_on=("overflow", "saturation"))
    conv = rep["layers"][0]
    r = g.run(x, backend="numpy", intermediates=True)
    exact, acc = r.stages["conv"]["acc_exact"], r.stages["conv"]["acc"]
    assert conv["overflow_count"] == r.overflow["conv"] > 0
    assert conv["changed_configured"] == int((exact != acc).sum()) >= conv["overflow_count"]
    assert conv["changed_if_wrap"] == conv["overflow_count"]  # wrap changes exactly the out-of-range sums
    assert conv["changed_if_saturate"] == conv["changed_configured"]  # configured mode is saturate
    assert conv["bound"] == int(g.nodes[0].layer.bound.max())
    assert conv["min_safe_width"] == bits_needed(conv["bound"]) > 16
    assert conv["observed_max"] == int(exact.max()) and conv["headroom_bits"] < 0
    assert conv["reference"] == "real formats" and conv["formats"]["w_format"]["exponent"] == 0.7
    assert conv["loss_history"] == [3.0, 2.0, 1.0]
    assert set(rep["failed"]) == {"overflow", "saturation"}
    files = set(os.listdir(tmp_path / "a"))
    assert {"report.md", "report.json", "acc_bits.png", "err_conv.png", "loss_history.png"} <= files
    assert json.load(open(tmp_path / "a" / "report.json"))["failed"] == rep["failed"]


def test_audit_clean_model_and_lut_reference(tmp_path):
    g = add_net()
    x = add_inputs(16)
    rep = audit(g, x, str(tmp_path / "a"), fail_on=("overflow", "saturation"))
    assert rep["failed"] == []
    for r in rep["layers"]:
        assert r["overflow_count"] == 0 and r["headroom_bits"] >= 0
        assert r["err_lsb_max_abs"] < 2 ** (r["acc_width"] - 1)
    # without meta the reference is the LUT values: no overflow -> error is float rounding only
    for n in g.nodes:
        n.layer = dataclasses.replace(n.layer, meta=None)  # layers are frozen
    rep = audit(g, x, str(tmp_path / "b"), plots=False)
    for r in rep["layers"]:
        assert r["reference"] == "LUT values x unit" and r["err_lsb_max_abs"] < 1e-6


def test_audit_clipping_check(tmp_path):
    g = conv_net()
    rep = audit(g, conv_inputs(2), str(tmp_path / "a"), fail_on=("clipping",), plots=False)
    clipped = any(r["clipped_fraction"] > 0 for r in rep["layers"])
    assert ("clipping" in rep["failed"]) == clipped
    with pytest.raises(ValueError):
        audit(g, conv_inputs(1), str(tmp_path / "c"), fail_on=("nonsense",))


def test_audit_error_of_a_per_channel_product_layer_is_within_the_table_bound(tmp_path):
    """Product tables factor per-channel scales into per-channel units; the audit's float64
    reference must use each channel's own scale (error within 1/2 + K/2 LSBs, ARITHMETIC §9)."""
    import json

    from nupes_sim.audit import audit
    from nupes_sim.formats import PowerFormat
    from nupes_sim.graph import Graph
    from nupes_sim.layers import Accumulator, Linear

    rng = np.random.default_rng(0)
    wf = PowerFormat(4, True, 0.7, np.array([0.01, 0.1, 1.0]), "channel")
    xf = PowerFormat(8, False, 0.7, 0.01)
    L = Linear.build(
        "fc", rng.integers(-7, 8, (3, 6)), wf, xf, datapath="product", acc=Accumulator(48, "exact")
    )
    audit(Graph([L]), rng.integers(0, 256, (5, 6)), str(tmp_path), plots=False)
    rec = json.loads((tmp_path / "report.json").read_text())
    layer = rec["layers"][0] if isinstance(rec.get("layers"), list) else rec["layers"]["fc"]
    assert layer["err_lsb_max_abs"] <= 0.5 + 6 / 2
