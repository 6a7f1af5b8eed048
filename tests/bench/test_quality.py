"""Smoke test of the quality scoreboard: a tiny run writes every method and baseline."""

import json
import math
import subprocess
import sys
from pathlib import Path

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
    expected += [f"{b}@{layer}" for b in baselines]
    for name in [*expected, "random_ranking"]:
        assert name in entry["scores"], name
        metrics = entry["scores"][name]
        if name != "random_ranking":
            assert "energy_def" in metrics and "pointing_int" in metrics, name
        if name not in ("uniform", "centre", "random_map"):
            assert "precision_int" in metrics and "spearman_int" in metrics, name
        for metric, stats in metrics.items():
            assert math.isfinite(stats["mean"]), (name, metric)
    assert (tmp_path / "docs" / "quality.md").read_text().startswith("# Quality")
    assert (tmp_path / "docs" / "img" / "quality.png").stat().st_size > 0
