"""AfI on the concept world at small sizes, plus its building blocks against oracles."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyconcepts.errors import NotFittedError
from pyconcepts.explainers import afi
from pyconcepts.explainers.afi import AfI
from pyconcepts.explainers.afi.explainer import spread
from pyconcepts.explainers.tcav import gradient_feature_importance, tcav_scores, train_cav

CLASSES = [0, 1, 3]


@pytest.fixture(scope="module")
def world():
    from pyconcepts.data import ConceptWorld

    return ConceptWorld(90, seed=7)


@pytest.fixture(scope="module")
def fitted(vgg, world):
    ex = AfI(vgg, classes=CLASSES, max_iter=2, impression_steps=1, n_probe=4, holdout_fraction=0.25)
    return ex.fit(world)


# ---- the transformation t and occlusion ------------------------------------------------------
def test_transform_without_rotation_adds_bounded_noise():
    x = torch.rand(3, 3, 16, 16)
    y = afi.random_transform(
        x, noise=0.04, max_degrees=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert (y - x).abs().max() <= 0.04 + 1e-6
    assert not torch.equal(x, y)
    same = afi.random_transform(x, noise=0.0, max_degrees=0.0)
    torch.testing.assert_close(same, x)


def test_transform_rotates_and_is_differentiable():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 6:] = 1.0  # a bar to the right of the centre
    y = afi.random_transform(
        x, noise=0.0, max_degrees=5.0, generator=torch.Generator().manual_seed(1)
    )
    assert not torch.allclose(x, y) and abs(float(y.sum() - x.sum())) < 0.5
    inp = torch.rand(2, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda t: afi.random_transform(t, 0.04, 5.0, torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (inp,))


def test_occlude_keeps_inputs_valid():
    x, d = torch.rand(4, 3, 8, 8), torch.randn(3, 8, 8)
    out = afi.occlude(x, d, (0.0, 1.0))
    assert out.min() >= 0 and out.max() <= 1
    inside = ((x - d) >= 0) & ((x - d) <= 1)
    torch.testing.assert_close(out[inside], (x - d)[inside])


# ---- occluders -------------------------------------------------------------------------------
def _class_images(world, classes, n):
    x, y = world.tensors()
    idx = torch.cat([(y == c).nonzero().flatten()[:n] for c in classes])
    return x[idx], y[idx]


def test_batched_occluders_equal_per_class_loop(vgg, small_world):
    x, y = _class_images(small_world, CLASSES, 2)
    kw = dict(max_iter=2, lr=0.02, seed=5)
    batched = afi.fit_occluders(vgg, x, y, CLASSES, **kw)
    looped = afi.fit_occluders(vgg, x, y, CLASSES, batched=False, **kw)
    # the batch's composition changes the convolutions' rounding, which Adam's first steps
    # (each about lr per pixel, whatever the gradient's size) can carry: 1 % of a step
    torch.testing.assert_close(batched.delta, looped.delta, atol=0.01 * kw["lr"], rtol=0)
    assert torch.equal(batched.iterations, looped.iterations)
    assert torch.equal(batched.used, looped.used)
    assert batched.delta.shape == (3, *x.shape[1:]) and bool((batched.iterations <= 2).all())


class _Tiny(nn.Module):
    """Logits (mean of channel 0, 1 − that): class 0 when the mean exceeds ½."""

    def forward(self, x):
        m = x[:, 0].mean((1, 2))
        return torch.stack([m, 1 - m], 1) * 10


class _Fragile(nn.Module):
    """Class 0 only while most pixels of channel 0 are exactly ½: no transformed copy is."""

    def forward(self, x):
        m = (x[:, 0] == 0.5).float().mean((1, 2))
        return torch.stack([m, 1 - m], 1) * 10


@pytest.fixture(scope="module")
def vgg64(vgg):
    import copy

    return copy.deepcopy(vgg).double().eval()


def test_occluder_passes_sum_to_the_whole_batchs_gradient(vgg64, small_world):
    """In float64 the summed passes equal one pass over every image (the rounding of a sum in
    another order is far below Adam's step), and t draws the same copies whatever the split."""
    x, y = _class_images(small_world, CLASSES, 3)
    kw = dict(max_iter=3, lr=0.02, seed=5)
    whole = afi.fit_occluders(vgg64, x.double(), y, CLASSES, batch_size=1000, **kw)
    for size in (1, 2, 5):
        split = afi.fit_occluders(vgg64, x.double(), y, CLASSES, batch_size=size, **kw)
        torch.testing.assert_close(split.delta, whole.delta, atol=1e-9, rtol=0)
        assert torch.equal(split.iterations, whole.iterations)
        assert torch.equal(split.used, whole.used)
    plain = afi.fit_occluders(vgg64, x.double(), y, CLASSES, batch_size=1, use_transform=False,
                              **kw)  # fmt: skip
    again = afi.fit_occluders(vgg64, x.double(), y, CLASSES, batch_size=4, use_transform=False,
                              **kw)  # fmt: skip
    torch.testing.assert_close(plain.delta, again.delta, atol=1e-9, rtol=0)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
            afi.fit_occluders(vgg64, x.double(), y, CLASSES, batch_size=bad)


def test_split_transform_draws_equal_one_draw():
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    x = torch.rand(5, 3, 16, 16)
    u, angle = afi.draw_transform(x.shape, 5.0, gen())
    parts = [afi.apply_transform(x[s : s + 2], u[s : s + 2], angle[s : s + 2], 0.02)
             for s in range(0, 5, 2)]  # fmt: skip
    torch.testing.assert_close(torch.cat(parts), afi.random_transform(x, 0.02, 5.0, gen()))


def test_a_class_whose_images_all_fail_the_transform_keeps_them_with_a_warning():
    x = torch.cat([torch.full((2, 3, 8, 8), 0.5), torch.zeros(2, 3, 8, 8)])
    y = torch.tensor([0, 0, 1, 1])
    with pytest.warns(UserWarning, match=r"classes \[0\]: no fit image keeps its prediction"):
        fit = afi.fit_occluders(_Fragile(), x, y, [0, 1], max_iter=1)
    assert fit.used.tolist() == [True, True, True, True]  # class 1 is stable under t anyway
    plain = afi.fit_occluders(_Fragile(), x, y, [0, 1], max_iter=1, use_transform=False)
    assert plain.used.tolist() == fit.used.tolist()


def test_occluders_stop_when_eq4_holds():
    x = torch.full((5, 3, 8, 8), 0.7) + 0.05 * torch.rand(5, 3, 8, 8)
    y = torch.zeros(5, dtype=torch.long)
    fit = afi.fit_occluders(_Tiny(), x, y, [0], max_iter=500, lr=0.02, l1_weight=1.0)
    assert bool(fit.converged[0]) and 0 < int(fit.iterations[0]) < 500
    assert bool(fit.used.all())
    with torch.no_grad():
        occluded = afi.occlude(x, fit.delta[0], (0.0, 1.0))
        assert bool((_Tiny()(occluded).argmax(1) != 0).all())


# ---- importance scores and meta-detectors ------------------------------------------------------
def test_fis_is_mean_positive_drop(vgg, small_world):
    x, y = _class_images(small_world, [0], 3)
    delta = 0.1 * torch.rand(1, *x.shape[1:])
    fis = afi.importance_scores(vgg, ["features.relu2", "relu_fc1"], x, y, [0], delta)[0]
    with torch.no_grad():
        a = vgg.relu_fc1(vgg.fc1(vgg.flatten(vgg.features(x))))
        b_in = afi.occlude(x, delta[0], (0.0, 1.0))
        b = vgg.relu_fc1(vgg.fc1(vgg.flatten(vgg.features(b_in))))
    torch.testing.assert_close(fis["relu_fc1"][0], (a - b).mean(0).clamp_min(0))
    assert fis["features.relu2"].shape == (1, 32, 32, 32) and bool(
        (fis["features.relu2"] >= 0).all()
    )


def test_importance_scores_stream_batches_and_drop_fis_unless_kept(vgg, vgg64, small_world):
    x, y = _class_images(small_world, [0, 2], 5)
    delta = 0.1 * torch.rand(3, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    layers = ["features.relu2", "relu_fc1"]
    fis = afi.importance_scores(vgg, layers, x, y, [0, 1, 2], delta, batch_size=64)[0]
    fis_1, cis_1 = afi.importance_scores(vgg, layers, x, y, [0, 1, 2], delta, batch_size=1)
    none, cis = afi.importance_scores(vgg, layers, x, y, [0, 1, 2], delta, keep_fis=False)
    assert none == {}
    for name in layers:
        torch.testing.assert_close(fis_1[name], fis[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cis[name], afi.channel_importance(fis[name]))
        torch.testing.assert_close(cis_1[name], cis[name], atol=1e-5, rtol=1e-5)
        assert bool((fis[name][1] == 0).all()) and bool((cis[name][1] == 0).all())  # no images
    with pytest.raises(ValueError, match="images: no image of any requested class"):
        afi.importance_scores(vgg, layers, x, y, [1, 7], delta[:2])
    fis64, cis64 = afi.importance_scores(vgg64, layers, x.double(), y, [0, 1, 2], delta.double())
    for name in layers:  # float64 throughout, the class without images included
        assert fis64[name].dtype == cis64[name].dtype == torch.float64
        torch.testing.assert_close(cis64[name].float(), cis[name], atol=1e-4, rtol=1e-4)


def test_channel_importance_normalised():
    fis = torch.rand(2, 5, 3, 3)
    fis[1] = 0
    w = afi.channel_importance(fis)
    torch.testing.assert_close(w[0], fis[0].sum((1, 2)) / fis[0].sum((1, 2)).max())
    assert float(w[0].max()) == pytest.approx(1.0) and bool((w[1] == 0).all())
    dense = afi.channel_importance(torch.tensor([[1.0, 3.0, 0.0]]))
    torch.testing.assert_close(dense, torch.tensor([[1 / 3, 1.0, 0.0]]))


def test_meta_detector_is_weighted_channel_sum():
    a, w = torch.rand(4, 6, 5, 5), torch.rand(3, 6)
    out = afi.meta_detector(a, w)
    torch.testing.assert_close(out[2, 1], sum(w[1, c] * a[2, c] for c in range(6)))
    assert afi.meta_detector(torch.rand(4, 6), w).shape == (4, 3, 1, 1)
    with pytest.raises(ValueError, match="activations"):
        afi.meta_detector(torch.rand(4, 5, 2, 2), w)
    assert afi.heatmaps(out, (20, 20)).shape == (4, 3, 20, 20)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_own_detector_is_the_diagonal_of_the_meta_detectors(n, c, hw, dense):
    gen = torch.Generator().manual_seed(n * 100 + c * 10 + hw)
    a = torch.rand(n, c, *(() if dense else (hw, hw + 1)), generator=gen, dtype=torch.float64)
    w = torch.rand(n, c, generator=gen, dtype=torch.float64)
    maps = afi.meta_detector(a, w)  # [N, N, h, w]
    expected = torch.stack([maps[i, i].mean() for i in range(n)])
    torch.testing.assert_close(afi.own_detector(a, w), expected)


def test_impression_passes_equal_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(1, 3, 10, 10))
    model = model.double()
    w = torch.rand(3, 4, dtype=torch.float64)
    kw = dict(steps=4, valid_range=(0.0, 1.0), seed=3)
    whole = afi.class_impressions(model, "1", w, (3, 10, 10), batch_size=3, **kw)
    split = afi.class_impressions(model, "1", w, (3, 10, 10), batch_size=1, **kw)
    torch.testing.assert_close(split, whole, atol=1e-9, rtol=0)


def test_class_impressions_valid_and_tv():
    assert float(afi.total_variation(torch.ones(2, 3, 5, 5)).abs().max()) == 0.0
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 12, 12))
    imp = afi.class_impressions(model, "1", torch.rand(2, 4), (3, 12, 12), steps=5)
    assert imp.shape == (2, 3, 12, 12) and imp.min() >= 0 and imp.max() <= 1


