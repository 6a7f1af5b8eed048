"""Smoke test of the quality scoreboard: a tiny run writes every method and baseline."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_scoreboard_has_every_method_and_baseline_with_finite_values(tmp_path):
    options = "--quick --models cw-vgg --n-test 12 --seeds 0 --out".split()
    cmd = [sys.executable, "-W", "ignore", "-m", "bench.quality", *options, str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "bench" / "results" / "quality.json").read_text())
    entry = result["models"]["cw-vgg"]
    assert entry["skipped"] == {}
    layer = entry["feature_layer"]
    expected = ["mace", "srae", "afi", "pattern_mining", "ibd", "uniform", "centre", "random_map"]
    baselines = ("gradcam", "channel_sum", "random_channels", "best_channel")
    expected += [f"{b}@{layer}" for b in baselines] + ["gradcam_agreement_afi"]
    rankings_only = ("random_ranking", "class_definition", "class_usage")
    for name in [*expected, *rankings_only]:
        assert name in entry["scores"], name
        metrics = entry["scores"][name]
        if name not in rankings_only:
            assert {"energy_def", "auc_def", "pointing_int", "auc_int"} <= set(metrics), name
        if name not in ("uniform", "centre", "random_map", "gradcam_agreement_afi"):  # maps only
            assert {"precision_int", "spearman_int", "ceiling_int"} <= set(metrics), name
        for metric, stats in metrics.items():
            assert math.isfinite(stats["mean"]), (name, metric)
    assert (tmp_path / "docs" / "quality.md").read_text().startswith("# Quality")
    assert (tmp_path / "docs" / "img" / "quality.png").stat().st_size > 0
    # the installed CLI renders the same result into one folder; a bad file is a usage error
    from pyconcepts.cli import main

    json_path = tmp_path / "bench" / "results" / "quality.json"
    out = tmp_path / "evaluate"
    assert main(["evaluate", "--render", str(json_path), "--out", str(out)]) == 0
    assert (out / "quality.md").read_text() == (tmp_path / "docs" / "quality.md").read_text()
    assert (out / "img" / "quality.png").stat().st_size > 0
    assert main(["evaluate", "--render", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    (tmp_path / "other.json").write_text("{}")
    assert main(["evaluate", "--render", str(tmp_path / "other.json"), "--out", str(out)]) == 2


def test_targets_read_margins_against_the_larger_seed_spread():
    """Plain reading of a made-up entry: beats = margin above max(spreads), not at it; a
    missing output or baseline is no verdict."""
    from pyconcepts.scoreboard import target_cells

    def stats(mean: float, sd: float) -> dict:
        return {"mean": mean, "sd_seeds": sd, "ci_low": mean, "ci_high": mean}

    entry = {
        "feature_layer": "f",
        "layers": {"mace": {"explained": "g", "baselines": "g"}},
        "scores": {
            "mace": {"pointing_def": stats(0.9, 0.05), "energy_def": stats(0.4, 0.01),
                  "auc_def": stats(0.65, 0.01), "precision_int": stats(0.75, 0.02),
                  "ceiling_int": stats(0.78, 0.01)},
            "gradcam@g": {"pointing_def": stats(0.8, 0.0), "energy_def": stats(0.38, 0.0),
                          "auc_def": stats(0.7, 0.0)},
            "random_channels@g": {"precision_int": stats(0.5, 0.25)},
        },
    }  # fmt: skip
    cells = target_cells(entry, "mace")
    assert cells["pointing vs Grad-CAM"] == (True, "+0.100 (spread 0.050)")
    assert cells["energy vs Grad-CAM"] == (True, "+0.020 (spread 0.010)")
    assert cells["AUC vs Grad-CAM"] == (False, "-0.050 (spread 0.010)")
    assert cells["p@k vs random channels"] == (False, "+0.250 (spread 0.250)")
    assert cells["p@k ≥ 0.8"] == (False, "0.75 (ceiling 0.78)")
    del entry["scores"]["mace"]["pointing_def"], entry["scores"]["random_channels@g"]
    cells = target_cells(entry, "mace")
    assert cells["pointing vs Grad-CAM"] is None and cells["p@k vs random channels"] is None
    page = page_of(entry)
    row = (
        "| `mace` | cw-x | – | ✓ +0.020 (spread 0.010) | ✗ -0.050 (spread 0.010) | – "
        "| ✗ 0.75 (ceiling 0.78) |"
    )
    assert row in page
    assert "| `mace` | `g` |" in page  # one layer for every seed
    entry["layers"]["mace"]["per_seed"] = ["g", "h", "g"]  # the seeds' fits differ
    entry["layers"]["gradcam_agreement_mace"] = entry["layers"]["mace"]
    entry["scores"]["gradcam_agreement_mace"] = {"pointing_def": stats(0.7, 0.0)}
    page = page_of(entry)
    assert "| `mace` | `g / h / g` |" in page
    assert "| `gradcam_agreement_mace` | `g / h / g` | 0.70 ± 0.00 |" in page


def page_of(entry: dict) -> str:
    """The scoreboard page of one made-up model entry."""
    from pyconcepts.scoreboard import markdown

    return markdown({"meta": {"date_utc": "d", "machine": "x", "load_average_1_5_15_at_end": [0],
                              "seconds": 60, "test_world_seed": 1, "fit_world_seed": 2,
                              "settings": {"seeds": [0], "n_test": 1, "n_fit": 1, "n_probe": 1,
                                           "n_random_channels": 1}},
                     "models": {"cw-x": {**entry, "test_accuracy": 1.0, "skipped": {},
                                         "fit_seconds": {}, "intervention": {
                                             k: 0.0 for k in ("mean_drop_defining",
                                             "flip_rate_defining", "mean_drop_other",
                                             "flip_rate_other", "used_concepts_per_image",
                                             "used_that_are_defining", "defining_area",
                                             "used_area")}}}})  # fmt: skip


@pytest.fixture(scope="module")
def scoreboard() -> dict:
    """Every method and baseline on both zoo models, one fixed seed, 100 test images, 1,000
    fit images (~40 s)."""
    from pyconcepts import scoreboard as quality

    settings = quality.replace(
        quality.SETTINGS["full"], seeds=(0,), n_test=100, n_fit=1000, n_probe=100
    )
    return quality.run(settings, log=lambda _: None)


def margin(result: dict, model: str, method: str, metric: str, baseline: str) -> float:
    """The method's score minus the baseline's (``{layer}``: the model's feature layer)."""
    entry = result["models"][model]
    assert entry["skipped"] == {}
    name = baseline.format(layer=entry["feature_layer"])
    return entry["scores"][method][metric]["mean"] - entry["scores"][name][metric]["mean"]


GRADCAM = "gradcam@{layer}"
AGREEMENT = "gradcam_agreement_afi"  # Grad-CAM fused over AfI's layers as AfI fuses
RANDOM_CHANNELS = "random_channels@{layer}"
RANDOM_RANKING = "random_ranking"

# What each method beats on a fixed seed, with a margin above the 3-seed spreads of the method
# and the baseline in docs/quality.md (≤ 0.05 for every row used here); the value measured at
# this setting is in the comment. What no method beats (Grad-CAM's concept ranking) is not
# asserted; docs/methods.md gives the numbers.
CLAIMS = [
    ("mace", "cw-vgg", "energy_def", GRADCAM, 0.05),  # +0.10
    ("mace", "cw-vgg", "auc_def", GRADCAM, 0.01),  # +0.03: its maps start as the class's CAM
    ("mace", "cw-resnet", "energy_def", GRADCAM, 0.01),  # +0.03
    ("mace", "cw-vgg", "precision_int", RANDOM_RANKING, 0.15),  # +0.22
    ("mace", "cw-resnet", "precision_int", RANDOM_RANKING, 0.12),  # +0.19
    ("mace", "cw-vgg", "precision_int", RANDOM_CHANNELS, 0.03),  # +0.05
    ("mace", "cw-resnet", "precision_int", RANDOM_CHANNELS, 0.03),  # +0.05
    ("srae", "cw-vgg", "energy_def", GRADCAM, 0.08),  # +0.18
    ("srae", "cw-vgg", "pointing_def", GRADCAM, 0.1),  # +0.20: the logit's map in its class map
    ("srae", "cw-vgg", "auc_def", GRADCAM, 0.03),  # +0.06
    ("srae", "cw-resnet", "pointing_def", GRADCAM, 0.03),  # +0.05
    ("srae", "cw-resnet", "auc_def", GRADCAM, 0.02),  # +0.05 (its maps smoothed)
    ("srae", "cw-vgg", "precision_int", RANDOM_RANKING, 0.06),  # +0.13
    ("srae", "cw-resnet", "precision_int", RANDOM_RANKING, 0.06),  # +0.19
    ("afi", "cw-vgg", "energy_def", GRADCAM, 0.08),  # +0.14
    ("afi", "cw-vgg", "pointing_def", GRADCAM, 0.08),  # +0.13
    ("afi", "cw-vgg", "auc_def", GRADCAM, 0.03),  # +0.05
    ("afi", "cw-resnet", "energy_def", GRADCAM, 0.08),  # +0.12
    ("afi", "cw-resnet", "pointing_def", GRADCAM, 0.01),  # +0.21
    ("afi", "cw-resnet", "auc_def", GRADCAM, 0.01),  # +0.08
    ("afi", "cw-vgg", "pointing_def", AGREEMENT, 0.08),  # +0.14: not the fusion alone
    ("afi", "cw-vgg", "auc_def", AGREEMENT, 0.03),  # +0.05
    ("afi", "cw-vgg", "precision_int", RANDOM_RANKING, 0.2),  # +0.40
    ("afi", "cw-vgg", "precision_int", RANDOM_CHANNELS, 0.12),  # +0.24
    ("afi", "cw-resnet", "precision_int", RANDOM_RANKING, 0.1),  # +0.42
    ("afi", "cw-resnet", "precision_int", RANDOM_CHANNELS, 0.1),  # +0.28
    ("pattern_mining", "cw-vgg", "energy_def", GRADCAM, 0.05),  # +0.10
    ("pattern_mining", "cw-resnet", "pointing_def", GRADCAM, 0.02),  # +0.05
    ("pattern_mining", "cw-resnet", "energy_def", GRADCAM, 0.005),  # +0.015 (spread 0.001)
    ("pattern_mining", "cw-resnet", "auc_def", GRADCAM, 0.01),  # +0.02
    ("pattern_mining", "cw-vgg", "precision_int", RANDOM_RANKING, 0.1),  # +0.21
    ("pattern_mining", "cw-vgg", "spearman_int", RANDOM_CHANNELS, 0.1),  # +0.19
    ("pattern_mining", "cw-resnet", "precision_int", RANDOM_RANKING, 0.1),  # +0.18
    ("ibd", "cw-resnet", "energy_def", GRADCAM, 0.0),  # +0.01
    ("ibd", "cw-vgg", "energy_def", GRADCAM, 0.05),  # +0.11
    ("ibd", "cw-resnet", "precision_int", RANDOM_CHANNELS, 0.1),  # +0.17
    ("ibd", "cw-vgg", "precision_int", RANDOM_CHANNELS, 0.08),  # +0.13
    ("ibd", "cw-vgg", "spearman_int", RANDOM_CHANNELS, 0.2),  # +0.41
    ("ibd", "cw-resnet", "spearman_int", RANDOM_CHANNELS, 0.2),  # +0.42
    ("ibd", "cw-vgg", "pointing_def", RANDOM_CHANNELS, 0.05),  # +0.14
    ("ibd", "cw-vgg", "auc_def", GRADCAM, 0.02),  # +0.05: not a sharper map, a better order
    ("ibd", "cw-resnet", "auc_def", GRADCAM, 0.02),  # +0.04
]


@pytest.mark.parametrize(("method", "model", "metric", "baseline", "by"), CLAIMS)
def test_methods_beat_their_baselines_on_the_concept_world(
    scoreboard: dict, method: str, model: str, metric: str, baseline: str, by: float
) -> None:
    assert margin(scoreboard, model, method, metric, baseline) > by
