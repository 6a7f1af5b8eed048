"""ImageSets: sets gathered by index from one tensor, and the probe sets built on them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconcepts.data.image_sets import ImageSets
from pyconcepts.explainers.afi import probe_sets
from pyconcepts.explainers.afi.concepts import concept_presence


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.lists(st.lists(st.integers(0, 5), max_size=7), max_size=4))
def test_sets_are_the_indexed_images(n, index_lists):
    images = torch.rand(n, 2, 3, 3)
    lists = [[i % n for i in idx] for idx in index_lists]
    sets = ImageSets(images, [torch.tensor(i, dtype=torch.long) for i in lists])
    assert len(sets) == len(lists)
    for got, idx in zip(sets, lists):  # iteration, as zip(probes, benchmarks) reads them
        assert torch.equal(got, images[idx]) and got.shape == (len(idx), 2, 3, 3)
    assert [t.shape for t in sets[1:]] == [images[i].shape for i in lists[1:]]
    if lists:
        assert torch.equal(sets[-1], images[lists[-1]])


def test_bad_sets_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"images: expected a \[N, C, H, W\] tensor, got \(3, 4\)"):
        ImageSets(torch.rand(3, 4), [torch.tensor([0])])
    with pytest.raises(TypeError, match=r"images: expected a torch\.Tensor, got list"):
        ImageSets([[0.0]], [torch.tensor([0])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"indices\[1\]: expected indices in \[0, 3\), got 1..3"):
        ImageSets(torch.rand(3, 1, 2, 2), [torch.tensor([0]), torch.tensor([1, 3])])
    with pytest.raises(ValueError, match=r"indices\[0\]: expected indices in \[0, 3\), got -1"):
        ImageSets(torch.rand(3, 1, 2, 2), [torch.tensor([-1])])


def test_probe_sets_render_once_what_a_per_concept_rendering_gives(small_world):
    """Oracle: the draws of a plain per-concept loop, each set rendered on its own."""
    probes, benchmarks = probe_sets(small_world, 12, seed=3)
    presence = concept_presence(small_world)
    gen = torch.Generator().manual_seed(3)
    assert probes.images is benchmarks.images  # one rendering shared by all sets
    assert len(probes.images) <= len(small_world)
    for m in range(presence.shape[1]):
        pos = presence[:, m].nonzero().flatten()
        neg = (~presence[:, m]).nonzero().flatten()
        size = min(12, len(pos), len(neg))
        pos = pos[torch.randperm(len(pos), generator=gen)[:size]]
        neg = neg[torch.randperm(len(neg), generator=gen)[:size]]
        assert torch.equal(probes[m], small_world.image(pos))
        assert torch.equal(benchmarks[m], small_world.image(neg))
