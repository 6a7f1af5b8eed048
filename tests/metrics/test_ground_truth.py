import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyconcepts.data import ConceptWorld
from pyconcepts.metrics import ground_truth as gt


def _region(h: int = 8, w: int = 8) -> torch.Tensor:
    region = torch.zeros(1, h, w, dtype=torch.bool)
    region[0, 2:4, 2:6] = True  # 8 of 64 pixels
    return region


def test_a_map_exactly_on_the_region_scores_one():
    region = _region()
    maps = region.float()
    assert gt.pointing_game(maps, region).item() == 1.0
    assert gt.energy(maps, region).item() == 1.0


def test_a_map_off_the_region_scores_zero():
    region = _region()
    maps = (~region).float()
    maps[0, 7, 7] = 5.0
    assert gt.pointing_game(maps, region).item() == 0.0
    assert gt.energy(maps, region).item() == 0.0


def test_uniform_and_empty_maps_score_the_region_area():
    region = _region()
    for maps in (torch.ones(1, 8, 8), torch.zeros(1, 8, 8)):
        assert gt.energy(maps, region).item() == pytest.approx(8 / 64)
        assert gt.pointing_game(maps, region).item() == pytest.approx(8 / 64)


def test_energy_is_the_share_of_positive_mass_inside():
    region = _region()
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 2] = 3.0  # inside
    maps[0, 6, 6] = 1.0  # outside
    maps[0, 7, 0] = -4.0  # negative mass does not count
    assert gt.energy(maps, region).item() == pytest.approx(0.75)
    assert gt.pointing_game(maps, region).item() == 1.0


def test_an_empty_region_gives_nan():
    maps, region = torch.rand(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool)
    assert math.isnan(gt.energy(maps, region).item())
    assert math.isnan(gt.pointing_game(maps, region).item())


def test_map_scores_refuse_bad_arguments():
    with pytest.raises(ValueError, match="maps"):
        gt.energy(torch.rand(8, 8), _region()[0])
    with pytest.raises(TypeError, match="regions"):
        gt.energy(torch.rand(1, 8, 8), _region().float())
    with pytest.raises(ValueError, match="regions"):
        gt.pointing_game(torch.rand(1, 8, 8), torch.zeros(1, 4, 4, dtype=torch.bool))


def test_regions_are_the_union_of_the_selected_masks():
    masks = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    masks[0, 0, 0, 0] = masks[0, 1, 1, 1] = masks[0, 2, 2, 2] = True
    region = gt.regions_of(masks, torch.tensor([[True, False, True]]))
    assert region[0].nonzero().tolist() == [[0, 0], [2, 2]]


def test_precision_at_k_counts_the_true_concepts_in_the_top_k():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0, 5.0]])
    relevant = torch.tensor([[True, False, True, False, False]])
    candidates = torch.tensor([[True, True, True, True, False]])  # the 5.0 is not present
    assert gt.precision_at_k(scores, relevant, candidates).item() == pytest.approx(0.5)
    perfect = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.0]])
    assert gt.precision_at_k(perfect, relevant, candidates).item() == 1.0


def test_precision_at_k_of_constant_scores_is_the_chance_level():
    relevant = torch.tensor([[True, False, False, False]])
    candidates = torch.ones(1, 4, dtype=torch.bool)
    assert gt.precision_at_k(torch.zeros(1, 4), relevant, candidates).item() == pytest.approx(0.25)


def test_precision_at_k_is_nan_without_relevant_candidates():
    p = gt.precision_at_k(torch.rand(1, 3), torch.zeros(1, 3, dtype=torch.bool),
                          torch.ones(1, 3, dtype=torch.bool))  # fmt: skip
    assert math.isnan(p.item())


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 4), st.integers(1, 7), st.integers(0, 2**31 - 1),
       st.sampled_from([torch.float32, torch.float64]))  # fmt: skip