def test_tcav_parts():
    gen = torch.Generator().manual_seed(0)
    pos, neg = (
        torch.randn(30, 4, generator=gen) + torch.tensor([3.0, 0, 0, 0]),
        torch.randn(30, 4, generator=gen),
    )
    cav, acc = train_cav(pos, neg, epochs=100)
    assert acc > 0.9 and float(cav[0]) > 0.9 and float(cav.norm()) == pytest.approx(1.0)
    grads = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [2.0, 0, 0, 0]])
    torch.testing.assert_close(
        tcav_scores(grads, cav[None]), torch.tensor([2 / 3], dtype=torch.float64)
    )


# ---- the explainer -----------------------------------------------------------------------------
def test_fit_state(fitted, world):
    k = len(CLASSES)
    assert fitted.delta_.shape == (k, 3, 64, 64)
    assert fitted.layers_ == afi.middle_layers(fitted.model, world.image(slice(0, 1)))
    assert fitted.attack_success_.shape == (k,) and fitted.train_success_.shape == (k,)
    for name in fitted.layers_:
        w = fitted.cis_[name]
        assert w.shape[0] == k and bool(((w >= 0) & (w <= 1)).all())
    assert fitted.concept_importance_.shape == (k, len(world.concepts))
    sums = fitted.concept_importance_.sum(1)
    assert bool(((sums - 1).abs() < 1e-9).all())
    assert fitted.impression_layer_ in fitted.layers_
    assert set(fitted.impressions_) == set(fitted.layers_)


