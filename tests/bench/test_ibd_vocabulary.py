"""The IBD vocabulary study: conjunction masks against the world's parts, and a tiny run."""

import torch

from bench import ibd_vocabulary
from pyconcepts.data.concept_world import ConceptWorld


def test_conjunction_masks_are_the_pixels_of_parts_with_both_attributes():
    world = ConceptWorld(6, seed=3)
    masks, names = ibd_vocabulary.conjunctions(world, world.concept_masks(slice(None)))
    assert len(names) == 30 and masks.shape[1] == 30
    ids = world.concept_ids_of_parts(slice(None))  # [N, P, 3]
    owner = world.owner.long()
    for n in range(len(world)):
        for j, name in enumerate(names):
            shape, colour = (world.concepts.index(x) for x in name.split("&"))
            parts = ((ids[n, :, 0] == shape) & (ids[n, :, 1] == colour)).nonzero().flatten()
            want = torch.isin(owner[n], parts)
            assert torch.equal(masks[n, j], want), (n, name)


def test_part_level_vocabulary_is_fitted_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("bench._results.FOLDER", tmp_path)
    rows = ibd_vocabulary.main(["--n-fit", "120", "--models", "cw-resnet"])
    assert [r["vocabulary"] for r in rows] == ["attributes", "attributes + shape&colour"]
    assert rows[0]["concepts"] == 16 and rows[1]["concepts"] > 16
    for r in rows:
        assert 0.0 < r["residual_ratio"] <= 1.0 and len(r["bases"]) == 10
    assert (tmp_path / "ibd_vocabulary.json").exists()
