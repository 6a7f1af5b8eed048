"""User concept folders: the documented format round-trips the concept world, broken folders
say why, and the data feeds IBD, AfI's probes and the naming of units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pyconcepts.data import ConceptWorld, load_concept_folder, write_concept_folder
from pyconcepts.errors import LoadError


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(48, seed=2)


def test_a_written_folder_reads_back_as_the_worlds_masks(world, tmp_path) -> None:
    root = write_concept_folder(world, tmp_path / "concepts", per_concept=2)
    data = load_concept_folder(root, (64, 64))
    assert data.names == sorted(n.replace(":", "-") for n in world.concepts)
    n = data.images.shape[0]
    assert data.images.shape == (n, 3, 64, 64) and data.masks.shape == (n, 16, 64, 64)
    assert bool((data.masks.flatten(2).any(2).sum(1) == 1).all())  # one concept per example
    first = sorted((root / data.names[0]).glob("img*[0-9].png"))[0]
    index = int(first.stem[3:])
    concept = world.concepts[[n.replace(":", "-") for n in world.concepts].index(data.names[0])]
    want = world.concept_masks(index)[world.concepts.index(concept)]
    assert torch.equal(data.masks[0, 0], want)
    torch.testing.assert_close(data.images[0], world.image(index), atol=1 / 255, rtol=0)
    probes, benchmarks = data.probe_sets()
    assert all(len(p) == 2 for p in probes) and all(len(b) == n - 2 for b in benchmarks)
    normalised = load_concept_folder(root, (32, 48), preprocess=lambda x: x * 2 - 1)
    assert normalised.images.shape[-2:] == (32, 48) and float(normalised.images.min()) < 0


def test_broken_folders_say_why(tmp_path) -> None:
    with pytest.raises(LoadError, match="not a folder"):
        load_concept_folder(tmp_path / "missing", (8, 8))
    with pytest.raises(LoadError, match="no concept sub-folders"):
        load_concept_folder(tmp_path, (8, 8))
    (tmp_path / "red").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "red" / "a.png")
    with pytest.raises(LoadError, match=r"no mask a\.mask\.png"):
        load_concept_folder(tmp_path, (8, 8))
    (tmp_path / "red" / "a.mask.png").write_bytes(b"not a png")
    with pytest.raises(LoadError, match="cannot be read"):
        load_concept_folder(tmp_path, (8, 8))


def test_explainers_fit_on_and_are_named_by_a_concept_folder(world, tmp_path) -> None:
    from pyconcepts.explainers import IBD, MACE
    from pyconcepts.models import cw_resnet, cw_vgg

    data = load_concept_folder(write_concept_folder(world, tmp_path, per_concept=3), (64, 64))
    torch.manual_seed(0)
    ibd = IBD(cw_resnet().eval(), steps=3, mining_rounds=0).fit(data)
    assert ibd.concept_names_ == data.names
    x, y = world.tensors()
    mace = MACE(cw_vgg().eval(), n_concepts=2, embedding_sizes=(8,), epochs=1, classes=[0, 1])
    mace.fit((x, y), progress=False)
    named = mace.name_concepts(data)
    kept = [mace.concept_names_[i] for i in range(4) if mace.head_.active.flatten()[i] > 0]
    assert sorted(named) == sorted(kept)
    assert all(label in data.names and 0.0 <= iou <= 1.0 for label, iou in named.values())
    assert any(iou > 0 for _, iou in named.values())
