"""SRAE on the concept world at small sizes: losses by hand, grouped = per-class training,
the explainer contract, exact x-feature heatmap modules, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from pyconcepts.data import ConceptWorld
from pyconcepts.errors import NotFittedError
from pyconcepts.explainers.srae import SRAE
from pyconcepts.explainers.srae_training import (
    GroupedAutoencoder,
    LossConfig,
    TrainResult,
    class_samples,
    pull_away,
    srae_losses,
    train_grouped,
    validation_faithfulness,
)
from pyconcepts.models import cw_vgg

TINY = {"hidden": (16, 8), "n_features": 3, "epochs": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(96, seed=11)


@pytest.fixture(scope="module")
def vgg() -> torch.nn.Module:
    """An untrained, seeded cw-vgg: the mechanics need no trained model (and no zoo cache)."""
    torch.manual_seed(0)
    return cw_vgg().eval()


@pytest.fixture(scope="module")
def fitted(vgg, world):
    return SRAE(vgg, classes=[0, 1, 3], **TINY).fit(world.tensors(), progress=False)


def test_losses_match_the_formula_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    ae = GroupedAutoencoder(2, 4, (5,), 3, generator=gen).double()
    z = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    target = torch.randn(2, 6, dtype=torch.float64, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=torch.float64)
    weight = torch.tensor([[3, 1, 1, 1, 1, 1], [1, 1, 2, 1, 1, 1]], dtype=torch.float64)
    cfg = LossConfig(beta=0.7, q=5.0, eta=0.3, lambda1=0.01, lambda2=0.02, lambda3=0.03)
    got = {k: v.detach() for k, v in srae_losses(ae, z, target, mask, weight, cfg).items()}
    ae.requires_grad_(False)
    for k in range(2):
        rows = mask[k].bool()
        w1, b1 = ae.encoder_weights[0][k], ae.encoder_biases[0][k]
        w2, b2 = ae.encoder_weights[1][k], ae.encoder_biases[1][k]
        e = torch.relu(z[rows] @ w1 + b1) @ w2 + b2
        approx = e @ ae.readout_weight[k] + ae.readout_bias[k]
        w = weight[k][rows]
        faith = (w * (approx - target[k][rows]) ** 2).sum() / w.sum()
        recon = e @ ae.decoder_weight[k] + ae.decoder_bias[k]
        q_d = ((recon - z[rows]) ** 2).mean(0)
        sparse = 0.7 * torch.log(1 + 5.0 * q_d).mean()
        pt = 0.0
        for a in range(3):
            for b in range(3):
                if a != b:
                    pt += (
                        float((e[:, a] @ e[:, b] / (e[:, a].norm() * e[:, b].norm())).detach()) ** 2
                    )
        pt = 0.3 * pt / 6
        reg = (
            0.01 * (w1.pow(2).sum() + w2.pow(2).sum())
            + 0.02 * ae.decoder_weight[k].pow(2).sum()
            + 0.03 * ae.readout_weight[k].pow(2).sum()
        )
        assert float(got["faithfulness"][k]) == pytest.approx(float(faith), rel=1e-10)
        assert float(got["reconstruction"][k]) == pytest.approx(float(sparse), rel=1e-10)
        assert float(got["orthogonality"][k]) == pytest.approx(pt, rel=1e-10)
        assert float(got["per_group"][k]) == pytest.approx(float(faith + sparse + reg) + pt)


def test_pull_away_is_zero_for_orthogonal_and_one_for_parallel_features() -> None:
    ones = torch.ones(1, 4)
    orth = torch.eye(4)[None, :, :3]
    par = torch.ones(1, 4, 3)
    assert float(pull_away(orth, ones)) == pytest.approx(0.0)
    assert float(pull_away(par, ones)) == pytest.approx(1.0)


def test_variants_use_their_terms() -> None:
    gen = torch.Generator().manual_seed(1)
    ae = GroupedAutoencoder(1, 4, (5,), 2, generator=gen)
    z, t = torch.randn(8, 4, generator=gen), torch.randn(1, 8, generator=gen)
    m = torch.ones(1, 8)
    nn_ = srae_losses(ae, z, t, m, m, LossConfig(variant="nn"))
    assert float(nn_["reconstruction"]) == 0 and float(nn_["orthogonality"]) == 0
    cae = srae_losses(ae, z, t, m, m, LossConfig(variant="cae"))
    cae["total"].backward()
    # CAE: faithfulness trains the read-out only, never the encoder.
    enc_grad = ae.encoder_weights[0].grad.clone()
    ae.zero_grad()
    recon_only = srae_losses(ae, z, t, m, m, LossConfig(variant="cae"))["reconstruction"].sum()
    (recon_only + cae["regularisation"].sum().detach() * 0).backward()
    reg = 2 * 1e-4 * ae.encoder_weights[0].detach()
    torch.testing.assert_close(enc_grad, ae.encoder_weights[0].grad + reg)
    with pytest.raises(ValueError, match="variant"):
        LossConfig(variant="pca")


def test_grouped_training_equals_a_loop_of_per_class_trainings() -> None:
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(50, 6, generator=gen)
    labels = torch.randint(0, 3, (50,), generator=gen)
    target = torch.randn(3, 50, generator=gen)
    mask, weight = class_samples(labels, [0, 1, 2], 10, 20, None, torch.Generator().manual_seed(0))
    grouped = GroupedAutoencoder(3, 6, (7, 4), 2, generator=torch.Generator().manual_seed(3))
    singles = [grouped.group(k) for k in range(3)]
    cfg = LossConfig()
    train_grouped(grouped, z, target, mask, weight, None, cfg, epochs=3, batch_size=16,
                  generator=torch.Generator().manual_seed(4), progress=False)  # fmt: skip
    for k, single in enumerate(singles):
        train_grouped(single, z, target[k : k + 1], mask[k : k + 1], weight[k : k + 1], None,
                      cfg, epochs=3, batch_size=16, generator=torch.Generator().manual_seed(4),
                      progress=False)  # fmt: skip
        for (_, a), (_, b) in zip(grouped.group(k).named_parameters(), single.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_class_samples_caps_and_balances() -> None:
    labels = torch.tensor([0] * 5 + [1] * 15)
    mask, weight = class_samples(labels, [0, 1], 3, 8, None, torch.Generator().manual_seed(0))
    assert mask[0, :5].sum() == 3 and mask[0, 5:].sum() == 8
    assert float(weight[0, :5].max()) == pytest.approx(8 / 3)
    assert float(weight[1, 5:].max()) == pytest.approx(5 / 3)  # 3 positives vs 5 negatives
    _, weight = class_samples(labels, [1], None, None, None)
    assert float(weight.max()) == 1.0  # more positives than negatives: never down-weighted


def test_early_stopping_restores_the_best_validation_weights() -> None:
    gen = torch.Generator().manual_seed(5)
    z, target = torch.randn(40, 5, generator=gen), torch.randn(2, 40, generator=gen)
    mask = torch.ones(2, 40)
    ae = GroupedAutoencoder(2, 5, (6,), 2, generator=gen)
    val = (z[:10], target[:, :10], mask[:, :10], mask[:, :10])
    res = train_grouped(ae, z[10:], target[:, 10:], mask[:, 10:], mask[:, 10:], val,
                        LossConfig(), epochs=30, batch_size=8, lr=0.05, patience=2,
                        generator=gen, progress=False)  # fmt: skip
    torch.testing.assert_close(validation_faithfulness(ae, *val), _own_best(res, 2).float())
    assert res.epochs_run <= 30


def _own_best(res: TrainResult, patience: int) -> torch.Tensor:
    """Plain reading of per-group early stopping: each group's best validation score up to
    the epoch where it first went ``patience`` epochs without improving."""
    out = []
    for g in range(len(res.best_epoch)):
        best, stale = math.inf, 0
        for row in res.val_faithfulness:
            if row[g] < best:
                best, stale = row[g], 0
            else:
                stale += 1
            if stale >= patience:
                break
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


def test_training_in_class_parts_equals_training_all_at_once() -> None:
    """Parts of 1, 2 and all groups, here or through a map: the same weights, best epochs and
    histories (float64), with groups stopping early at different epochs."""
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(3, 60, generator=gen, dtype=torch.float64)
    mask = torch.ones(3, 60, dtype=torch.float64)
    val = (z[:12], target[:, :12], mask[:, :12], mask[:, :12])
    start = GroupedAutoencoder(3, 5, (6,), 2, generator=gen).double()

    def backwards(fn, calls):  # a map that runs the parts last first
        return [fn(*args) for args in reversed(calls)][::-1]

    results, models = [], []
    for parts, map_parts in ((None, None), (1, None), (2, None), (1, backwards)):
        ae = start.part(0, 3)
        res = train_grouped(ae, z[12:], target[:, 12:], mask[:, 12:], mask[:, 12:], val,
                            LossConfig(), epochs=25, batch_size=8, lr=0.05, patience=2,
                            generator=torch.Generator().manual_seed(7), progress=False,
                            class_batch_size=parts, map_parts=map_parts)  # fmt: skip
        results.append(res)
        models.append(ae)
    assert len(set(results[0].best_epoch)) > 1  # the groups stopped at different epochs
    rng = torch.random.get_rng_state()
    part = start.part(1, 3)
    assert torch.equal(torch.random.get_rng_state(), rng)  # copying draws nothing
    assert part.encoder_weights[0].dtype == torch.float64
    torch.testing.assert_close(part.encoder_weights[0], start.encoder_weights[0][1:3])
    torch.testing.assert_close(validation_faithfulness(models[0], *val), _own_best(results[0], 2))
    for res, ae in zip(results[1:], models[1:]):
        for (_, a), (_, b) in zip(models[0].named_parameters(), ae.named_parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert res.best_epoch == results[0].best_epoch
        assert res.epochs_run == results[0].epochs_run
        np.testing.assert_allclose(res.val_faithfulness, results[0].val_faithfulness, rtol=1e-9)
    none = GroupedAutoencoder(0, 5, (6,), 2).double()  # no class: nothing to train
    res = train_grouped(none, z, target[:0], mask[:0], mask[:0], None, LossConfig(), epochs=2,
                        progress=False)  # fmt: skip
    assert (res.train_loss, res.best_epoch, res.epochs_run) == ([], [], 0)
    with pytest.raises(ValueError, match="class_batch_size"):
        train_grouped(start, z, target, mask, mask, None, LossConfig(), epochs=1,
                      class_batch_size=0, progress=False)  # fmt: skip


def test_contract_fit_explain_save_load_onnx(fitted, world, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    images = world.image(slice(0, 4))
    targets = torch.tensor([0, 1, 3, 0])
    result = fitted.explain(images, targets=targets)
    n, k = fitted.n_features, len(fitted.classes_)
    assert result.concept_scores.shape == (4, k * n) and result.heatmaps.shape == (4, n, 64, 64)
    assert result.concept_names[:n] == [f"{fitted.class_names_[fitted.classes_[0]]}/x{i + 1}"
                                        for i in range(n)]  # fmt: skip
    sums = result.heatmaps.flatten(2).sum(-1)
    assert bool(((sums - 1).abs() < 1e-4).logical_or(sums == 0).all())
    # concept scores are the contributions v_i E_i of the target's row: with the read-out bias
    # they give ȳ; the heatmap columns name that row's x-features
    rows = torch.tensor([fitted.classes_.index(int(t)) for t in targets])
    own = result.concept_scores.view(4, k, n)[torch.arange(4), rows]
    assert float(result.concept_scores.abs().sum()) == pytest.approx(float(own.abs().sum()))
    approx = own.sum(1) + fitted.autoencoder_.readout_bias.detach()[rows]
    torch.testing.assert_close(approx, result.extras["approximation"])
    assert torch.equal(result.heatmap_concepts, rows[:, None] * n + torch.arange(n))
    assert result.extras["x_features"].shape == (4, n)
    assert result.extras["logit_heatmap"].shape == (4, 64, 64)
    loaded = SRAE.load(fitted.save(tmp_path / "srae.pcx"), model=fitted.model)
    again = loaded.explain(images, targets=targets, heatmaps=False)
    torch.testing.assert_close(again.concept_scores, result.concept_scores)
    assert again.heatmaps is None and "logit_heatmap" not in again.extras
    path = fitted.export_onnx(tmp_path / "srae.onnx")
    raw = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    outputs = dict(zip(fitted.onnx_outputs, raw))
    predicted = fitted.explain(images)
    np.testing.assert_allclose(outputs["heatmaps"], predicted.heatmaps.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        outputs["concept_scores"], predicted.concept_scores.numpy(), atol=1e-4
    )
    z, ref_logits, _, _ = fitted.features(images)
    ref_e, _ = fitted.transform(z)
    pred_rows = [fitted.classes_.index(int(t)) if int(t) in fitted.classes_ else None
                 for t in ref_logits.argmax(1)]  # fmt: skip
    np.testing.assert_allclose(outputs["logits"], ref_logits.numpy(), atol=1e-4)
    for i, r in enumerate(pred_rows):
        want_e = ref_e[r, i] if r is not None else torch.zeros(n)
        np.testing.assert_allclose(outputs["x_features"][i], want_e.numpy(), atol=1e-4)


def check_option_history(
    fitted: SRAE, world: ConceptWorld, marker: str, option: str, bad: tuple, message: str
) -> None:
    """A file saved before ``option`` (its state lacks ``marker``) loads with the option at 0,
    what it was fitted with; each ``bad`` value is refused at fit, naming the option."""
    import copy

    tensors, state = fitted._state()
    del state[marker]
    old = copy.copy(fitted)
    old._set_state(tensors, state)
    assert getattr(old, option) == 0.0
    for value in bad:
        with pytest.raises(ValueError, match=f"{option}: {message}"):
            SRAE(fitted.model, **{option: value}, **TINY).fit(world.tensors(), progress=False)


def test_heatmaps_are_the_smoothed_c_mwp_maps(fitted, world) -> None:
    """Default: each x-feature's and the logit's c-MWP blurred by a Gaussian of 1/64 of the
    image side (1 px here), renormalised; 0 keeps the raw c-MWP; files saved before the option
    load with the raw maps they were fitted with; bad values are refused at fit."""
    import copy

    from pyconcepts.attribution.excitation import excitation_backprop
    from pyconcepts.explainers.layout import smooth
    from pyconcepts.explainers.srae import normalise_maps

    images, cls = world.image(slice(0, 3)), fitted.classes_[1]
    targets = torch.tensor([cls] * 3)
    assert fitted.heatmap_smoothing == pytest.approx(1 / 64)
    raw = excitation_backprop(fitted.x_feature_module(cls), images,
                              list(range(fitted.n_features)), size=(64, 64))  # fmt: skip
    logit = excitation_backprop(fitted.model, images, targets, size=(64, 64))
    plain = copy.copy(fitted)
    plain.heatmap_smoothing = 0.0
    for explainer, sigma in ((fitted, 1.0), (plain, 0.0)):
        got = explainer.explain(images, targets=targets)
        torch.testing.assert_close(got.heatmaps, normalise_maps(smooth(raw, sigma)), atol=1e-6,
                                   rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(got.extras["logit_heatmap"],
                                   normalise_maps(smooth(logit, sigma))[:, 0], atol=1e-6,
                                   rtol=1e-4)  # fmt: skip
    check_option_history(fitted, world, "heatmaps_smoothed", "heatmap_smoothing",
                         (-0.1, 0.5, "1px", True), "expected a fraction")  # fmt: skip


def test_class_map_mixes_the_x_feature_map_with_the_logit_map(fitted, world) -> None:
    """Default: half the x-features' contribution-weighted map, half the logit's c-MWP map,
    each scaled to peak 1 (read from the explanation's own outputs); 0 gives the x-feature map
    alone; an unexplained image's map stays 0; files saved before the option load with 0; bad
    values are refused; the ONNX graph gives the same class maps."""
    import copy

    images = world.image(slice(0, 4))
    targets = torch.tensor([0, 1, 3, 2])  # class 2 is not explained
    assert fitted.logit_map_weight == 0.5
    with pytest.warns(UserWarning):
        got = fitted.explain(images, targets=targets)
    contributions = got.concept_scores.gather(1, got.heatmap_concepts.clamp_min(0))
    features = torch.einsum("bc,bchw->bhw", contributions.clamp_min(0), got.heatmaps)

    def peak(m: torch.Tensor) -> torch.Tensor:
        top = m.flatten(1).amax(1)[:, None, None]
        return m / torch.where(top > 0, top, torch.ones_like(top))

    want = 0.5 * peak(features) + 0.5 * peak(got.extras["logit_heatmap"])
    want[3] = 0
    torch.testing.assert_close(got.class_maps, want, atol=1e-6, rtol=1e-5)
    assert float(got.class_maps[:3].flatten(1).amax(1).min()) > 0
    alone = copy.copy(fitted)
    alone.logit_map_weight = 0.0
    with pytest.warns(UserWarning):
        plain = alone.explain(images, targets=targets)
    torch.testing.assert_close(plain.class_maps[:3], features[:3], atol=1e-6, rtol=1e-5)
    check_option_history(fitted, world, "class_map_with_logit", "logit_map_weight",
                         (-0.1, 1.5, "half", True), "expected a number in")  # fmt: skip


def test_onnx_class_maps_match_explain(fitted, world, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    images = world.image(slice(0, 6))
    path = fitted.export_onnx(tmp_path / "srae.onnx")
    raw = ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})
    outputs = dict(zip(fitted.onnx_outputs, raw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predictions outside the explained classes
        want = fitted.explain(images).class_maps
    np.testing.assert_allclose(outputs["class_maps"], want.numpy(), atol=1e-5)


def test_x_feature_module_is_exact(fitted, world) -> None:
    images = world.image(slice(0, 3))
    z, _, _, _ = fitted.features(images)
    e, _ = fitted.transform(z)
    with torch.no_grad():
        direct = fitted.x_feature_module(1)(images)
    torch.testing.assert_close(direct, e[1], rtol=1e-4, atol=1e-4)


def test_faithfulness_training_reduces_the_error(vgg, world) -> None:
    ex = SRAE(vgg, classes=[2], **{**TINY, "epochs": 6}, lr=3e-3, val_fraction=0.0)
    ex.fit(world.tensors(), progress=False)
    first, last = ex.history_.train_loss[0][0], ex.history_.train_loss[-1][0]
    assert math.isfinite(last) and last < first


def test_errors(vgg, fitted, world) -> None:
    with pytest.raises(NotFittedError):
        SRAE(vgg).explain(world.image(slice(0, 1)))
    with pytest.raises(ValueError, match="classes"):
        SRAE(vgg, classes=[12], **TINY).fit(world.tensors(), progress=False)
    with pytest.warns(UserWarning, match="not fitted on"):
        other = fitted.explain(world.image(slice(0, 1)), targets=torch.tensor([5]))
    assert float(other.concept_scores.abs().sum()) == 0 and float(other.heatmaps.sum()) == 0
    with pytest.raises(TypeError, match="epochs"):
        SRAE(vgg, **TINY).fit(world.tensors(), epochs=3)
    with pytest.raises(ValueError, match="layer"):
        SRAE(vgg, layer="fc9", **TINY).fit(world.tensors(), progress=False)
    for name in ("batch_size", "image_batch_size", "class_batch_size"):
        with pytest.raises(ValueError, match=f"{name}: expected an int >= 1, got 0"):
            SRAE(vgg, **{**TINY, name: 0}).fit(world.tensors(), progress=False)


def test_features_are_read_image_batch_size_images_at_a_time(fitted, world) -> None:
    images = world.image(slice(0, 7))
    seen: list[int] = []
    hook = fitted.model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    try:
        z, logits, _, _ = fitted.features(images)
        z3, logits3, _, _ = fitted.features(images, batch_size=3)
    finally:
        hook.remove()
    assert seen == [min(7, fitted.image_batch_size), 3, 3, 1]
    torch.testing.assert_close(z3, z)
    torch.testing.assert_close(logits3, logits)


def test_check_explainer_contract(vgg, world) -> None:
    pytest.importorskip("onnxruntime")
    from pyconcepts.testing import check_explainer

    report = check_explainer(
        lambda: SRAE(vgg, **{**TINY, "epochs": 1}),
        world.tensors(),
        world.image(slice(0, 4)),
    )
    assert "onnx_batch_1_heatmaps" in report.passed


def test_fit_in_class_parts_learns_what_one_part_learns(fitted, vgg, world) -> None:
    parts = SRAE(vgg, classes=[0, 1, 3], class_batch_size=2, **TINY)
    parts.fit(world.tensors(), progress=False)
    assert parts.history_.best_epoch == fitted.history_.best_epoch
    for (name, a), (_, b) in zip(
        parts.autoencoder_.named_parameters(), fitted.autoencoder_.named_parameters()
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_onnx_export_of_a_model_ending_in_global_average_pooling(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4),
    ).eval()  # fmt: skip
    images, labels = torch.rand(48, 3, 12, 12), torch.arange(48) % 4
    srae = SRAE(model, layer="5", **TINY).fit((images, labels), progress=False)
    path = srae.export_onnx(tmp_path / "gap.onnx")
    raw = ort.InferenceSession(str(path)).run(None, {"images": images[:5].numpy()})
    outputs = dict(zip(srae.onnx_outputs, raw))
    want = srae.explain(images[:5])
    np.testing.assert_allclose(outputs["class_maps"], want.class_maps.numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs["concept_scores"], want.concept_scores.numpy(), atol=1e-5)
