"""What ``pyconcepts explain``/``export`` fit on (pyconcepts.cli.fitdata): a model of another
world fits on the photos it explains, IBD and AfI take concepts from a folder or the rendered
concept world, and photos are read as the model's own preprocessing reads them."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from pyconcepts.cli import main
from pyconcepts.data.images import decode_image
from pyconcepts.report import load_explanation


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and match in err, err


@pytest.fixture
def other_world(tmp_path, monkeypatch):
    """A working folder with ``tiny.py`` (a 5-class CNN declaring a 40×40 input, one without a
    declared size) and ``photos/`` (six 50×60 PNGs of two patterns)."""
    (tmp_path / "tiny.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Pre:
                input_size = (40, 40)
                mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

            def _net():
                torch.manual_seed(0)
                net = nn.Sequential(
                    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                    nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
                )
                with torch.no_grad():  # no class bias: the photos get different predictions
                    net[-1].bias.zero_()
                return net

            def sized():
                model = _net()
                model.preprocess = Pre()
                return model

            def unsized():
                return _net()
            """
        )
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
        pixels[:, : 30 * (i % 2 + 1)] = 255 * (i % 3 == 0)
        Image.fromarray(pixels).save(photos / f"p{i}.png")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    import sys

    sys.modules.pop("tiny", None)


def test_a_model_of_another_world_fits_on_the_photos_it_explains(other_world, capsys):
    out = other_world / "out"
    argv = ["explain", "--method", "pattern_mining", "--model", "tiny:sized", "--images",
            "photos", "--out", str(out), "--json", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "on the 6 images of photos at 40x40, labelled by the model" in captured.err
    doc = json.loads(captured.out)
    saved = load_explanation(str(out))  # a str path too
    images = saved.images
    assert images is not None and tuple(images.shape) == (6, 3, 40, 40)
    from tiny import sized  # the same weights: the explained classes are its predictions

    predicted = sized().eval()(images).argmax(1).tolist()
    assert doc["targets"] == predicted
    assert saved.mean == [0.5] * 3 and saved.std == [0.25] * 3
    # every explained class was fitted, so every image has concept scores
    assert (saved.explanation.concept_scores != 0).any(1).all()


def test_afi_fits_on_the_photos_labelled_by_the_model(other_world, capsys):
    argv = ["explain", "--method", "afi", "--model", "tiny:sized", "--images", "photos",
            "--n-fit", "60", "--options", '{"max_iter": 1, "impression_steps": 0, "n_probe": 4}',
            "--save", "afi.pcx", "--out", "o", "--json", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    assert (
        "the 6 images of photos at 40x40, labelled by the model; probe sets: the concept "
        "world at 40x40" in capsys.readouterr().err
    )
    from tiny import sized

    from pyconcepts.explainers import AfI

    model = sized().eval()
    predicted = model(load_explanation(other_world / "o").images).argmax(1)
    fitted = AfI.load(other_world / "afi.pcx", model=model)
    assert len(set(predicted.tolist())) > 1  # so that other labels would show
    assert list(fitted.classes_) == sorted(set(predicted.tolist()))  # fitted on its predictions


def test_fit_images_is_its_own_folder_and_export_takes_it(other_world, capsys):
    out = other_world / "tiny.onnx"
    argv = ["export", "--method", "mace", "--model", "tiny:sized", "--fit-images", "photos",
            "--options", '{"epochs": 2}', "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    assert "on the 6 images of photos" in capsys.readouterr().err
    assert out.is_file()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["explain", "--method", "mace", "--model", "tiny:sized"],
         "--model tiny:sized does not classify the concept world: pass --fit-images"),
        (["explain", "--method", "mace", "--model", "tiny:unsized", "--images", "photos"],
         "--image-size: needed for --model tiny:unsized"),
        (["explain", "--method", "ibd", "--model", "tiny:sized", "--fit-images", "photos"],
         "--fit-images: IBD learns its concept vectors from images with concept masks"),
        (["explain", "--method", "mace", "--concepts", "photos"],
         "--concepts: --method mace learns no concepts from masks"),
        (["explain", "--method", "ibd", "--model", "tiny:sized", "--concepts", "photos"],
         "--concepts: "),
        (["explain", "--method", "mace", "--explainer", "x.pcx", "--fit-images", "photos"],
         "--fit-images: not used with --explainer"),
        (["explain", "--method", "mace", "--model", "tiny:sized", "--fit-images", "nowhere"],
         "--fit-images nowhere: no such folder"),
    ],
)  # fmt: skip
def test_fit_data_mistakes_exit_2_with_one_line(other_world, capsys, argv, match):
    _one_line_error(capsys, argv, match)


def test_image_size_option_serves_a_model_without_a_declared_size(other_world, capsys):
    argv = ["explain", "--method", "srae", "--model", "tiny:unsized", "--images", "photos",
            "--image-size", "32,36", "--options", '{"epochs": 2}', "--out", "o", "--json",
            "--no-report"]  # fmt: skip
    assert main(argv) == 0
    assert "at 32x36" in capsys.readouterr().err
    images = load_explanation(other_world / "o").images
    assert images is not None and tuple(images.shape[-2:]) == (32, 36)


def test_ibd_on_a_normalising_model_fits_on_the_rendered_concept_world(other_world, capsys):
    argv = ["explain", "--method", "ibd", "--model", "tiny:sized", "--images", "photos",
            "--n-fit", "24", "--options", '{"steps": 3, "mining_rounds": 1}', "--out", "o",
            "--json", "--no-report"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "on 24 concept-world images at 40x40" in captured.err
    doc = json.loads(captured.out)
    from pyconcepts.data import CONCEPTS

    assert doc["concept_names"] == list(CONCEPTS)


def test_concept_folder_names_afi_probes_and_ibd_concepts(other_world, capsys, vgg, resnet):
    from pyconcepts.data import ConceptWorld, write_concept_folder

    write_concept_folder(ConceptWorld(120, seed=3), other_world / "concepts", per_concept=4)
    fast = {"afi": '{"max_iter": 2, "impression_steps": 0}',
            "ibd": '{"steps": 3, "mining_rounds": 1}'}  # fmt: skip
    for method, options in fast.items():
        argv = ["explain", "--method", method, "--concepts", "concepts", "--n-fit", "60",
                "--n-images", "2", "--options", options, "--out", method, "--json",
                "--no-report"]  # fmt: skip
        assert main(argv) == 0, method
        captured = capsys.readouterr()
        folder_names = sorted(p.name for p in (other_world / "concepts").iterdir())
        assert json.loads(captured.out)["concept_names"] == folder_names, method
        assert f"{len(folder_names)} concepts of concepts" in captured.err, method


def test_photos_are_read_as_the_models_preprocessing_reads_them(tmp_path):
    from pyconcepts.models.imagenet import EFFICIENTNET_LITE0 as pre

    pixels = np.random.default_rng(1).integers(0, 256, (300, 451, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    read = decode_image(tmp_path / "p.png", pre.input_size, pre.resize)
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    as_read = (torch.from_numpy(read.astype(np.float32) / 255).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(as_read, pre(pixels)[0])


def test_efficientnet_explains_a_cat_photo_fitted_on_photos(effnet, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, pixels in photos.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    argv = ["explain", "--method", "pattern_mining", "--model", "efficientnet-lite0",
            "--images", str(folder), "--out", str(tmp_path / "o"), "--json",
            "--no-report"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    names = [doc["class_names"][t] for t in doc["targets"]]
    assert "cat" in names[0] and "espresso" in names[1], names  # chelsea.png, coffee.png
