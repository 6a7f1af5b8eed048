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