def test_concept_importance_counts_the_layers_where_the_concept_raises_the_detector(fitted, world):
    """Oracle: per layer, the pooled eq. 9 of every class on probe and benchmark images; a
    layer's MMD² counts for (class, concept) when the class's mean shift exceeds the classes'
    mean shift ("raises"), every layer's counts ("any"); each class normalised to sum 1."""
    probes = [world.image(slice(0, 6)), world.image(slice(6, 12))]
    benches = [world.image(slice(12, 18)), world.image(slice(18, 24))]
    model, layers, cis = fitted.model, fitted.layers_, fitted.cis_
    every, raw = afi.concept_importance(model, layers, cis, probes, benches, direction="any")
    raises, raw2 = afi.concept_importance(model, layers, cis, probes, benches)
    torch.testing.assert_close(raw, raw2)
    counted = torch.zeros_like(raw)
    for li, name in enumerate(layers):
        for m in range(len(probes)):
            pooled = []
            for images in (probes[m], benches[m]):
                a = afi.layer_outputs(model, [name], images, 6)[name].double()
                pooled.append(a.flatten(2).mean(2) if a.dim() == 4 else a)  # dense: as it is
            shift = (pooled[0] - pooled[1]).mean(0) @ cis[name].double().t()  # [K]
            counted[li, :, m] = raw[li, :, m] * (shift > shift.mean())
    for got, summed in ((every, raw.sum(0)), (raises, counted.sum(0))):
        norm = summed.sum(1, keepdim=True)
        torch.testing.assert_close(got, summed / torch.where(norm > 0, norm, 1.0))
    assert not torch.equal(every, raises)  # some layer lowers some class's detector here
    with pytest.raises(ValueError, match="direction: expected 'raises' or 'any'"):
        afi.concept_importance(model, layers, cis, probes, benches, direction="lowers")
    # one class per pass (a 1-byte budget) and two per pass give the same scores
    for budget in (1, 2 * 12 * afi.concepts._positions(model, layers, probes[0][:1]) * 4):
        grouped = afi.concept_importance(model, layers, cis, probes, benches, max_map_bytes=budget)
        torch.testing.assert_close(grouped[0], raises)
        torch.testing.assert_close(grouped[1], raw)
    with pytest.raises(ValueError, match="max_map_bytes: expected an int >= 1"):
        afi.concept_importance(model, layers, cis, probes, benches, max_map_bytes=0)


