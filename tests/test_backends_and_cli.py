import json

import pytest
import torch

import pyconcepts
from pyconcepts import _backends
from pyconcepts.cli import main
from pyconcepts.ops._dispatch import resolve_backend


def test_backends_report_every_backend_with_a_reason():
    report = pyconcepts.backends()
    assert set(report) == {"cpu", "cuda", "reference"}
    assert report["cpu"].startswith("loaded"), report  # the CPU core is built by the install
    assert report["cuda"]  # loaded, or why not


def test_dispatch_rules():
    x = torch.zeros(2)
    assert resolve_backend(x) == "cpu"
    assert resolve_backend(x.half()) == "reference"
    assert resolve_backend(x, "reference") == "reference"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(x, "gpu")
    with pytest.raises(TypeError, match="float16"):
        resolve_backend(x.half(), "cpu")
    with pytest.raises(ValueError, match="CUDA tensors"):
        resolve_backend(x, "cuda")


def test_lazy_public_surface():
    assert pyconcepts.ConceptWorld.__name__ == "ConceptWorld"
    assert "ops" in dir(pyconcepts)
    with pytest.raises(AttributeError):
        pyconcepts.nope  # noqa: B018


def test_cli_backends_and_help(capsys):
    assert main(["backends"]) == 0
    assert "cpu" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_cli_demo_runs_chosen_steps_and_writes_a_summary(tmp_path, vgg, resnet, capsys):
    assert main(["demo", "--out", str(tmp_path), "--only", "world,zoo", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world"]["status"] == "ok" and (tmp_path / "world" / "samples.png").exists()
    assert summary["zoo"]["cw-vgg_test_accuracy"] > 0.9
    assert (tmp_path / "report.html").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"report: {(tmp_path / 'report.html').resolve()}"
    )
    assert main(["demo", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "unknown step" in capsys.readouterr().err


def test_cuda_module_status_is_explained():
    if _backends.core_cuda() is None:
        assert "cuda" in pyconcepts.backends()
    else:
        assert _backends.core_cuda().device_count() >= 0


def test_cli_explain_fits_saves_exports_then_reloads_on_image_files(tmp_path, resnet, capsys):
    from PIL import Image

    from pyconcepts.data import ConceptWorld

    saved = tmp_path / "ibd.pcx"
    options = '{"steps": 5, "mining_rounds": 1}'
    args = ["explain", "--method", "ibd", "--n-fit", "60", "--n-images", "3", "--options", options]
    assert main([*args, "--save", str(saved), "--onnx", "--out", str(tmp_path / "a")]) == 0
    assert saved.is_file() and (tmp_path / "a" / "explainer.onnx").is_file()
    assert (tmp_path / "a" / "manifest.json").is_file()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(ConceptWorld(2, seed=1).image(slice(None))):
        array = (image.permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(folder / f"{i}.png")
    out = tmp_path / "b"
    assert main(["explain", "--method", "ibd", "--explainer", str(saved), "--images",
                 str(folder), "--out", str(out)]) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "ibd" and len(manifest["targets"]) == 2
    assert "image 0:" in capsys.readouterr().out
