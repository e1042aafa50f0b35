"""The results generator on a tiny model: every method row, seeds, verdicts, per-layer table, render."""

import argparse

import torch
from torch import nn

from nupes_sim.reference import results_render, results_run


def test_method_rows_and_render_on_a_tiny_model(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    X = torch.randn(200, 8)
    y = net(X).argmax(1)

    def acc(m):
        return 100.0 * float((m(X).argmax(1) == y).float().mean())

    monkeypatch.setattr(results_run, "SEEDS", (0, 1))
    monkeypatch.setattr(results_run, "_CHECKPOINT", {"rows": {}, "save": None})
    rows = results_run._method_rows(
        "toy",
        net,
        acc,
        lambda s: X[torch.randperm(200, generator=torch.Generator().manual_seed(s))[:64]],
        [{"label": "W3 per-channel", "wbits": 3}],
        5,
    )
    assert [r["method"] for r in rows] == [m[0] for m in results_run.METHODS]
    one = {m[0] for m in results_run.METHODS if m[1] in results_run.ONE_SEED}
    for r in rows:
        assert r["n"] == (2 if r["data"] and r["method"] not in one else 1) and len(r["metrics"]) == r["n"]
    nupes = rows[-1]
    assert nupes["layers"] and all(x["after"] <= x["before"] for x in nupes["layers"])
    # the power and symmetric-uniform rows use all 2^b codes; codebook and asymmetric rows their own
    grids = {r["method"]: r["grid"] for r in rows}
    assert grids["GPTQ (uniform, full range)"] == grids["NUPES data-driven"] == "[-4, 3]"
    assert grids["NF RTN"] == "NF codebook, 8 values" and grids["GPTQ (standard asymmetric grid)"].startswith(
        "[0, 7]"
    )
    # resume: the checkpointed rows are reused, not recomputed
    again = results_run._method_rows(
        "toy", net, lambda m: 1 / 0, lambda s: X, [{"label": "W3 per-channel", "wbits": 3}], 5
    )
    assert again == rows
    text = results_render.render(
        {"fashion": {"float": 100.0, "n_test": 200, "weight_only": rows}},
        argparse.Namespace(quick=True, steps=5),
        60.0,
        pending=["charlm"],
    )
    assert "NUPES vs its GPTQ-power start, per layer" in text and "Incomplete run" in text
    assert "mean ± std" in text and "Beats" in text and "| W3 per-channel | PowerQuant | [-4, 3] |" in text


def test_verdict_needs_the_difference_to_exceed_the_spread():
    base = dict(setting="s", n=3, seconds=1.0, exponents="-")
    rows = [
        dict(base, method="GPTQ (uniform, symmetric)", mean=90.0, std=0.3),
        dict(base, method="NUPES data-driven", mean=90.5, std=0.3),
    ]
    assert "within the spread" in results_render._verdicts(rows, True, 2)[0]
    rows[1]["mean"] = 90.7
    assert "→ NUPES wins" in results_render._verdicts(rows, True, 2)[0]
    assert "**loses**" in results_render._verdicts(rows, False, 2)[0]  # lower is better: 90.7 is worse


def test_time_line_flags_nupes_over_three_times_gptq():
    base = dict(setting="s", n=3, std=0.1, mean=1.0, exponents="-")
    rows = [
        dict(base, method="GPTQ (uniform, full range)", seconds=10.0),
        dict(base, method="GPTQ (power grid)", seconds=12.0),
        dict(base, method="NUPES data-driven", seconds=30.0),
    ]
    (line,) = [x for x in results_render._verdicts(rows, True, 2) if "Time:" in x]
    assert "3.0× GPTQ (uniform, full range) (10.0s) (≤ 3×)" in line and "2.5× GPTQ (power grid)" in line
    rows[2]["seconds"] = 30.5  # just over the budget
    (line,) = [x for x in results_render._verdicts(rows, True, 2) if "Time:" in x]
    assert "3.0× GPTQ (uniform, full range) (10.0s) **over 3×**" in line


def test_w2_rows_are_judged_against_the_chance_level():
    base = dict(n=1, std=0.0, seconds=1.0, exponents="-")
    rows = [
        dict(base, setting="W3 per-channel", method="RTN (uniform, full range)", mean=50.0),
        dict(base, setting="W2 per-channel", method="RTN (uniform, full range)", mean=10.0),
        dict(base, setting="W2 per-channel", method="NUPES data-driven", mean=35.0),
    ]
    (line,) = results_render._chance_lines(rows, 10.0, True, 2, "10 classes")
    assert (
        line.startswith("- W2 per-channel: chance is 10.00") and "above it: NUPES data-driven (1/2;" in line
    )
    (line,) = results_render._chance_lines(rows, 5.0, False, 2, "perplexity")  # lower is better
    assert "**no method**" in line


def test_datafree_verdict_uses_the_test_subset_sampling_error():
    base = dict(setting="W3", n=1, std=0.0, seconds=1.0, exponents="-")
    rows = [
        dict(base, method="PowerQuant", mean=80.0),
        dict(base, method="NUPES data-free, BN statistics", mean=81.0),
    ]
    # p ≈ 0.805, n = 2000: 2·sqrt(2·p(1−p)/n) = 2.51 points > 1.0
    assert "is **not** better than PowerQuant" in results_render._datafree_verdicts(rows, 2000)[0]
    rows[1]["mean"] = 83.0
    assert "it beats PowerQuant" in results_render._datafree_verdicts(rows, 2000)[0]
    rows[1]["mean"] = 77.0
    assert "**loses to PowerQuant**" in results_render._datafree_verdicts(rows, 2000)[0]
    lm = [
        dict(base, method="PowerQuant", mean=4.48),
        dict(base, method="NUPES data-free, LayerNorm statistics", mean=4.41),
    ]
    (line,) = results_render._datafree_lm_lines(lm, 20000)
    assert "-1.56 %" in line and "no win is declared" in line


def test_activation_section_renders_graph_against_float_activations():
    r = dict(setting="W4A4", n=3, seconds=1.0, integer=80.0, fake_quant_sim=80.5, agreement=99.0, overflow=0)
    r.update(sim_seconds=1.0, act_exponents="0.50–1.00")
    rows = [
        dict(r, method="NUPES data-driven", acts="float", mean=80.0, std=0.2, metrics=[1, 2, 3]),
        dict(r, method="NUPES data-driven", acts="graph", mean=81.0, std=0.3, metrics=[1, 2, 3]),
    ]
    text = results_render.render(
        {"fashion_act": {"rows": rows, "n_act": 2000, "n_sim": 500}},
        argparse.Namespace(quick=False, steps=5, argv=["--only", "fashion_act"]),
        60.0,
    )
    assert "results --only fashion_act`" in text and "first 500 of those images" in text
    assert "graph activations +1.00 points against float activations (spread 0.50) → better" in text
    assert "not measured in this run (left out by its options, so not in this file): fashion, charlm" in text


def test_integer_transformer_sections_render_targets_and_scope():
    from nupes_sim.reference.results_transformers import render_transformers

    c = dict(setting="W4A8", method="nupes", float=3.767, twin=3.80, integer=3.81, chars=20480)
    c.update(int_vs_twin_pct=100 * (3.81 / 3.80 - 1), int_vs_float_pct=100 * (3.81 / 3.767 - 1))
    c.update(seconds_quant=1.0, seconds_integer=2.0)
    m = dict(setting="W4A8", method="gptq_power", seconds_quant=1.0, seconds_eval=2.0)
    m.update(cos_integer_vs_float=0.969, cos_integer_vs_twin=0.996, cos_twin_vs_float=0.97)
    m.update(nn_integer_vs_float=0.8, nn_integer_vs_twin=0.9, nn_twin_vs_float=0.8)
    results = {
        "charlm_int": {"rows": [c], "chars": 20480},
        "minilm_int": {"rows": [m], "sentences": 200, "tokens": 48},
    }
    text = "\n".join(render_transformers(results))
    assert "| W4A8 | nupes | 3.7670 | 3.8000 | 3.8100 | +0.26 % | +1.14 % |" in text
    assert "twin met, float met" in text
    assert "| 0.9690 / 80.0 % | 0.9960 / 90.0 % | 0.9700 / 80.0 % |" in text
    assert "float **missed**, twin met" in text and "first 200 of the 2000" in text
    assert "Calibration: 32 other verses" in text  # rows without n_calib: the old default
    m["n_calib"], m["full_range"], c["full_range"] = 128, True, True
    text = "\n".join(render_transformers(results))
    assert "Calibration: 128 other verses" in text and text.count("[-2^(b-1), 2^(b-1)-1] (full range)") == 2
    ns = argparse.Namespace(quick=False, steps=5, argv=["--only", "x"], commit="abc123+dirty")
    full = results_render.render(results, ns, 1.0)
    assert "this run measured charlm_int, minilm_int; not measured in this run" in full
    assert "generator commit abc123+dirty" in full


def test_a_run_measures_the_important_sections_first_and_names_its_commit():
    from nupes_sim.reference import results

    assert list(results.SECTIONS) == [
        "fashion",
        "charlm",
        "minilm",
        "charlm_int",
        "minilm_int",
        "fashion_act",
        "sweep",
    ]
    assert set(results.SECTIONS) == set(results_render.ALL_SECTIONS)
    commit = results.generator_commit()
    assert commit is None or len(commit.split("+")[0]) == 40


def test_minilm_section_wrapper_calibrates_data_driven_methods():
    """The MiniLM weight section's wrapper takes the float-cast calibration ids that
    quantize_model feeds it (it used to pass them to nn.Embedding as floats and fail)."""
    from nupes_sim.reference.api import quantize_model
    from nupes_sim.reference.results_models import _IdsOnly

    from .toy import tiny_minilm

    model = tiny_minilm()
    ids = torch.randint(1, 20, (8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(_IdsOnly(model)(ids.double()), model(ids, torch.ones_like(ids)))
    q, rep = quantize_model(_IdsOnly(model).eval(), method="gptq_power", wbits=4, calib=ids)
    assert len(rep["layers"]) == 6 and q.model.encoder.layer[0].attention.self.query.nupes_quant.bits == 4


def test_jobs_split_sections_into_settings_and_merge_them_in_order(monkeypatch):
    from nupes_sim.reference import results_jobs, results_models

    monkeypatch.setitem(results_models.W2, "models", ("fashion",))
    assert results_models.setting_labels("fashion", False) == [
        "W4 per-channel",
        "W3 per-channel",
        "W2 per-channel",
    ]
    assert results_models.setting_labels("charlm", False) == ["W4 per-channel", "W3 per-channel"]  # no W2
    assert results_models.setting_labels("minilm", True) == ["W4 per-channel"]
    assert results_models.setting_labels("sweep", False) == [None]
    monkeypatch.setitem(results_models.UNIT, "setting", "W3 g128")
    assert [s["label"] for s in results_models._settings("minilm", False)] == ["W3 g128"]
    a = {"float": 1.0, "weight_only": [{"setting": "W4"}]}
    b = {"float": 1.0, "weight_only": [{"setting": "W3"}, {"setting": "W3"}]}
    assert results_jobs.merge([a, None, b]) == {
        "float": 1.0,
        "weight_only": [a["weight_only"][0]] + b["weight_only"],
    }
    assert results_jobs.merge([None]) is None
    assert (
        results_jobs._part_path("/x/raw.json", "minilm", "W3 g128").name
        == "raw.json.part-minilm-W3_g128.json"
    )


def test_a_row_with_its_own_calibration_inputs_makes_them_once_per_seed(monkeypatch):
    """A synthetic-input row (extra "calib_fn") calibrates on its own inputs, made once per seed
    and shared across settings; the other data-driven rows keep the section's real inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    real, fake = torch.randn(64, 8), torch.randn(64, 8) + 3.0
    made, seen = [], []

    def synth(seed):
        made.append(seed)
        return fake

    def quantize(model, method, wbits, calib, extra, **kw):
        assert "calib_fn" not in extra
        seen.append((method, extra.get("nupes_init"), calib))
        return model, {"layers": []}, 0.0

    monkeypatch.setattr(results_run, "SEEDS", (0, 1))
    monkeypatch.setattr(
        results_run, "METHODS", [m for m in results_run.METHODS if m[1] in ("powerquant", "gptq")]
    )
    monkeypatch.setattr(results_run, "_CHECKPOINT", {"rows": {}, "save": None})
    monkeypatch.setattr(results_run, "_quantize", quantize)
    syn = (
        "NUPES data-free, synthetic inputs",
        "nupes",
        True,
        {"nupes_init": "gptq_power", "calib_fn": synth},
    )
    settings = [{"label": "W4", "wbits": 4}, {"label": "W3", "wbits": 3}]
    rows = results_run._method_rows(
        "toy", net, lambda m: 50.0, lambda s: real, settings, 5, extra_methods=[syn]
    )
    assert made == [0, 1]  # once per seed, not once per setting
    assert [r["method"] for r in rows[:3]] == [
        "PowerQuant",
        "NUPES data-free, synthetic inputs",
        "GPTQ (uniform, full range)",
    ]
    for method, init, calib in seen:
        if method == "nupes":
            assert calib is fake
        elif method == "gptq":
            assert calib is real
        else:
            assert calib is None
    assert all(r["n"] == 2 and "calib_seconds" in r for r in rows if r["method"].endswith("synthetic inputs"))


def test_synthetic_input_verdicts_add_the_seed_spread():
    base = dict(setting="W3", n=1, std=0.0, seconds=1.0, exponents="-")
    syn = dict(base, method="NUPES data-free, synthetic inputs", n=3, std=1.0, calib_seconds=30.0)
    # p ≈ 0.81, n = 2000: 2 SE = 2.48; + seed std 1.0 = 3.48 points
    rows = [dict(base, method="PowerQuant", mean=80.0), dict(syn, mean=83.0)]
    (line,) = results_render._datafree_verdicts(rows, 2000)
    assert "is **not** better" in line and "+ its seed std 1.00 = 3.4" in line and "30s per seed" in line
    rows[1]["mean"] = 84.0
    assert "it beats PowerQuant" in results_render._datafree_verdicts(rows, 2000)[0]
    lm = [dict(base, method="PowerQuant", mean=4.48), dict(syn, mean=4.40, std=0.05)]
    (line,) = results_render._datafree_lm_lines(lm, 20000)
    assert "beats PowerQuant beyond its seed spread" in line
    lm[1]["std"] = 0.1
    assert "is **not** better" in results_render._datafree_lm_lines(lm, 20000)[0]