def test_explain_save_load_onnx(fitted, world, tmp_path):
    x = world.image(slice(0, 5))
    targets = torch.tensor([0, 1, 3, 0, 1])
    e = fitted.explain(x, targets=targets)
    assert e.concept_scores.shape == (5, 16) and e.class_maps.shape == (5, 64, 64)
    assert e.heatmaps is None and bool((e.class_maps >= 0).all())
    table = fitted._importance_table()
    torch.testing.assert_close(e.concept_scores, table[targets].float())
    for i, c in enumerate(targets.tolist()):  # the target class's own meta-detector map
        alone = fitted.explain(x[i : i + 1], targets=[c]).class_maps[0]
        torch.testing.assert_close(alone, e.class_map(i))
    path = fitted.save(tmp_path / "afi.pcx")
    loaded = AfI.load(path, model=fitted.model)
    e2 = loaded.explain(x, targets=targets)
    torch.testing.assert_close(e2.class_maps, e.class_maps)
    torch.testing.assert_close(e2.concept_scores, e.concept_scores)
    pytest.importorskip("onnxruntime")
    from pyconcepts.export.onnx import OnnxExplainer

    with torch.no_grad():  # images predicted as fitted classes: the graph explains predictions
        pred = fitted.model(world.image(slice(0, 90))).argmax(1)
    own = world.image(torch.isin(pred, torch.tensor(CLASSES)).nonzero().flatten()[:3])
    want = fitted.explain(own)
    assert float(want.class_maps.amax()) > 0
    served = OnnxExplainer(fitted.export_onnx(tmp_path / "afi.onnx")).explain(own)
    torch.testing.assert_close(served.class_maps, want.class_maps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(served.concept_scores, want.concept_scores)


def _oracle_maps(explainer, layer, x, targets, contrast=True):
    """Eq. 9 by einsum at ``layer`` for the targets' classes, less the mean over the fitted
    classes' detectors (``contrast``), bilinearly upsampled, negatives cut: ``[B, H, W]``."""
    import torch.nn.functional as F

    acts = afi.layer_outputs(explainer.model, [layer], x, 4)[layer]
    maps = torch.einsum("nchw,kc->nkhw", acts, explainer.cis_[layer].float())
    own = maps[torch.arange(len(x)), torch.tensor([CLASSES.index(c) for c in targets])][:, None]
    oracle = own - maps.mean(1, keepdim=True) if contrast else own
    up = F.interpolate(oracle, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return up[:, 0].clamp_min(0)


def test_heatmap_weights_contrast_the_class_detector_with_the_mean_of_all(fitted, world):
    import copy

    x, targets = world.image(slice(0, 4)), [0, 1, 3, 3]
    plain = copy.copy(fitted)
    plain.heatmap_fusion = "single"
    assert plain.heatmap_weights == "cis"  # the default: eq. 9 as it is
    contrasted = copy.copy(plain)
    contrasted.heatmap_weights = "contrast"
    for explainer, contrast in ((contrasted, True), (plain, False)):
        want = _oracle_maps(fitted, fitted.heatmap_layer_, x, targets, contrast)
        got = explainer.explain(x, targets=targets).class_maps
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    plain.heatmap_weights = "mean"
    with pytest.raises(ValueError, match="heatmap_weights: expected 'contrast' or 'cis'"):
        plain.explain(x)


def test_heatmap_fusion_weights_the_map_by_the_layers_agreement(fitted, world):
    """Oracle: the heatmap layer's map times the mean over every spatial middle layer of that
    layer's map scaled to a maximum of 1; class scores are each class's mean eq. 9."""
    import copy

    x, targets = world.image(slice(0, 4)), [0, 1, 3, 3]
    layers = fitted.fusion_layers_
    acts = afi.layer_outputs(fitted.model, fitted.layers_, x[:1], 1)
    assert layers == [n for n in fitted.layers_ if acts[n].dim() == 4] and len(layers) > 1
    assert fitted.heatmap_layer_ in layers
    contrasted = copy.copy(fitted)
    contrasted.heatmap_weights = "contrast"
    for explainer, contrast in ((fitted, False), (contrasted, True)):
        maps = {n: _oracle_maps(fitted, n, x, targets, contrast) for n in layers}
        scaled = [m / m.amax((1, 2), keepdim=True).clamp_min(1e-12) for m in maps.values()]
        want = maps[fitted.heatmap_layer_] * sum(scaled) / len(layers)
        e = explainer.explain(x, targets=targets)
        torch.testing.assert_close(e.class_maps, want, atol=1e-5, rtol=1e-4)
        assert bool((e.class_maps > 0).eq(maps[fitted.heatmap_layer_] > 0).all())  # no holes
    h = afi.layer_outputs(fitted.model, [fitted.heatmap_layer_], x, 4)[fitted.heatmap_layer_]
    class_scores = torch.einsum("nchw,kc->nk", h, fitted.cis_[fitted.heatmap_layer_].float())
    torch.testing.assert_close(e.extras["class_scores"], class_scores / h[0, 0].numel())
    wrong = copy.copy(fitted)
    wrong.heatmap_fusion = "max"
    with pytest.raises(ValueError, match="heatmap_fusion: expected 'agreement' or 'single'"):
        wrong.explain(x)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4),
    st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31 - 1), st.booleans(),
)  # fmt: skip
def test_agreement_weighted_against_a_per_pixel_reading(b, h, w, n_layers, dtype, seed, strided):
    """Plain per-pixel oracle on random maps with all-zero layers (scale 0, not NaN), an empty
    batch and non-contiguous inputs: main × the mean of each layer's map over its maximum."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        m = torch.rand(b, w, h, generator=gen, dtype=torch.float64).to(dtype)
        m = m * (torch.rand(b, 1, 1, generator=gen) < 0.8)  # some images' maps all zero
        return m.transpose(1, 2) if strided else m.transpose(1, 2).contiguous()

    main, layers = draw(), [draw() for _ in range(n_layers)]
    got = afi.agreement_weighted(main, layers)
    assert got.shape == (b, h, w) and got.dtype == dtype
    for i in range(b):
        peaks = [float(m[i].max()) for m in layers]
        for y in range(h):
            for x in range(w):
                mean = sum(float(m[i, y, x]) / p for m, p in zip(layers, peaks) if p > 0)
                want = float(main[i, y, x]) * mean / n_layers
                assert float(got[i, y, x]) == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_one_fitted_class_maps_eq9_weighted_by_the_layers_agreement(vgg, small_world):
    """With one class there is nothing to contrast with: every layer's map is eq. 9 itself,
    and concept importance uses the detector's own shift."""
    import torch.nn.functional as F

    one = AfI(vgg, classes=[0], max_iter=1, impression_steps=0, n_probe=4)
    with pytest.warns(UserWarning, match="has no spatial map") as caught:
        one.fit(small_world)  # the last middle layer is dense: the heatmaps go to a conv layer
    assert caught[0].filename == __file__  # the warning points at the caller's line
    x = small_world.image(slice(0, 3))
    maps = {}
    for layer in one.fusion_layers_:
        acts = afi.layer_outputs(vgg, [layer], x, 3)[layer]
        eq9 = torch.einsum("nchw,c->nhw", acts, one.cis_[layer][0].float())[:, None]
        up = F.interpolate(eq9, size=x.shape[-2:], mode="bilinear", align_corners=False)
        maps[layer] = up[:, 0].clamp_min(0)
    scaled = [m / m.amax((1, 2), keepdim=True).clamp_min(1e-12) for m in maps.values()]
    want = maps[one.heatmap_layer_] * sum(scaled) / len(scaled)
    got = one.explain(x, targets=[0, 0, 0]).class_maps
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert float(got.amax()) > 0
    imp = one.concept_importance_
    assert bool((imp >= 0).all()) and float(imp.sum()) == pytest.approx(1.0)


