"""The HTML report: self-contained (decodable data-URI images, no network), complete (every
section), light, de-normalised pictures — and rendered by a real browser where one is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from pyconcepts.cli import main
from pyconcepts.explanation import Explanation
from pyconcepts.report import collect, write_report
from pyconcepts.report.images import to_rgb

STEPS = ("ibd", "mace")  # the fake demo's steps (both hold an IBD explanation)


@pytest.fixture(scope="module")
def results(tmp_path_factory, resnet):
    """A demo-like results folder: summary.json, two steps with a saved explanation (the second
    of images normalised with a mean/std), a metrics JSON, a markdown table and a figure."""
    root = tmp_path_factory.mktemp("results")
    fitted = root / "ibd.pcx"
    fit = ["--n-fit", "60", "--options", '{"steps": 5, "mining_rounds": 1}', "--save", str(fitted)]
    normalised = ["--explainer", str(fitted), "--mean", "0.25", "--std", "0.5"]
    for step, how in zip(STEPS, (fit, normalised)):
        out = root / step / "explanation"
        assert main(["explain", "--method", "ibd", *how, "--no-report", "--out", str(out)]) == 0
    (root / "ibd" / "report.json").write_text(
        json.dumps({"ground_truth_precision": {"a": 0.5, "b": 1.0}, "rows": [1, 2, 3]})
    )
    (root / "ibd" / "table.md").write_text("| method | F1 |\n|---|---:|\n| ours | 0.9 |\n")
    Image.new("RGB", (1600, 400), (200, 30, 30)).save(root / "ibd" / "figure.png")
    summary = {
        "world": {"images": 2500, "classes": 10, "concepts": 16, "status": "ok", "seconds": 1.0},
        "ibd": {"gt_precision_at_k": 0.75, "concept_mAP": 0.8, "status": "ok", "seconds": 9.0},
        "mace": {"status": "error", "error": "RuntimeError: boom", "seconds": 0.1},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def _images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_report_is_one_self_contained_light_file(results, tmp_path):
    path = write_report(results, tmp_path / "report.html")
    page = path.read_text()
    assert path.stat().st_size < 3 * 2**20
    assert not re.search(r'(src|href)="(?!data:|#)', page), "only data URIs and anchors"
    assert "<script" not in page and "<link" not in page and "http://" not in page
    sources = _images(page)
    assert len(sources) >= 6
    for uri in sources:
        header, data = uri.split(",", 1)
        assert header in ("data:image/png;base64", "data:image/webp;base64")
        Image.open(io.BytesIO(base64.b64decode(data))).load()
    for text in ("Model and data", "Quality scoreboard", 'id="s-ibd"', 'id="s-mace"',
                 "gt_precision_at_k 0.75", "Settings", "class map", "ground_truth_precision",
                 "failed: RuntimeError: boom", "concept world classes"):  # fmt: skip
        assert text in page, text


def test_report_of_explain_output_and_cli(results, capsys):
    folder = results / "ibd" / "explanation"
    assert main(["report", str(folder), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["report"].endswith("report.html") and doc["bytes"] > 0
    sections = collect(folder).sections
    assert [s.name for s in sections] == ["explanation"] and sections[0].explanations


def test_pictures_undo_the_model_normalisation():
    image = torch.rand(3, 8, 8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    normalised = (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    expected = (image.permute(1, 2, 0).numpy() * 255).round()
    assert abs(to_rgb(normalised, mean, std).astype(float) - expected).max() <= 1


def test_saved_normalisation_reaches_the_report(results):
    (step,) = [s for s in collect(results).sections if s.name == "mace"]
    saved = step.explanations[0]
    assert saved.mean == [0.25] and saved.std == [0.5] and saved.images is not None


def test_class_map_weights_heatmaps_by_positive_scores():
    maps = torch.rand(1, 3, 4, 4)
    e = Explanation(
        "m", "l", ["a", "b", "c", "d"], torch.tensor([[2.0, -1.0, 0.5, 3.0]]),
        torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), ["x", "y"], heatmaps=maps,
        heatmap_concepts=torch.tensor([[1, 2, -1]]),
    )  # fmt: skip
    torch.testing.assert_close(e.class_map(0), 0.5 * maps[0, 1])
    given = Explanation(*e.__dict__.values())
    assert given.class_map(0) is not None
    fixed = Explanation("m", "l", ["a"], torch.ones(1, 1), torch.zeros(1, 2),
                        torch.zeros(1, dtype=torch.long), ["x", "y"],
                        class_maps=torch.full((1, 4, 4), 7.0))  # fmt: skip
    assert float(fixed.class_map(0).max()) == 7.0


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_a_real_browser_renders_every_section(results, tmp_path):
    path = write_report(results, tmp_path / "report.html")
    page = path.read_text()
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri()],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "CONSOLE" not in run.stderr and "Not allowed to load" not in run.stderr
    picture = Image.open(shot).convert("RGB")
    assert picture.size == (1200, 2000)
    assert len(picture.getcolors(1 << 20) or []) > 50  # drawn, not a blank page
    dom = subprocess.run(
        [*browser, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=300
    ).stdout
    for anchor in re.findall(r'<h2 id="([^"]+)"', page):
        assert f'id="{anchor}"' in dom, anchor
    assert len(_images(dom)) == len(_images(page))
