"""Filter-pattern mining: patches, hierarchical mining, contract, ablation, ground truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyconcepts.errors import NotFittedError
from pyconcepts.explainers.pattern_mining import FilterPatterns, ablated, ground_truth_scores
from pyconcepts.models import cw_vgg
from pyconcepts.testing import check_explainer

FAST = {"patch_size": 16, "n_candidates": 16, "n_patches": 3, "batch_size": 16}


@pytest.fixture(scope="module")
def fitted(small_world):
    torch.manual_seed(0)
    model = cw_vgg().eval()
    images, labels = small_world.tensors()
    explainer = FilterPatterns(model, "features.relu4", tau_support=0.3, **FAST)
    return explainer.fit((images[:16], labels[:16])), images[:16], labels[:16]


def test_candidate_patches_follow_the_heatmap_and_do_not_repeat():
    explainer = FilterPatterns(cw_vgg(), "features.relu4", patch_size=8, n_candidates=4000,
                               n_patches=2)  # fmt: skip
    cam = torch.zeros(2, 32, 32)
    cam[0, 4:12, 20:28] = 1.0  # one hot square per image
    cam[1, 16:24, 0:8] = 1.0
    corners = explainer._candidate_patches(cam, 0)
    assert corners[:, 0].tolist() == [[4, 20], [16, 0]]
    # the second patch avoids the zeroed first region
    assert all(abs(a - b) >= 1 for a, b in zip(corners[:, 1].flatten(), corners[:, 0].flatten()))
    # image i of the fit data draws its windows from its own stream, whatever its batch
    wide = FilterPatterns(cw_vgg(), "features.relu4", patch_size=8, n_candidates=3, n_patches=2)
    heat = torch.rand(5, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = wide._candidate_patches(heat, 0)
    parts = torch.cat([wide._candidate_patches(heat[:2], 0), wide._candidate_patches(heat[2:], 2)])
    assert torch.equal(parts, whole)
    assert not torch.equal(wide._candidate_patches(heat, 1), whole)


def test_the_mined_patterns_do_not_depend_on_the_batch_size(small_world):
    torch.manual_seed(0)
    model = cw_vgg().eval()
    images, labels = small_world.tensors()
    fits = [
        FilterPatterns(model, "features.relu4", tau_support=0.3, **{**FAST, "batch_size": b}).fit(
            (images[:12], labels[:12])
        )
        for b in (4, 12)
    ]
    assert fits[0].n_transactions_ == fits[1].n_transactions_
    assert [(r.filters, r.class_id) for r in fits[0].rules_] == [
        (r.filters, r.class_id) for r in fits[1].rules_
    ]
    torch.testing.assert_close(fits[0].filter_scale_, fits[1].filter_scale_)


def test_relevant_patches_are_a_prefix_stopping_below_tau():
    explainer = FilterPatterns(nn.Identity(), patch_size=2, tau_prt=0.1)
    explainer._class_probability = lambda images, targets: torch.tensor(  # type: ignore[method-assign]
        [0.5, 0.45, 0.1, 0.9, 0.85, 0.84]
    )
    corners = torch.zeros(2, 3, 2, dtype=torch.long)
    base = torch.tensor([0.9, 0.88])
    keep = explainer._relevant(
        torch.rand(2, 3, 4, 4), corners, torch.zeros(2, dtype=torch.long), base
    )
    # image 0: changes 0.4, 0.05 -> stop at the 2nd; image 1: 0.02 -> only the first
    assert keep.tolist() == [[True, True, False], [True, False, False]]


def test_hierarchical_mining_on_planted_transactions():
    explainer = FilterPatterns(cw_vgg(), "features.relu4", tau_support=0.5, top_rules=10)
    explainer.class_names_ = [f"c{i}" for i in range(3)]
    rng = np.random.default_rng(0)
    rows, classes = [], []
    for c, planted in ((0, [1, 2]), (1, [2, 3]), (2, [7])):
        for _ in range(40):
            noise = rng.choice(np.arange(10, 60), 2, replace=False).tolist()
            rows.append(planted + noise + [0] * (4 - len(planted)))
            classes.append(c)
    filters, labels = torch.tensor(rows), torch.tensor(classes)
    rules, shared = explainer._mine(filters, labels, n_filters=64)
    found = {(r.filters, r.class_id) for r in rules}
    assert {((1, 2), 0), ((2, 3), 1), ((7,), 2)} <= found
    by_key = {(r.filters, r.class_id): r for r in rules}
    rule = by_key[((2,), 0)]  # filter 2 is in all of classes 0 and 1: confidence 1/2
    assert rule.count == 40 and rule.confidence == pytest.approx(0.5)
    assert rule.lift == pytest.approx(0.5 / (40 / 120)) and rule.support == pytest.approx(40 / 120)
    assert by_key[((1, 2), 0)].confidence == pytest.approx(1.0)
    groups = {(s.filters, s.classes): s.count for s in shared}
    assert groups[((2,), (0, 1))] == 80
    # brute-force check of every rule's statistics on the whole database
    sets = [set(r) for r in rows]
    for r in rules:
        body = [i for i, s in enumerate(sets) if set(r.filters) <= s]
        both = [i for i in body if classes[i] == r.class_id]
        assert r.count == len(both) and r.confidence == pytest.approx(len(both) / len(body))


def test_itemset_caps_bound_the_mining():
    rows = torch.arange(12).repeat(30, 1)  # one class, identical transactions: 2^12 - 1 itemsets
    classes = torch.zeros(30, dtype=torch.long)

    def mine(**caps):
        explainer = FilterPatterns(cw_vgg(), "features.relu4", **caps)
        explainer.class_names_ = ["c0"]
        return explainer._mine(rows, classes, n_filters=64)[0]

    with pytest.raises(ValueError, match="max_itemset_len"):
        mine(max_itemsets=1000)
    rules = mine(max_itemsets=1000, max_itemset_len=2)
    assert rules and max(len(r.filters) for r in rules) <= 2
    with pytest.raises(ValueError, match="max_itemset_len"):
        FilterPatterns(cw_vgg(), "features.relu4", max_itemset_len=0).fit(torch.rand(2, 3, 64, 64))


def test_explainer_contract(small_world):
    images, labels = small_world.tensors()
    model = cw_vgg().eval()
    report = check_explainer(
        lambda: FilterPatterns(model, "features.relu4", tau_support=0.3, **FAST),
        (images[:16], labels[:16]),
        images[16:24],
        onnx_atol=1e-4,
    )
    assert "save_load_same_scores" in report.passed


def test_fitted_state(fitted, tmp_path):
    explainer, images, _ = fitted
    assert explainer.n_transactions_ >= len(images)
    assert explainer.rules_ and len(explainer.concept_names_) == len(explainer.rules_)
    assert explainer.pattern_images_.shape[1:] == (3, 16, 16)
    result = explainer.explain(images[:4])
    assert result.concept_scores.shape == (4, len(explainer.rules_))
    assert result.heatmaps is not None and result.heatmaps.shape[-2:] == (64, 64)
    loaded = FilterPatterns.load(explainer.save(tmp_path / "patterns.pcx"), model=explainer.model)
    assert loaded.rules_ == explainer.rules_ and loaded.shared_ == explainer.shared_
    assert torch.equal(loaded.pattern_images_, explainer.pattern_images_)
    assert explainer.plot() is not None


def test_explain_reads_the_rules_of_the_target_class(fitted, tmp_path, monkeypatch):
    """Plain per-image reading: each rule of the target class scores the mean over its filters
    of peak / fit-time mean peak; its map is the mean of its filters' maps in those units, each
    measured from its fit-time mean (map_reference="mean", relu), resized; the class map sums
    the maps with the positive scores (all of them when none is positive)."""
    explainer, images, _ = fitted
    acts = {}
    layer = explainer.model.features.relu4
    handle = layer.register_forward_hook(lambda _m, _i, o: acts.update(a=o.detach()))
    with torch.no_grad():
        explainer.model(images)
    handle.remove()
    a = acts["a"] / explainer.filter_scale_[None, :, None, None]
    fit_mean = a.mean((0, 2, 3))  # the fit images are these 16
    torch.testing.assert_close(explainer.filter_mean_ / explainer.filter_scale_, fit_mean)
    targets = [r.class_id for r in explainer.rules_][:1] * 4
    out = explainer.explain(images[:4], targets=targets)
    for i, t in enumerate(targets):
        ids = [j for j, r in enumerate(explainer.rules_) if r.class_id == t]
        scores, maps = [], []
        for j in ids:
            f = list(explainer.rules_[j].filters)
            scores.append(float(a[i, f].amax((1, 2)).mean()))
            maps.append(torch.relu(a[i, f] - fit_mean[f, None, None]).mean(0))
        assert out.heatmap_concepts[i, : len(ids)].tolist() == ids
        torch.testing.assert_close(out.concept_scores[i, ids], torch.tensor(scores))
        up = F.interpolate(torch.stack(maps)[None], size=(64, 64), mode="bilinear")[0]
        torch.testing.assert_close(out.heatmaps[i, : len(ids)], up, atol=1e-5, rtol=1e-4)
        w = torch.tensor(scores).clamp_min(0)
        w = w if float(w.sum()) > 0 else torch.ones_like(w)
        want = torch.einsum("q,qhw->hw", w, up)
        torch.testing.assert_close(out.class_maps[i], want, atol=1e-5, rtol=1e-4)
    # a file saved before map_reference measures the maps from 0
    tensors, state = explainer._state()
    with monkeypatch.context() as m:
        old_tensors = {k: v for k, v in tensors.items() if k != "filter_mean"}
        m.setattr(explainer, "_state", lambda: (old_tensors, state))
        path = explainer.save(tmp_path / "old.pcx")
    old = FilterPatterns.load(path, model=explainer.model)
    assert old.map_reference == "zero"
    first = old.explain(images[:1], targets=targets[:1])
    f = list(explainer.rules_[0].filters)
    up = F.interpolate(a[:1, f].mean(1, keepdim=True), size=(64, 64), mode="bilinear")[0, 0]
    torch.testing.assert_close(first.heatmaps[0, 0], up, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="map_reference: expected 'mean' or 'zero'"):
        FilterPatterns(explainer.model, "features.relu4", map_reference="max").fit(images[:2])


def test_ablation_zeroes_the_chosen_filters(fitted):
    explainer, images, labels = fitted
    keep = torch.ones(128, dtype=torch.bool)
    keep[:64] = False
    captured = {}
    layer = explainer.model.features.relu4
    with ablated(explainer.model, "features.relu4", keep), torch.no_grad():
        # registered after the ablation hook, so it sees the ablated output
        handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        explainer.model(images[:2])
        handle.remove()
    assert float(captured["out"][:, :64].abs().sum()) == 0.0
    assert float(captured["out"][:, 64:].abs().sum()) > 0.0
    report = explainer.evaluate((images, labels), n_random=2)
    assert set(report) == {"baseline", "ours", "random", "avg_perturbed", "per_class"}
    assert all(0.0 <= report[k] <= 1.0 for k in ("baseline", "ours", "random"))


def test_errors():
    model = cw_vgg()
    with pytest.raises(NotFittedError):
        FilterPatterns(model, "features.relu4").explain(torch.rand(1, 3, 64, 64))
    data = torch.rand(2, 3, 64, 64)
    with pytest.raises(ValueError, match="patch_size"):
        FilterPatterns(model, "features.relu4", patch_size=65).fit(data)
    with pytest.raises(ValueError, match="tau_support"):
        FilterPatterns(model, "features.relu4", tau_support=2).fit(data)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer"):
        FilterPatterns(model, "features.nope").fit(data)
    found = FilterPatterns(model, patch_size=16, n_candidates=4, n_patches=1).fit(data)
    assert found.layer_ == "features.relu4"  # the model's last feature map, found by itself


@pytest.mark.slow
def test_ground_truth_on_the_trained_vgg(vgg, small_world):
    explainer = FilterPatterns(vgg, batch_size=32).fit(small_world)
    scores = ground_truth_scores(explainer, small_world)
    # rules point at filters that detect their class's defining concepts more often than chance
    assert scores["rules_grounded"] > scores["rules_chance"]
    report = explainer.evaluate(small_world, n_random=3)
    assert report["ours"] < report["random"] <= report["baseline"] + 0.05
    assert list(itertools.islice(explainer.shared_, 1))  # some filter groups are class-shared


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 8), w=st.integers(1, 8),
    size=st.integers(1, 12), extra=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    m=st.integers(1, 5), dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_window_responses_equal_sums_over_the_upsampled_maps(
    b, c, h, w, size, extra, m, dtype, seed
):
    """Oracle: F.interpolate to the image size, then each window summed by slicing."""
    from pyconcepts.explainers.pattern_mining import window_responses

    gen = torch.Generator().manual_seed(seed)
    height, width = size + extra[0], size + extra[1]
    maps = torch.rand(b, c, h, w, generator=gen, dtype=dtype) - 0.3
    ys = torch.randint(0, height - size + 1, (b, m), generator=gen)
    xs = torch.randint(0, width - size + 1, (b, m), generator=gen)
    up = F.interpolate(maps.double(), size=(height, width), mode="bilinear", align_corners=False)
    want = torch.stack([
        torch.stack([up[i, :, y : y + size, x : x + size].sum((1, 2))
                     for y, x in zip(ys[i].tolist(), xs[i].tolist())])
        for i in range(b)
    ])  # fmt: skip
    got = window_responses(maps, torch.stack([ys, xs], -1), size, (height, width))
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * size * size)
