"""IBD: concept vectors from masks, class decomposition, exact contributions, heatmaps summing to
the CAM, Grad-CAM mode, persistence, ONNX, and scoring against the concept world's ground truth."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from pyconcepts.data import ConceptWorld
from pyconcepts.errors import NotFittedError
from pyconcepts.explainers.ibd import IBD, decompose
from pyconcepts.models import cw_resnet, cw_vgg
from pyconcepts.ops import greedy_nnls_basis

FAST = {"steps": 15, "mining_rounds": 2}


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(120, seed=11)


@pytest.fixture(scope="module")
def fitted(world: ConceptWorld) -> IBD:
    torch.manual_seed(0)
    return IBD(cw_resnet().eval(), **FAST).fit(world)


def test_constructor_stores_only_and_unfitted_raises() -> None:
    e = IBD(cw_resnet(), n_terms=5)
    assert e.get_config()["n_terms"] == 5 and not e.is_fitted
    with pytest.raises(NotFittedError):
        e.explain(torch.rand(1, 3, 64, 64))


def test_concept_vectors_and_class_decomposition(fitted: IBD, world: ConceptWorld) -> None:
    Q = fitted.concept_vectors_
    assert Q.shape == (16, 128) and fitted.concept_names_ == list(world.concepts)
    assert torch.allclose(Q.norm(dim=1), torch.ones(16), atol=1e-5)
    assert torch.allclose(Q.mean(1), torch.zeros(16), atol=1e-6)
    assert fitted.mode_ == "cam" and fitted.concept_ap_.shape == (16,)
    W = fitted.model.fc.weight.detach()
    L = fitted.metric_
    fit = greedy_nnls_basis(W @ L, Q @ L, 7)
    assert torch.equal(fitted.basis_indices_, fit.indices)
    assert (fitted.basis_coefs_ >= 0).all()
    recon = (fitted.basis_coefs_[:, :, None] * Q[fitted.basis_indices_]).sum(1)
    assert torch.allclose(recon + fitted.residuals_, W, atol=1e-6)
    assert ((fitted.residual_ratio_ >= 0) & (fitted.residual_ratio_ <= 1 + 1e-6)).all()
    edges = fitted.class_concept_graph()
    assert all(s > 0 for _, _, s in edges) and {c for c, _, _ in edges} <= set(fitted.class_names_)


def test_the_logit_metric_is_the_residuals_share_of_the_logits_spread(
    fitted: IBD, world: ConceptWorld
) -> None:
    # oracle: the pooled features of the fit images, their mean and covariance by torch.cov
    with torch.no_grad():
        pooled = fitted.model[:-3](world.image(slice(None))).mean((2, 3)).double()
    assert torch.allclose(fitted.feature_mean_.double(), pooled.mean(0), atol=1e-5)
    cov = torch.cov(pooled.T)
    L = fitted.metric_.double()
    ridge = (L @ L.T - cov).diagonal()
    assert torch.allclose(L @ L.T - torch.diag(ridge), cov, atol=1e-5)
    assert float(ridge.max()) <= 1e-3 * float(cov.diagonal().mean())
    # ratio = rms of the residual's logit contribution over the images / the logit's
    centred = pooled - pooled.mean(0)
    W = fitted.model.fc.weight.detach().double()
    spread = (centred @ fitted.residuals_.double().T).std(0) / (centred @ W.T).std(0)
    assert torch.allclose(fitted.residual_ratio_.double(), spread, rtol=2e-2, atol=1e-3)
    assert float(fitted.residual_ratio_.mean()) < 0.97


def test_the_papers_weight_metric(fitted: IBD, world: ConceptWorld, tmp_path) -> None:
    paper = IBD(fitted.model, basis_metric="weights", **FAST).fit(world)
    assert torch.equal(paper.metric_, torch.eye(128)) and not paper.feature_mean_.any()
    W = fitted.model.fc.weight.detach()
    fit = greedy_nnls_basis(W, paper.concept_vectors_, 7)
    assert torch.equal(paper.basis_indices_, fit.indices)
    assert torch.allclose(paper.residual_ratio_, (paper.residuals_.norm(dim=1) / W.norm(dim=1)))
    result = paper.explain(world.image(slice(0, 4)))
    assert torch.equal(result.extras["bias"], fitted.model.fc.bias.detach()[result.targets])
    with pytest.raises(ValueError, match="basis_metric"):
        IBD(fitted.model, basis_metric="l2").fit(world)
    # a file saved before the basis metric existed loads as the paper's fit it was
    from pyconcepts import persistence

    path = paper.save(tmp_path / "paper.pcx")
    tensors, docs = persistence.load_file(path, kind="explainer")
    del tensors["feature_mean"], tensors["metric"], docs["config"]["basis_metric"]
    del docs["state"]["basis_metric"]
    persistence.save_file(tmp_path / "old.pcx", tensors, kind="explainer", documents=docs)
    old = IBD.load(tmp_path / "old.pcx", model=fitted.model)
    assert old.basis_metric_ == "weights" and fitted.basis_metric_ == "logit"
    assert torch.equal(old.explain(world.image(slice(0, 4))).concept_scores, result.concept_scores)


def test_contributions_sum_to_the_logit_and_heatmaps_to_the_cam(
    fitted: IBD, world: ConceptWorld
) -> None:
    images = world.image(slice(0, 6))
    result = fitted.explain(images)
    logit = result.logits.gather(1, result.targets[:, None])[:, 0]
    ex = result.extras
    total = ex["contributions"].sum(1) + ex["residual_contribution"] + ex["bias"]
    assert torch.allclose(total, logit, atol=1e-4)
    paper = copy.copy(fitted)
    paper.concept_score = "contribution"  # the paper's ranking: the contributions themselves
    by_contribution = paper.explain(images).concept_scores
    total = by_contribution.sum(1) + ex["residual_contribution"] + ex["bias"]
    assert torch.allclose(total, logit, atol=1e-4)
    assert torch.allclose(ex["score"], logit, atol=1e-4)
    # concept heatmaps + residual heatmap = CAM w_k^T (A - ā) (upsampled)
    acts = fitted.model[:-3](images) - fitted.feature_mean_[:, None, None]  # stem .. layer3
    W = fitted.model.fc.weight.detach()[result.targets]
    cam = torch.einsum("bd,bdhw->bhw", W, acts)[:, None]
    cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(ex["cam"], cam, atol=1e-4)
    # each term's map s_i q_i^T A (negative parts cut), their sum's positive part as class map
    q = fitted.concept_vectors_[ex["basis_indices"]] * ex["basis_coefs"][..., None]
    terms = torch.einsum("btd,bdhw->bthw", q, acts)
    terms = F.interpolate(terms, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(result.heatmaps, terms.clamp_min(0), atol=1e-4)
    assert torch.allclose(terms.sum(1) + ex["residual_heatmap"], cam, atol=1e-4)
    assert torch.allclose(result.class_maps, terms.sum(1).clamp_min(0), atol=1e-4)
    used = ex["basis_coefs"] > 0
    assert torch.equal(result.heatmap_concepts[used], ex["basis_indices"][used])
    assert bool((result.heatmap_concepts[~used] == -1).all())
    # a concept's score is the peak of its layer-resolution map s_i q_i^T (A - ā) (with
    # "contribution": the map's mean); zero off-basis
    low = torch.einsum("btd,bdhw->bthw", q, acts)
    for scores, pooled in ((result.concept_scores, low.amax((2, 3))),
                           (by_contribution, low.mean((2, 3)))):  # fmt: skip
        want = torch.zeros_like(scores).scatter_add_(1, ex["basis_indices"], pooled)
        assert torch.allclose(scores, want, atol=1e-4)
        outside = torch.ones_like(scores, dtype=torch.bool)
        outside.scatter_(1, ex["basis_indices"], False)
        assert (scores[outside] == 0).all()
    paper.concept_score = "mean"
    with pytest.raises(ValueError, match="concept_score: expected one of"):
        paper.explain(images)
    fig = result.plot(0, images[0])
    assert 2 <= len(fig.axes) <= 6  # bars, the class map and up to k = 4 concept maps


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3), st.integers(1, 5),
    st.integers(1, 4), st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_decompose_against_a_plain_reading(b, d, h, w, n_concepts, n_terms, seed):
    """Random activations, concept vectors and bases (zero coefficients for unused terms):
    the parts add up to ``w·mean_hw(A) + bias`` with ``w = Σ s_i q_i + r`` (the class score
    the decomposition explains), and each concept's score is its term's peak over the layer's
    cells of ``s_i q_iᵀ(A_hw − ā)`` (``peak``) or its mean (the contribution)."""
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(b, d, h, w, generator=gen, dtype=torch.float64)
    Q = torch.randn(n_concepts, d, generator=gen, dtype=torch.float64)
    mean = torch.randn(d, generator=gen, dtype=torch.float64)
    n_terms = min(n_terms, n_concepts)
    indices = torch.stack([torch.randperm(n_concepts, generator=gen)[:n_terms] for _ in range(b)])
    coefs = torch.rand(b, n_terms, generator=gen, dtype=torch.float64)
    coefs[:, -1] *= float(torch.rand(1, generator=gen) < 0.5)  # sometimes an unused term
    residuals = torch.randn(b, d, generator=gen, dtype=torch.float64)
    bias = torch.randn(b, generator=gen, dtype=torch.float64)
    logits = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    size = (2 * h, 2 * w)
    for peak in (True, False):
        out = dict(zip(IBD.onnx_outputs, decompose(
            acts, logits, Q, mean, indices, coefs, residuals, bias, size, peak,
        )))  # fmt: skip
        for i in range(b):
            weights = residuals[i].clone()
            for t in range(n_terms):
                weights += coefs[i, t] * Q[indices[i, t]]
            score = float(weights @ acts[i].mean((1, 2)) + bias[i])
            parts = out["contributions"][i].sum() + out["residual_contribution"][i]
            assert float(parts + out["bias"][i]) == pytest.approx(score, abs=1e-9)
            assert float(out["score"][i]) == pytest.approx(score, abs=1e-9)
            want = [0.0] * n_concepts
            for t in range(n_terms):
                cells = [
                    float(coefs[i, t] * Q[indices[i, t]] @ (acts[i, :, y, x] - mean))
                    for y in range(h) for x in range(w)
                ]  # fmt: skip
                want[int(indices[i, t])] = max(cells) if peak else sum(cells) / len(cells)
            assert out["concept_scores"][i].tolist() == pytest.approx(want, abs=1e-9)


def test_explain_given_targets(fitted: IBD, world: ConceptWorld) -> None:
    images = world.image(slice(0, 3))
    result = fitted.explain(images, targets=torch.tensor([0, 1, 2]))
    assert result.targets.tolist() == [0, 1, 2]
    assert torch.equal(result.extras["basis_indices"], fitted.basis_indices_[:3])
    with pytest.raises(ValueError, match="targets"):
        fitted.explain(images, targets=torch.tensor([0, 1, 99]))
    # GAP + linear head: the pooled gradient w_k(a) is w_k / (h w), so the per-image Grad-CAM
    # decomposition picks the class basis, with coefficients and score scaled by 1 / (h w)
    per_image = fitted.explain(images, targets=torch.tensor([0, 1, 2]), per_image=True)
    assert torch.equal(per_image.extras["basis_indices"], fitted.basis_indices_[:3])
    hw = 64.0  # layer3 is 8x8 at 64 px
    assert torch.allclose(per_image.extras["basis_coefs"] * hw, fitted.basis_coefs_[:3], atol=1e-5)


def test_gradcam_mode_decomposes_per_image(world: ConceptWorld, tmp_path) -> None:
    torch.manual_seed(0)
    e = IBD(cw_vgg().eval(), layer="features.relu4", max_images=60, **FAST).fit(world)
    assert e.mode_ == "gradcam"  # the VGG head is not linear in pooled features
    assert e.basis_metric_ == "weights"  # "auto": the paper's metric in Grad-CAM mode
    from pyconcepts.attribution.gradcam import grad_cam

    images = world.image(slice(0, 4))
    result = e.explain(images, per_image=True)
    cam = grad_cam(e.model, "features.relu4", images, upsample=False)
    fit = greedy_nnls_basis(cam.weights @ e.metric_, e.concept_vectors_ @ e.metric_, 7)
    assert torch.equal(result.extras["basis_indices"], fit.indices)
    score = (cam.weights * cam.activations.mean((2, 3))).sum(1)  # w_k(a)^T a
    assert torch.allclose(result.extras["score"], score, atol=1e-5)
    # by default the class bases of the mean pooled gradients, explained like CAM mode
    fixed = e.explain(images)
    k = fixed.targets
    assert torch.equal(fixed.extras["basis_indices"], e.basis_indices_[k])
    pooled = cam.activations.mean((2, 3))
    assert torch.allclose(fixed.extras["score"], (e.class_weights_[k] * pooled).sum(1), atol=1e-5)
    pytest.importorskip("onnxruntime")
    from pyconcepts.export import OnnxExplainer

    out = OnnxExplainer(e.export_onnx(tmp_path / "gradcam.onnx")).run(images)
    assert torch.allclose(torch.from_numpy(out["heatmaps"]), fixed.heatmaps, atol=1e-4)
    with pytest.raises(ValueError, match="mode='gradcam'"):
        IBD(cw_vgg().eval(), layer="features.relu4", mode="cam", max_images=20, **FAST).fit(world)


def test_fit_from_tensors_and_batches_equals_fit_from_world(
    fitted: IBD, world: ConceptWorld
) -> None:
    images, masks = world.image(slice(None)), world.concept_masks(slice(None))
    names = list(world.concepts)
    a = IBD(fitted.model, **FAST).fit((images, masks), concept_names=names)
    batches = [
        (images[i : i + 50], world.labels[i : i + 50], masks[i : i + 50]) for i in (0, 50, 100)
    ]
    b = IBD(fitted.model, **FAST).fit(batches, concept_names=names)
    assert torch.allclose(a.concept_vectors_, fitted.concept_vectors_, atol=1e-6)
    assert torch.allclose(b.concept_vectors_, fitted.concept_vectors_, atol=1e-6)


def test_bad_inputs(world: ConceptWorld) -> None:
    model = cw_resnet().eval()
    images, masks = world.image(slice(0, 8)), world.concept_masks(slice(0, 8))
    with pytest.raises(ValueError, match="mode"):
        IBD(model, mode="linear").fit(world)
    with pytest.raises(ValueError, match="masks"):
        IBD(model, **FAST).fit((images, masks[:, :, :32]))
    with pytest.raises(ValueError, match="concept_names"):
        IBD(model, **FAST).fit((images, masks), concept_names=["a"])
    with pytest.raises(ValueError, match="heldout"):
        IBD(model, heldout=1.0).fit(world)
    with pytest.raises(TypeError, match="data"):
        IBD(model, **FAST).fit([images])


def test_save_load_and_onnx(fitted: IBD, world: ConceptWorld, tmp_path) -> None:
    images = world.image(slice(0, 5))
    path = fitted.save(tmp_path / "ibd.pcx")
    loaded = IBD.load(path, model=fitted.model)
    a, b = fitted.explain(images), loaded.explain(images)
    assert torch.equal(a.concept_scores, b.concept_scores) and loaded.mode_ == "cam"
    pytest.importorskip("onnxruntime")
    from pyconcepts.export import OnnxExplainer

    out = OnnxExplainer(fitted.export_onnx(tmp_path / "ibd.onnx")).run(images)
    assert torch.allclose(torch.from_numpy(out["concept_scores"]), a.concept_scores, atol=1e-4)
    assert torch.allclose(torch.from_numpy(out["heatmaps"]), a.heatmaps, atol=1e-4)
    resid = torch.from_numpy(out["residual_heatmap"])
    assert torch.allclose(resid, a.extras["residual_heatmap"], atol=1e-4)


@pytest.mark.slow
def test_ground_truth_on_the_trained_resnet(resnet: torch.nn.Module) -> None:
    """On the trained cw-resnet the concept classifiers beat chance by far and the class bases
    rank defining concepts first well above chance (a random 7-term basis of the 16 concepts
    scores ~0.19 precision@k for the 2-4 defining concepts of a class)."""
    world = ConceptWorld(400, seed=5)
    e = IBD(resnet, steps=30, mining_rounds=3).fit(world)
    assert float(e.concept_ap_.nanmean()) > 0.5
    gt = e.ground_truth_scores(world.class_concept_matrix())
    assert float(gt["mean_precision_at_k"]) > 0.25
    assert float(gt["mean_recall"]) > 0.3
    assert 0 < float(e.residual_ratio_.mean()) <= 1


def test_an_empty_class_basis_is_reported(fitted: IBD) -> None:
    """A class weight vector opposite to every concept vector (in the basis metric L Lᵀ) has an
    all-zero NNLS basis: fit says so instead of leaving all-zero concept maps unexplained."""
    import copy

    e = copy.deepcopy(fitted)
    e.class_weights_ = e.class_weights_.clone()
    away = torch.cholesky_solve(e.concept_vectors_.sum(0)[:, None].double(), e.metric_.double())
    e.class_weights_[0] = -away[:, 0].float()
    with pytest.warns(UserWarning, match=r"1 of \d+ classes .* empty concept basis"):
        e._decompose_classes()
    assert float(e.basis_coefs_[0].abs().sum()) == 0.0