def test_files_saved_before_fusion_and_direction_load_as_fitted_then(fitted, world):
    import copy

    tensors, state = fitted._state()
    assert fitted.concept_direction_ == "raises"
    del state["fusion_layers_"], state["concept_direction_"]
    old = copy.copy(fitted)
    old.heatmap_weights = "contrast"  # the default then, held in the file's config
    old._set_state(tensors, state)
    assert old.heatmap_fusion == "single" and old.fusion_layers_ == [fitted.heatmap_layer_]
    assert old.concept_direction_ == "any"  # its stored importance is the seed's
    x, targets = world.image(slice(0, 3)), [0, 1, 3]
    want = _oracle_maps(fitted, fitted.heatmap_layer_, x, targets)
    torch.testing.assert_close(old.explain(x, targets=targets).class_maps, want, atol=1e-5,
                               rtol=1e-4)  # fmt: skip


def test_unfitted_target_class_gets_a_zero_map_with_a_warning(fitted, world):
    with pytest.warns(UserWarning, match="not fitted on"):
        e = fitted.explain(world.image(slice(0, 2)), targets=[2, 0])
    assert float(e.class_maps[0].abs().max()) == 0.0 and float(e.concept_scores[0].abs().max()) == 0


def test_valid_range_is_the_data_range_or_refuses_data_outside(vgg, small_world):
    x, y = small_world.tensors()
    with pytest.raises(ValueError, match="valid_range"):
        AfI(vgg, classes=[0], valid_range=(0.0, 0.5), max_iter=1).fit((x, y))
    with pytest.raises(ValueError, match="low < high"):
        AfI(vgg, classes=[0], valid_range=(1.0, 0.0), max_iter=1).fit((x, y))