def test_precision_ceiling_is_the_best_any_scores_with_the_same_zeros_reach(b, n, seed, dtype):
    """Plain reading, k relevant candidates of n concepts: the a named relevant ones fill the
    top, the k − a remaining places go to the u unnamed candidates, tied, r = k − a of them
    relevant; never below what the given scores reach; NaN without a relevant candidate;
    shapes checked."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-2, 3, (b, n), generator=gen).to(dtype)
    relevant = torch.rand(b, n, generator=gen) < 0.4
    candidates = torch.rand(b, n, generator=gen) < 0.8
    got = gt.precision_ceiling(scores.t().contiguous().t(), relevant, candidates)
    given_scores = gt.precision_at_k(scores, relevant, candidates)
    for i in range(b):
        rel = (relevant[i] & candidates[i]).tolist()
        named = (scores[i] != 0).tolist()
        cand = candidates[i].tolist()
        n_rel = sum(rel)
        if n_rel == 0:
            assert math.isnan(got[i].item())
            continue
        a = sum(r and n for r, n in zip(rel, named))
        unnamed = sum(c and not n for c, n in zip(cand, named))
        r = n_rel - a
        want = (a + (r * r / unnamed if unnamed else 0.0)) / n_rel
        assert got[i].item() == pytest.approx(want, abs=1e-6)
        assert got[i].item() >= given_scores[i].item() - 1e-6
    with pytest.raises(ValueError, match="scores and relevant: expected equal shapes"):
        gt.precision_ceiling(scores, relevant[:, :0], candidates)


def test_spearman_matches_scipy_like_definition_with_ties():
    scores = torch.tensor([[1.0, 2.0, 2.0, 4.0, 9.0]])
    truth = torch.tensor([[0.1, 0.5, 0.3, 0.9, 0.0]])
    cand = torch.tensor([[True, True, True, True, False]])
    a, b = np.array([0.0, 1.5, 1.5, 3.0]), np.array([0.0, 2.0, 1.0, 3.0])
    expected = np.corrcoef(a, b)[0, 1]
    assert gt.spearman(scores, truth, cand).item() == pytest.approx(expected)
    assert gt.spearman(truth, truth, cand).item() == pytest.approx(1.0)
    assert gt.spearman(-truth, truth, cand).item() == pytest.approx(-1.0)
    assert math.isnan(gt.spearman(torch.zeros(1, 5), truth, cand).item())


def test_dissect_matches_each_unit_to_the_concept_it_covers():
    masks = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    masks[:, 0, :4] = True  # concept 0: top half
    masks[:, 1, 4:] = True  # concept 1: bottom half
    masks[:, 2, :, :2] = True  # concept 2: a left strip
    maps = torch.zeros(2, 2, 8, 8)
    maps[:, 0, 4:] = 1.0  # unit 0 sits on concept 1
    maps[0, 1, :, :2] = 1.0  # unit 1 sits on concept 2, in image 0 only
    units = torch.tensor([[0, 1], [0, -1]])
    iou = gt.dissect(maps, units, masks, n_units=3)
    assert iou[0, 1].item() == 1.0 and iou[1, 2].item() == 1.0
    assert iou[2].sum().item() == 0.0  # unit 2 never appears
    assert gt.match_units(iou).tolist() == [1, 2, -1]


def test_scores_by_concept_sums_the_matched_units():
    unit_scores = torch.tensor([[1.0, 2.0, 4.0]])
    units = torch.tensor([[0, 1, 2]])
    matched = torch.tensor([3, 3, -1])
    out = gt.scores_by_concept(unit_scores, units, matched, n_concepts=4)
    assert out.tolist() == [[0.0, 0.0, 0.0, 3.0]]


def test_bootstrap_interval_brackets_the_mean_and_skips_nan():
    values = np.r_[np.linspace(0, 1, 101), np.nan]
    mean, low, high = gt.bootstrap_ci(values, seed=1)
    assert mean == pytest.approx(0.5) and low < mean < high
    assert gt.bootstrap_ci(values, seed=1) == (mean, low, high)
    assert all(math.isnan(v) for v in gt.bootstrap_ci([np.nan]))


class _Detector(nn.Module):
    """Logit of class 0 = mean red minus mean green (a model that uses colour only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean((1, 2)) - x[:, 1].mean((1, 2))
        return torch.stack([red, -red], 1)


def test_intervention_truth_finds_the_concept_the_model_uses():
    world = ConceptWorld(30, seed=5)
    red = world.concepts.index("colour:red")
    index = world.concept_presence(slice(None))[:, red].nonzero().flatten()[:6]
    truth = gt.intervention_truth(_Detector().eval(), world, index, torch.zeros(len(index)))
    assert bool((truth.drops[:, red] > 0).all())  # recolouring red parts lowers the red logit
    shapes = [world.concepts.index(c) for c in world.concepts if c.startswith("shape:")]
    textures = [world.concepts.index(c) for c in world.concepts if c.startswith("texture:")]
    # a shape change moves a few pixels; the red concept is the one the model uses most
    assert bool((truth.drops[:, red] >= truth.drops[:, shapes + textures].abs().amax(1)).all())
    assert bool(truth.relevant()[:, red].all())
    assert not bool((truth.drops[~truth.present] != 0).any())


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(0, 2**31 - 1),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(2, 5),
)
def test_region_auc_agrees_with_sklearn(b, h, w, seed, dtype, levels):
    """Few value levels make ties common; regions may be empty or cover everything."""
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randint(0, levels, (b, h, w), generator=gen).to(dtype)
    regions = torch.rand(b, h, w, generator=gen) < 0.4
    got = gt.region_auc(maps.transpose(1, 2).contiguous().transpose(1, 2), regions)
    for i in range(b):
        reg = regions[i].flatten().numpy()
        if reg.all() or not reg.any():
            assert math.isnan(got[i].item())
        else:
            want = roc_auc_score(reg, maps[i].flatten().numpy())
            assert got[i].item() == pytest.approx(want, abs=1e-6)


def test_region_auc_ignores_sharpening_that_raises_energy():
    region = _region()
    maps = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) + region.float()
    auc = gt.region_auc(maps, region).item()
    assert gt.region_auc(maps**4, region).item() == pytest.approx(auc)
    assert gt.energy(maps**4, region).item() > gt.energy(maps, region).item()
    for flat in (torch.zeros(1, 8, 8), torch.ones(1, 8, 8)):
        assert gt.region_auc(flat, region).item() == 0.5
    assert gt.region_auc(region.float(), region).item() == 1.0
    with pytest.raises(TypeError, match="regions"):
        gt.region_auc(maps, region.float())
