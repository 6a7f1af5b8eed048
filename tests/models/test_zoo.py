import pytest
import torch

from pyconcepts.models import zoo


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    """A zoo entry that trains in a second, cached in a private folder."""
    monkeypatch.setenv("PYCONCEPTS_CACHE", str(tmp_path))
    recipe = zoo.Recipe(images_per_epoch=96, n_test=32, epochs=1, batch_size=32)
    entry = zoo.ZooEntry("tiny", zoo.cw_resnet, 1, recipe, "layer3", "test model")
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    return entry


def test_trains_once_then_loads_from_cache(tiny, monkeypatch):
    first = zoo.load("tiny", progress=False)
    assert first.zoo_info["name"] == "tiny" and 0.0 <= first.zoo_info["test_accuracy"] <= 1.0
    assert not first.training

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(zoo, "train", no_training)
    second = zoo.load("tiny", progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert zoo.info("tiny")["test_accuracy"] == first.zoo_info["test_accuracy"]


def test_corrupt_or_incompatible_cache_is_retrained_with_a_warning(tiny, monkeypatch):
    zoo.load("tiny", progress=False)
    path = zoo._cache_path(tiny)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="retraining tiny"):
        zoo.load("tiny", progress=False)
    # same file name, other recipe: the header says so, and it is retrained
    other = zoo.Recipe(images_per_epoch=64, n_test=32, epochs=1, batch_size=32)
    monkeypatch.setitem(
        zoo.ZOO, "tiny", zoo.ZooEntry("tiny", zoo.cw_resnet, 1, other, "layer3", "test model")
    )
    with pytest.warns(UserWarning, match="retraining"):
        model = zoo.load("tiny", progress=False)
    assert model.zoo_info["recipe"]["images_per_epoch"] == 64


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="cw-vgg"):
        zoo.load("resnet50")


def test_zoo_models_reach_high_accuracy(vgg, resnet):
    from pyconcepts.data import ConceptWorld

    world = ConceptWorld(400, seed=99)
    for model in (vgg, resnet):
        assert zoo.accuracy(model, *world.tensors()) >= 0.9


def test_shipped_weights_are_the_current_recipe_and_load_without_training(monkeypatch, tmp_path):
    """The package ships each zoo model trained with its entry's recipe and version: changing a
    recipe without shipping new weights fails here (and load would then train)."""
    monkeypatch.setenv("PYCONCEPTS_CACHE", str(tmp_path))  # empty cache

    def no_training(*args, **kwargs):
        raise AssertionError("the shipped weights should have been used")

    monkeypatch.setattr(zoo, "train", no_training)
    for name in zoo.available():
        entry = zoo.ZOO[name]
        assert zoo._shipped_path(entry).is_file()
        model = zoo.load(name, progress=False)
        expected = zoo._expected_info(entry)
        assert {k: model.zoo_info[k] for k in expected} == expected
        assert model.zoo_info["test_accuracy"] >= 0.95
        assert zoo.info(name)["test_accuracy"] == model.zoo_info["test_accuracy"]
    assert not list(tmp_path.iterdir())  # nothing written to the cache


def test_a_corrupt_cache_falls_back_to_the_shipped_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("PYCONCEPTS_CACHE", str(tmp_path))
    entry = zoo.ZOO["cw-resnet"]
    zoo._cache_path(entry).write_bytes(b"\x00" * 64)
    monkeypatch.setattr(zoo, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    with pytest.warns(UserWarning, match="loading the shipped weights of cw-resnet"):
        model = zoo.load("cw-resnet", progress=False)
    shipped = zoo._load_cached(entry, zoo._shipped_path(entry))
    for a, b in zip(model.state_dict().values(), shipped.state_dict().values()):
        assert torch.equal(a, b)