def test_errors(vgg, small_world):
    with pytest.raises(NotFittedError):
        AfI(vgg).explain(small_world.image(slice(0, 2)))
    with pytest.raises(ValueError, match="labels"):
        AfI(vgg).fit(small_world.image(slice(0, 4)))
    with pytest.raises(ValueError, match="classes"):
        AfI(vgg, classes=[42]).fit(small_world.tensors())
    with pytest.raises(ValueError, match="layer"):
        AfI(vgg, layers=["nope"]).fit(small_world.tensors())
    with pytest.raises(ValueError, match="class_names: expected 10 names, got 2"):
        AfI(vgg, class_names=["a", "b"]).fit(small_world.tensors())


def test_editing_and_distillation(fitted, world):
    curves = afi.editing_curves(
        fitted.model, world, {"afi": fitted.concept_importance_}, CLASSES,
        n_images=2, max_concepts=1, n_random=1,
    )  # fmt: skip
    for mode in ("add", "remove"):
        for name in ("afi", "random"):
            c = curves[mode][name]
            assert c.shape == (3, 2) and bool(((c >= 0) & (c <= 1)).all())
    assert bool((curves["remove"]["afi"][:, 0] >= 0.6).all())  # nothing removed yet
    x, y = world.tensors()
    grad = gradient_feature_importance(
        fitted.model, ["relu_fc1"], x[y == 0][:5], y[y == 0][:5], [0]
    )
    assert grad["relu_fc1"].shape == (1, 256) and bool((grad["relu_fc1"] >= 0).all())
    acc = afi.distillation_test(
        fitted.model,
        ["relu_fc1"],
        {"afi": fitted.cis_},
        x[:80],
        y[:80],
        CLASSES,
        n_per_class=5,
        epochs=5,
    )
    assert acc["afi"].shape == (3,)


