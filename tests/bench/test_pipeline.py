"""Smoke test of the end-to-end pipeline benchmark: a tiny run of every method."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_pipeline_times_every_method_and_path_with_agreeing_outputs(tmp_path):
    options = "--quick --batches 1 3 --repeats 1 --out".split()
    cmd = [sys.executable, "-m", "bench.pipeline", *options, str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "pipeline.json").read_text())
    assert sorted(result["methods"]) == ["afi", "ibd", "mace", "pattern_mining", "srae"]
    for method, entry in result["methods"].items():
        impls = {row["impl"] for row in entry["rows"]}
        assert {"pyconcepts", "model forward", "onnxruntime", "HTTP service"} <= impls, method
        assert {row["size"] for row in entry["rows"]} == {1, 3}
        assert all(row["agrees"] is not False for row in entry["rows"])
        assert 0 < entry["forward_share"] <= 1, method
        assert entry["peak_mib"]["torch"] >= 0
        if method == "ibd":  # Grad-CAM equals IBD's CAM: compared, not only timed
            gradcam = [r for r in entry["rows"] if r["impl"].startswith("captum LayerGradCam")]
            assert not gradcam or all(r["agrees"] for r in gradcam)
    assert "| method |" in (tmp_path / "pipeline.md").read_text()
