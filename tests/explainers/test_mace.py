"""MACE: contract (fit → explain → save/load → ONNX), its pieces, pruning, metrics, ground truth."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from pyconcepts.errors import NotFittedError
from pyconcepts.explainers.mace import MACE, PRUNE_RULES, find_tail
from pyconcepts.metrics import saliency
from pyconcepts.models import cw_vgg


@pytest.fixture(scope="module")
def tiny():
    """An untrained cw-vgg and random images: enough to exercise the mechanics quickly."""
    torch.manual_seed(0)
    model = cw_vgg().eval()
    images = torch.rand(40, 3, 64, 64)
    labels = torch.arange(40) % 4
    explainer = MACE(model, layer="features.relu4", n_concepts=3, embedding_sizes=(16, 8),
                     batch_size=20, lr=1e-3, epochs=2)  # fmt: skip
    explainer.fit((images, labels), progress=False)
    return model, images, labels, explainer


def test_constructor_stores_only_and_unfitted_use_raises():
    e = MACE(cw_vgg(), n_concepts=4)
    assert e.get_config()["n_concepts"] == 4 and e.get_config()["lr"] == 1e-4
    with pytest.raises(NotFittedError):
        e.explain(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="negatives"):
        MACE(cw_vgg(), layer="features.relu4", negatives="x").fit(torch.rand(4, 3, 64, 64))
    with pytest.raises(ValueError, match="no layer named"):
        MACE(cw_vgg(), layer="features.nope").fit(torch.rand(4, 3, 64, 64))


def test_tail_maps_the_dense_output_to_the_logits():
    model = cw_vgg().eval()
    x = torch.rand(3, 3, 64, 64)
    z = model.fc1(model.flatten(model.features(x)))
    torch.testing.assert_close(find_tail(model, "fc1")(z), model(x))


def test_explain_shapes_and_relevance(tiny):
    model, images, labels, e = tiny
    out = e.explain(images[:5], targets=labels[:5])  # rows of classes 0-3 are rows 0-3
    k, c = 4, 3  # the classes of the fit data (labels 0-3) are the ones explained
    assert e.classes_ == [0, 1, 2, 3]
    assert out.concept_scores.shape == (5, k * c) and out.heatmaps.shape == (5, c, 64, 64)
    assert out.class_maps.shape == (5, 64, 64) and bool((out.heatmaps >= 0).all())
    rel = out.extras["relevance"]
    assert rel.shape == (5, k, c) and out.extras["embeddings"].shape == (5, k, c, 8)
    # concept_scores = the explained class's relevances less their mean over the fit images
    # (relevance_reference="mean"), zero elsewhere
    reference = e.explain(images, targets=labels).extras["relevance"].mean(0)  # [K, C]
    assert e.relevance_reference == "mean" and float(reference.abs().sum()) > 0
    # heatmaps = the maps measured from their mean over the fit images and positions
    # (map_reference="mean"), at the layer's resolution, then resized
    raw = e.concept_maps_of(images, upsample=False, pruned=False)  # [N, K, C, h, w]
    assert e.map_reference == "mean"
    torch.testing.assert_close(e.head_.map_reference, raw.mean((0, 3, 4)), atol=1e-5, rtol=1e-4)
    low = torch.relu(raw[:5] - raw.mean((0, 3, 4))[None, :, :, None, None])
    maps = F.interpolate(low.flatten(1, 2), size=(64, 64), mode="bilinear", align_corners=False)
    maps = maps.view(5, k, c, 64, 64) * e.head_.active[None, :, :, None, None]
    for i, t in enumerate(out.targets.tolist()):
        centred = rel[i, t] - reference[t]
        torch.testing.assert_close(out.concept_scores[i].view(k, c)[t], centred)
        kept = e.head_.active[t] > 0
        want_ids = torch.where(kept, t * c + torch.arange(c), torch.full((c,), -1))
        assert torch.equal(out.heatmap_concepts[i], want_ids)
        torch.testing.assert_close(out.heatmaps[i], maps[i, t], atol=1e-5, rtol=1e-4)
        weights = centred.clamp_min(0) * kept
        weights = weights if float(weights.sum()) > 0 else kept.float()
        torch.testing.assert_close(
            out.class_maps[i], torch.einsum("c,chw->hw", weights, maps[i, t]), atol=1e-5, rtol=1e-4
        )
        assert float(out.concept_scores[i].view(k, c).abs().sum()) == pytest.approx(
            float(centred.abs().sum()), abs=1e-5
        )
    assert torch.equal(out.logits.argmax(1), model(images[:5]).argmax(1))
    with pytest.raises(ValueError, match="targets"):
        e.explain(images[:2], targets=torch.tensor([0, 99]))
    with pytest.raises(TypeError, match="targets"):
        e.explain(images[:2], targets=torch.tensor([0.0, 1.0]))
    given = e.explain(images[:2], targets=[3, 3])
    assert given.targets.tolist() == [3, 3] and given.concept_scores[:, 9:12].abs().sum() > 0


def test_classes_restrict_what_is_learned_and_other_targets_get_zeros(tiny):
    model, images, labels, _ = tiny
    e = MACE(model, layer="features.relu4", n_concepts=2, embedding_sizes=(8,), classes=[2, 0],
             epochs=1, batch_size=20)  # fmt: skip
    e.fit((images, labels), progress=False)
    assert e.head_.k == 2 and e.concept_names_[0].startswith(e.class_names_[2])
    out = e.explain(images[:2], targets=[0, 2])
    assert out.concept_scores.shape == (2, 4) and out.extras["relevance"].shape == (2, 2, 2)
    with pytest.warns(UserWarning, match="not fitted on"):
        other = e.explain(images[:1], targets=[5])
    assert bool((other.heatmap_concepts == -1).all()) and float(other.class_maps.abs().sum()) == 0


def test_unknown_fit_arguments_are_refused(tiny):
    model, images, labels, _ = tiny
    with pytest.raises(TypeError, match="epochs"):
        MACE(model, layer="features.relu4").fit((images, labels), epochs=3)


def test_activations_are_cached_image_batch_size_images_at_a_time(tiny):
    model, images, labels, _ = tiny
    seen: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    try:
        MACE(model, layer="features.relu4", n_concepts=2, embedding_sizes=(8, 4), epochs=1,
             image_batch_size=16, map_init="random", prune=False).fit(
            (images[:35], labels[:35]), progress=False
        )  # fmt: skip
    finally:
        hook.remove()
    assert [n for n in seen if n > 1] == [16, 16, 3]  # the cache (1-image calls: layer probes)
    for name in ("epochs", "batch_size", "image_batch_size"):
        with pytest.raises(ValueError, match=f"{name}: expected an int >= 1, got 0"):
            MACE(model, layer="features.relu4", **{name: 0}).fit((images, labels))


def test_pruned_concepts_are_reported_and_masked(tiny):
    _, images, labels, _ = tiny
    e = MACE(cw_vgg().eval(), layer="features.relu4", n_concepts=2, embedding_sizes=(8,),
             prune_max_positive=0.0, batch_size=20, epochs=1)  # fmt: skip
    e.fit((images, labels), progress=False)
    assert set(e.pruned_.values()) <= set(PRUNE_RULES)
    active = e.head_.active
    assert int(active.numel() - active.sum()) == len(e.pruned_)
    assert bool((active.sum(1) >= 1).all())  # min_kept: no class loses every concept
    out = e.explain(images[:3])
    gone = (active.flatten() == 0).nonzero().flatten()
    assert not bool(torch.isin(out.heatmap_concepts, gone).any())
    assert float(out.extras["relevance"].flatten(1)[:, gone].abs().sum()) == 0.0
    paper = MACE(cw_vgg().eval(), layer="features.relu4", n_concepts=2, embedding_sizes=(8,),
                 prune_max_positive=0.0, batch_size=20, epochs=1, min_kept=0)  # fmt: skip
    paper.fit((images, labels), progress=False)
    assert int(paper.head_.active.sum()) <= int(active.sum())
    half = MACE(cw_vgg().eval(), layer="features.relu4", n_concepts=5, embedding_sizes=(8,),
                prune_max_positive=0.0, batch_size=20, epochs=1, min_kept=3)  # fmt: skip
    half.fit((images, labels), progress=False)
    assert bool((half.head_.active.sum(1) >= 3).all())
    for bad in (True, 6, -1, 2.0):
        with pytest.raises(ValueError, match="min_kept: expected an int in"):
            MACE(cw_vgg().eval(), n_concepts=5, min_kept=bad).fit((images, labels))


def test_pruning_statistics_stream_in_batches_and_equal_one_pass(tiny):
    """Relevances and map areas summed batch by batch (7 images a batch here) equal one pass
    over all images (a plain reading of rules 1-4's inputs)."""
    _, images, _, explainer = tiny
    feats = explainer._extract(images)[0]
    batch = explainer.batch_size
    explainer.batch_size = 7
    try:
        rel, area = explainer._relevance_and_area(feats)
    finally:
        explainer.batch_size = batch
    with torch.no_grad():
        maps, _, want_rel, _ = explainer.head_(feats)
    want_area = saliency.binarize(maps, explainer.map_threshold).float().mean((3, 4)).mean(0)
    torch.testing.assert_close(rel, want_rel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(area, want_area)
    assert float(area.max()) > 0


def test_save_load_roundtrip(tiny, tmp_path):
    model, images, _, e = tiny
    path = e.save(tmp_path / "mace.pcx")
    loaded = MACE.load(path, model=model)
    a, b = e.explain(images[:4]), loaded.explain(images[:4])
    torch.testing.assert_close(a.concept_scores, b.concept_scores)
    torch.testing.assert_close(a.heatmaps, b.heatmaps)
    assert loaded.pruned_ == e.pruned_


def test_file_saved_before_the_references_explains_with_the_papers_relevance_and_maps(
    tiny, tmp_path, monkeypatch
):
    model, images, labels, e = tiny
    tensors, state = e._state()
    gone = ("head.rel_reference", "head.map_reference")
    without = {k: v for k, v in tensors.items() if k not in gone}
    with monkeypatch.context() as m:  # a file as written before the references existed
        m.setattr(e, "_state", lambda: (without, state))
        path = e.save(tmp_path / "old.pcx")
    old = MACE.load(path, model=model)
    assert old.relevance_reference == "zero" and old.map_reference == "zero"
    out = old.explain(images[:4], targets=labels[:4])
    rel = out.extras["relevance"]
    maps = old.concept_maps_of(images[:4])
    for i, t in enumerate(out.targets.tolist()):
        torch.testing.assert_close(out.concept_scores[i].view(4, 3)[t], rel[i, t])
        torch.testing.assert_close(out.heatmaps[i], maps[i, t], atol=1e-5, rtol=1e-4)
    for name in ("relevance_reference", "map_reference"):
        with pytest.raises(ValueError, match=f"{name}: expected 'mean' or 'zero'"):
            MACE(model, layer="features.relu4", **{name: "median"}).fit(images[:4])
    with pytest.raises(ValueError, match="map_init: expected 'gradient' or 'random'"):
        MACE(model, layer="features.relu4", map_init="zeros").fit(images[:4])


def test_gradient_start_adds_each_classs_mean_gradcam_direction(tiny):
    """With lr 0 the maps' weights stay where they start: the random start plus, for every
    concept of class k, the unit vector of the class's mean Grad-CAM weights, read here from
    one backward pass per image through a hook."""
    model, images, labels, _ = tiny
    kw = dict(layer="features.relu4", n_concepts=3, embedding_sizes=(8,), batch_size=16,
              lr=0.0, epochs=1, prune=False, seed=3)  # fmt: skip
    start = MACE(model, map_init="gradient", **kw).fit((images, labels), progress=False)
    plain = MACE(model, map_init="random", **kw).fit((images, labels), progress=False)
    acts = {}
    handle = model.features.relu4.register_forward_hook(lambda _m, _i, o: acts.update(a=o))
    alpha = []
    for x, y in zip(images, labels.tolist()):
        logit = model(x[None].clone().requires_grad_(True))[0, y]
        (grad,) = torch.autograd.grad(logit, acts["a"])
        alpha.append(grad[0].mean((1, 2)))
    handle.remove()
    alpha = torch.stack(alpha)
    want = torch.stack([F.normalize(alpha[labels == k].mean(0), dim=0) for k in range(4)])
    moved = (start.head_.map_weight - plain.head_.map_weight).detach().view(4, 3, -1)
    torch.testing.assert_close(moved, want[:, None].expand(4, 3, -1), atol=1e-5, rtol=1e-4)
    # a class asked for but absent from the fit data has no direction: its maps start random
    kw["classes"] = [3, 7, 0]
    start = MACE(model, map_init="gradient", **kw).fit((images, labels), progress=False)
    plain = MACE(model, map_init="random", **kw).fit((images, labels), progress=False)
    moved = (start.head_.map_weight - plain.head_.map_weight).detach().view(3, 3, -1)
    torch.testing.assert_close(moved[0], want[3][None].expand(3, -1), atol=1e-5, rtol=1e-4)
    assert float(moved[1].abs().max()) == 0.0
    torch.testing.assert_close(moved[2], want[0][None].expand(3, -1), atol=1e-5, rtol=1e-4)


def test_export_onnx_matches_torch(tiny, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, images, _, e = tiny
    path = e.export_onnx(tmp_path / "mace.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip(e.onnx_outputs, session.run(None, {"images": images[:3].numpy()})))
    scores, maps, rel = outputs["concept_scores"], outputs["heatmaps"], outputs["relevance"]
    out = e.explain(images[:3])
    torch.testing.assert_close(torch.from_numpy(rel), out.extras["relevance"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(maps), out.heatmaps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(scores), out.concept_scores, atol=1e-4, rtol=1e-4)


def test_image_negatives_follow_the_per_image_rule():
    """negatives='image' vs a plain loop: anchor (i,j), positive (i',j), semi-hard negative among
    (i,j'), j' != j, else the farthest of them."""
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(4, 3, 5, dtype=torch.float64), dim=-1)
    e = MACE(cw_vgg(), negatives="image", margin=0.7)
    got = e._triplet(emb)
    b, c, _ = emb.shape
    terms = []
    for i, j, i2 in itertools.product(range(b), range(c), range(b)):
        if i2 == i:
            continue
        d_ap = float(((emb[i, j] - emb[i2, j]) ** 2).sum())
        d_n = [float(((emb[i, j] - emb[i, j2]) ** 2).sum()) for j2 in range(c) if j2 != j]
        farther = [d for d in d_n if d > d_ap]
        d_an = min(farther) if farther else max(d_n)
        terms.append(max(0.0, d_ap - d_an + 0.7))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_metrics_on_known_maps():
    masks = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    masks[:, 0, :4] = True
    masks[:, 1, :, :2] = True
    maps = masks.float()[:, None].repeat(1, 2, 1, 1, 1)  # [N=2, K=2, C=3, H, W] = GT masks
    truth = saliency.ground_truth_score(
        maps, torch.ones(2, 3), masks, torch.tensor([0, 1]),
        torch.tensor([[True, False, False], [True, True, False]]),
    )  # fmt: skip
    assert truth["best_iou"] == [1.0, 1.0] and truth["mean_found"] == 1.0
    a = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    a[..., :2, :] = True
    b = torch.zeros_like(a)
    b[..., :1, :] = True
    assert float(saliency.iou(a, b)) == pytest.approx(0.5)
    clustered = torch.randn(1, 3, 4) * 10 + torch.randn(10, 3, 4) * 0.01  # [10 images, 3, Q]
    assert saliency.stability(clustered)["ratio"] < 0.05


def test_faithfulness_drops_more_when_the_evidence_is_masked():
    class LeftHalf(torch.nn.Module):  # class 0 evidence = brightness of the left half
        def forward(self, x):
            s = x[..., : x.shape[-1] // 2].mean((1, 2, 3)) * 20
            return torch.stack([s, torch.full_like(s, 5.0)], 1)

    images = torch.ones(4, 3, 8, 8)
    left = torch.zeros(4, 1, 8, 8)
    left[..., :4] = 1
    model = LeftHalf()
    drop_left = saliency.faithfulness(model, images, left, torch.zeros(4, dtype=torch.long),
                                      fill="zero")[0.5]["drop"]  # fmt: skip
    drop_right = saliency.faithfulness(model, images, 1 - left, torch.zeros(4, dtype=torch.long),
                                       fill="zero")[0.5]["drop"]  # fmt: skip
    assert drop_left > 0.9 and drop_right == pytest.approx(0.0, abs=1e-6)


def test_resnet_like_model_and_a_model_it_cannot_split():
    from pyconcepts.models import cw_resnet

    torch.manual_seed(0)
    images, labels = torch.rand(12, 3, 64, 64), torch.arange(12) % 3
    e = MACE(cw_resnet().eval(), layer="layer3", n_concepts=2, embedding_sizes=(8,), epochs=1)
    e.fit((images, labels), progress=False)
    # the only dense layer is the classifier: z is its input, not the logits themselves
    assert e.dense_layer_ == "fc:input" and e.explain(images[:2]).heatmaps.shape == (2, 2, 64, 64)

    class Opaque(torch.nn.Module):  # the dense layer is not followed inside a Sequential
        def __init__(self):
            super().__init__()
            self.conv, self.fc1, self.fc2 = (
                torch.nn.Conv2d(3, 4, 3),
                torch.nn.Linear(4, 5),
                torch.nn.Linear(5, 3),
            )

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.conv(x).mean((2, 3)))))

    with pytest.raises(ValueError, match="dense_layer"):
        MACE(Opaque(), layer="conv", n_concepts=2, epochs=1).fit((images, labels), progress=False)


def test_the_shared_explainer_contract():
    from pyconcepts.testing import check_explainer

    torch.manual_seed(0)
    model = cw_vgg().eval()
    images, labels = torch.rand(12, 3, 64, 64), torch.arange(12) % 3
    report = check_explainer(
        lambda: MACE(model, layer="features.relu4", n_concepts=2, embedding_sizes=(8,),
                     finetune_epochs=1),
        (images, labels), images[:4],
    )  # fmt: skip
    assert "fit_is_deterministic_given_the_seed" in report.passed