@given(st.integers(1, 40), st.integers(1, 12))
def test_spread_keeps_few_layers_and_spaces_many_evenly(n_layers, n):
    names = [f"l{i}" for i in range(n_layers)]
    picked = spread(names, n)
    if n_layers <= n:
        assert picked == names
        return
    assert len(picked) == n == len(set(picked))
    assert picked[-1] == names[-1] and (n == 1 or picked[0] == names[0])
    positions = [names.index(p) for p in picked]
    assert positions == sorted(positions)
    gaps = [b - a for a, b in zip(positions, positions[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1  # as even as whole positions allow


def test_impression_candidates_limit_the_layers_tried(vgg, small_world):
    ex = AfI(vgg, classes=[0, 1], max_iter=1, impression_steps=1, n_probe=4,
             impression_candidates=2).fit(small_world)  # fmt: skip
    assert list(ex.impressions_) == [ex.layers_[0], ex.layers_[-1]]
    assert set(ex.impression_rates_) == set(ex.impressions_)
    assert ex.impression_layer_ in ex.impressions_
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="impression_candidates: expected an int >= 1"):
            AfI(vgg, impression_candidates=bad).fit(small_world)
        with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
            AfI(vgg, batch_size=bad).fit(small_world)


def test_fis_are_kept_only_when_asked(vgg, small_world, tmp_path):
    kw = dict(classes=[0, 1], max_iter=1, impression_steps=0, n_probe=4)
    lean = AfI(vgg, **kw).fit(small_world)
    full = AfI(vgg, keep_fis=True, **kw).fit(small_world)
    assert lean.fis_ == {} and set(full.fis_) == set(full.layers_)
    for name in full.layers_:
        assert torch.equal(lean.cis_[name], full.cis_[name])
        assert torch.equal(full.cis_[name], afi.channel_importance(full.fis_[name]))
    again = AfI.load(full.save(tmp_path / "full.pcx"), model=vgg)
    assert set(again.fis_) == set(full.layers_)
    assert AfI.load(lean.save(tmp_path / "lean.pcx"), model=vgg).fis_ == {}
