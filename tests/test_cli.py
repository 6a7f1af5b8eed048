"""Command-line habits: exit codes, one-line errors, --json, info, any model, batching."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from pyconcepts.cli import main
from pyconcepts.cli._common import show_progress
from pyconcepts.cli.commands import explain_in_batches
from pyconcepts.report import load_explanation

IBD_FAST = ["--n-fit", "60", "--options", '{"steps": 5, "mining_rounds": 1}']


def _one_line_error(capsys, code_expected, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == code_expected, err
    assert len(err.splitlines()) == 1 and match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["explain", "--method", "ibd", "--model", "no-such-model"], "--model no-such-model"),
        (["explain", "--method", "ibd", "--model", "no_such_module:make"], "no_such_module"),
        (["explain", "--method", "ibd", "--mean", "1,2"], "--mean: expected 1 or 3 values"),
        (["explain", "--method", "ibd", "--std", "0,1,1"], "--std: expected positive"),
        (["explain", "--method", "ibd", "--options", "{bad"], "--options: not JSON"),
        (["explain", "--method", "ibd", "--explainer", "missing.pcx"], "--explainer"),
        (["explain", "--method", "ibd", "--device", "cuda:7"] if not torch.cuda.is_available()
         else ["explain", "--method", "ibd", "--device", "nope"], "--device"),
        (["report", "no/such/folder"], "no such results folder"),
        (["zoo", "nope"], "unknown model"),
    ],
)  # fmt: skip
def test_user_mistakes_exit_2_with_one_line(capsys, argv, match):
    _one_line_error(capsys, 2, argv, match)


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["explain", "--method", "nope"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["explain", "--method", "ibd", "--batch-size", "0"])
    assert info.value.code == 2


def test_failures_exit_1_in_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from pyconcepts.cli import commands

    def broken(args):
        raise RuntimeError("the disk is full\nsecond line")

    monkeypatch.setattr(commands, "info", broken)
    _one_line_error(capsys, 1, ["info"], "RuntimeError: the disk is full")
    with pytest.raises(RuntimeError):
        main(["info", "--debug"])


def test_info_and_backends_print_json(capsys):
    assert main(["info", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"pyconcepts", "torch", "backends", "devices", "cache_dir", "extras"} <= set(doc)
    assert doc["devices"][0] == "cpu" and doc["extras"]["test"] is True
    assert main(["info"]) == 0
    assert "cache_dir" in capsys.readouterr().out
    assert main(["backends", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu"].startswith("loaded")


def test_progress_bars_follow_the_terminal_and_the_option(monkeypatch):
    import argparse
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert show_progress(argparse.Namespace(no_progress=False))
    assert not show_progress(argparse.Namespace(no_progress=True))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not show_progress(argparse.Namespace(no_progress=False))


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """A module in the working folder whose functions return models (for --model mod:fn)."""
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from pyconcepts.models import load

            def normalising_vgg():
                model = load("cw-vgg", progress=False)
                model.preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
                return model

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    yield "my_models"
    import sys

    sys.modules.pop("my_models", None)


def test_model_from_a_function_with_its_own_preprocessing(tmp_path, factory_module, capsys, vgg):
    out = tmp_path / "out"
    argv = ["explain", "--method", "pattern_mining", "--model", f"{factory_module}:normalising_vgg",
            "--n-fit", "60", "--n-images", "3", "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "pattern_mining" and len(doc["targets"]) == 3
    assert doc["report"].endswith("report.html")
    saved = load_explanation(out)
    assert saved.mean == [0.5] * 3 and saved.std == [0.25] * 3
    assert saved.settings["model"] == f"{factory_module}:normalising_vgg"
    assert saved.images is not None and float(saved.images.min()) < 0  # normalised inputs
    _one_line_error(capsys, 2, [*argv[:4], f"{factory_module}:not_a_model"], "returned a int")


def test_explain_in_batches_matches_one_batch(tmp_path, resnet, capsys):
    import argparse

    from pyconcepts.data import ConceptWorld
    from pyconcepts.explainers import IBD

    saved = tmp_path / "ibd.pcx"
    argv = ["explain", "--method", "ibd", *IBD_FAST, "--n-images", "5", "--batch-size", "2",
            "--save", str(saved), "--no-report", "--out", str(tmp_path / "a")]  # fmt: skip
    assert main(argv) == 0
    assert not (tmp_path / "a" / "report.html").exists()
    explainer = IBD.load(saved, model=resnet)
    images = ConceptWorld(5, seed=1).image(slice(None))
    whole = explainer.explain(images)
    joined = explain_in_batches(
        explainer, images, argparse.Namespace(batch_size=2, no_progress=True)
    )
    assert type(joined) is type(whole) and len(joined) == 5
    torch.testing.assert_close(joined.concept_scores, whole.concept_scores, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(joined.heatmaps, whole.heatmaps, atol=1e-4, rtol=1e-4)
    for key, value in whole.extras.items():
        assert joined.extras[key].shape == value.shape, key
    from_disk = load_explanation(tmp_path / "a")
    torch.testing.assert_close(from_disk.explanation.concept_scores, whole.concept_scores,
                               atol=1e-4, rtol=1e-4)  # fmt: skip


def test_demo_json_keeps_stdout_to_one_document(tmp_path, capsys):
    assert main(["demo", "--only", "world", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["steps"]["world"]["status"] == "ok" and doc["report"].endswith("report.html")
    assert "[demo] world" in captured.err and "report: " in captured.err
