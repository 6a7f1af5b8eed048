"""Stage 2 of AfI: class impressions and MMD concept importance, and the seed's evaluations
on the concept world (editing curves, distillation test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.data.image_sets import ImageSets
from pyconcepts.errors import check_positive_ints
from pyconcepts.explainers.afi.occluders import (
    ValidRange,
    features,
    layer_outputs,
    meta_detector,
    predict,
)
from pyconcepts.inputs import parameter_dtype
from pyconcepts.metrics.afi import mmd2
from pyconcepts.models.features import FeatureExtractor

if TYPE_CHECKING:
    pass


# ---- stage 2: class impressions --------------------------------------------------------------
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference of neighbouring pixels (the β = 2 TV prior) ``[N]``."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).square().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).square().flatten(1).mean(1)
    return dh + dw


def class_impressions(
    model: nn.Module,
    layer: str,
    weights: torch.Tensor,
    image_shape: Sequence[int],
    *,
    steps: int = 200,
    lr: float = 0.05,
    tv_weight: float = 1.0,
    jitter: int = 2,
    valid_range: ValidRange = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """One image per class maximising the mean activation of its meta-detector in ``layer``.

    The seed uses a total-variation penalty as its only natural-image prior; we add random
    jitter (a roll of up to ``jitter`` pixels per step, the usual trick of the cited Inceptionism
    work). Each objective is normalised by the meta-detector's mean activation on the start
    image's scale-free units: ``mean f'(x) / (1 + mean |f'(x₀)|)``, so ``tv_weight`` means the
    same in every layer. Adam on pixels, clipped to ``valid_range`` after every step; all
    classes are optimised together, ``batch_size`` images per forward/backward pass (each
    image's objective is its own, so the passes' gradients add up to the whole batch's).
    Returns ``[K, *image_shape]``.
    """
    k = weights.shape[0]
    gen = torch.Generator().manual_seed(seed)
    lo, hi = valid_range
    device = weights.device
    x = (lo + hi) / 2 + 0.01 * (hi - lo) * torch.randn(k, *image_shape, generator=gen)
    x = x.to(device, parameter_dtype(model)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * (hi - lo))
    model.eval()
    fx = FeatureExtractor(model, [layer], detach=False)
    scale = torch.zeros(k, device=device, dtype=x.dtype)
    for step in range(steps):
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        opt.zero_grad()
        for s in range(0, k, batch_size):
            part = x[s : s + batch_size]
            acts = features(fx, torch.roll(part, shifts=(dy, dx), dims=(2, 3)))[layer]
            own = own_detector(acts, weights[s : s + batch_size])  # image i by detector i
            if step == 0:
                scale[s : s + batch_size] = 1.0 + own.detach().abs()
            loss = (-own / scale[s : s + batch_size] + tv_weight * total_variation(part)).sum()
            loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def own_detector(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean output of image i's own meta-detector i (eq. 9 with the weights of row i): the
    diagonal of :func:`meta_detector`'s ``[N, K, h, w]`` averaged over positions, without
    the N×K maps. ``[N, C, h, w]`` or ``[N, C]`` activations, ``[N, C]`` weights → ``[N]``."""
    a = activations if activations.dim() == 4 else activations[:, :, None, None]
    return torch.einsum("nchw,nc->n", a, weights.to(a.dtype)) / (a.shape[2] * a.shape[3])


def pick_impression_layer(
    model: nn.Module,
    layers: Sequence[str],
    impressions: dict[str, torch.Tensor],
    classes: Sequence[int],
    batch_size: int = 64,
) -> tuple[str, dict[str, float]]:
    """The seed picks, by eye, the first layer where the class concept emerges. We automate it:
    the model classifies each layer's impressions, and the shallowest layer with the highest
    fraction recognised as their class wins. Returns (layer, fraction per layer)."""
    target = torch.tensor([int(c) for c in classes])
    rates: dict[str, float] = {}
    for name in layers:
        pred = predict(model, impressions[name], batch_size).cpu()
        rates[name] = float((pred == target).double().mean())
    best = max(rates.values())
    return next(n for n in layers if rates[n] == best), rates


# ---- stage 2: quantitative concept attribution ----------------------------------------------
def concept_importance(
    model: nn.Module,
    layers: Sequence[str],
    cis: dict[str, torch.Tensor],
    probes: Sequence[torch.Tensor],
    benchmarks: Sequence[torch.Tensor],
    batch_size: int = 64,
    direction: str = "raises",
    max_map_bytes: int = 2**30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMD concept importance (seed §3.2): for each concept m, class k and layer l, the MMD²
    between the flattened meta-detector outputs of ``probes[m]`` (images with the concept) and
    ``benchmarks[m]`` (images without it), Gaussian kernel, median bandwidth. Summed over the
    layers and normalised per class to sum 1 (the seed says "normalised" only).

    ``direction``: ``"raises"`` (default) sums only the layers where the concept raises the
    class's meta-detector more than the fitted classes' mean detector (the mean over probe
    images of the contrasted detector ``Σ_c (w_k^c − mean_j w_j^c)·A_c`` above its mean over
    benchmark images; with one class, the detector itself); ``"any"`` sums every layer, as the
    seed does. Why: MMD² is a distance, so a concept that *lowers* a class's detector — evidence
    against the class — counted as much as one that raises it. Measured on the concept world
    (docs/methods.md, 3 seeds): precision@k of the used concepts 0.69 → 0.75 (cw-vgg) and
    0.82 → 0.82 (cw-resnet), of the defining ones 0.83 → 0.93 and 0.89 → 0.93.

    ``max_map_bytes``: the MMD needs every probe and benchmark image's flattened detector
    output of every layer at once, K × images × (the layers' positions) floats: 300 MiB for
    7 classes and 100 + 100 images on EfficientNet-Lite0's 33 layers at 224 px (56,154
    positions), 41.8 GiB for 1,000 classes. Past this many bytes the classes are taken in
    groups, each group's outputs from its own pass over the images (more passes, the same
    result).

    Returns (importance ``[K, M]``, per-layer MMD² ``[L, K, M]``, all layers).
    """
    if len(probes) != len(benchmarks):
        raise ValueError(
            f"benchmarks: expected one set per probe set ({len(probes)}), got {len(benchmarks)}"
        )
    if direction not in ("raises", "any"):
        raise ValueError(f"direction: expected 'raises' or 'any', got {direction!r}")
    check_positive_ints(max_map_bytes=max_map_bytes)
    k = len(next(iter(cis.values())))
    raw = torch.zeros(len(layers), k, len(probes), dtype=torch.float64)
    raises = torch.ones_like(raw, dtype=torch.bool)
    positions = _positions(model, layers, probes[0][:1]) if len(probes) else 0
    device = next(iter(cis.values())).device
    for m, (pos, neg) in enumerate(zip(probes, benchmarks)):  # one set pair held at a time
        pos, neg = pos.to(device), neg.to(device)
        per_class = (len(pos) + len(neg)) * positions * pos.element_size()
        group = max(1, max_map_bytes // max(1, per_class))
        for lo in range(0, k, group):
            part = {name: w[lo : lo + group] for name, w in cis.items()}
            maps_p, means_p = _detector_outputs(model, layers, part, pos, batch_size)
            maps_n, means_n = _detector_outputs(model, layers, part, neg, batch_size)
            for li, name in enumerate(layers):
                raw[li, lo : lo + group, m] = mmd2(maps_p[name], maps_n[name]).cpu()
                if direction == "raises" and lo == 0:  # eq. 9 is linear: its mean is w_k · the
                    shift = cis[name].double() @ (means_p[name] - means_n[name])  # mean activation
                    raises[li, :, m] = (shift - shift.mean() if k > 1 else shift).cpu() > 0
    total = (raw * raises).sum(0)
    norm = total.sum(1, keepdim=True)
    return total / torch.where(norm > 0, norm, torch.ones_like(norm)), raw


def _positions(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> int:
    """Positions of one image's maps summed over ``layers`` (1 for a dense layer)."""
    with torch.no_grad():
        acts = features(FeatureExtractor(model, list(layers)), example)
    return sum(a[0, 0].numel() if a.dim() == 4 else 1 for a in acts.values())


def _detector_outputs(
    model: nn.Module,
    layers: Sequence[str],
    cis: dict[str, torch.Tensor],
    images: torch.Tensor,
    batch_size: int,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer: every class's meta-detector output of every image, flattened ``[K, N, hw]``,
    and each channel's mean activation over the images and positions (float64 ``[C]``).
    Batch by batch, so only one batch's activations are held at once (before 2026-12-07 every
    layer's activations of the whole set were: ``pyconcepts explain --method afi`` on
    EfficientNet-Lite0's 33 layers, 8 photos and 16 probe sets of 100 + 100 images at 224 px
    peaked at 6.97 GiB resident, 5.10 GiB after, with the same importance)."""
    fx = FeatureExtractor(model, list(layers))
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in fx.names}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for chunk in images.split(batch_size):
            for name, acts in features(fx, chunk).items():
                maps[name].append(meta_detector(acts, cis[name]).flatten(2))
                per_channel = acts.double().transpose(0, 1).flatten(1)  # [C, n·hw]
                sums[name] = sums.get(name, 0) + per_channel.sum(1)
                counts[name] = counts.get(name, 0) + per_channel.shape[1]
    return (
        {name: torch.cat(parts).transpose(0, 1) for name, parts in maps.items()},
        {name: sums[name] / counts[name] for name in sums},
    )


# ---- evaluations on the concept world --------------------------------------------------------
def concept_presence(world: ConceptWorld, batch: int = 256) -> torch.Tensor:
    """Bool ``[N, M]`` ground-truth concept presence of every image of ``world``."""
    return torch.cat(
        [
            world.concept_presence(slice(s, min(len(world), s + batch))).bool()
            for s in range(0, len(world), batch)
        ]
    )


def probe_sets(world: ConceptWorld, n: int, seed: int = 0) -> tuple[ImageSets, ImageSets]:
    """Per concept: up to ``n`` random images showing it and as many random images without it
    (the seed's probe data and "benchmark ones with irrelevant concept tags", from ground
    truth). Returns (probes, benchmarks), image sets in concept order over one rendering of
    the images they draw on (:class:`~pyconcepts.data.image_sets.ImageSets`)."""
    presence = concept_presence(world)
    gen = torch.Generator().manual_seed(seed)
    probes: list[torch.Tensor] = []
    benchmarks: list[torch.Tensor] = []
    for m in range(presence.shape[1]):
        pos = presence[:, m].nonzero().flatten()
        neg = (~presence[:, m]).nonzero().flatten()
        size = min(n, len(pos), len(neg))
        if size < 2:
            raise ValueError(
                f"world: concept {world.concepts[m]!r} needs >= 2 images with and without it, "
                f"got {len(pos)} and {len(neg)}"
            )
        probes.append(pos[torch.randperm(len(pos), generator=gen)[:size]])
        benchmarks.append(neg[torch.randperm(len(neg), generator=gen)[:size]])
    drawn = torch.unique(torch.cat(probes + benchmarks))  # sorted
    images = world.image(drawn)
    return (
        ImageSets(images, [torch.searchsorted(drawn, i) for i in probes]),
        ImageSets(images, [torch.searchsorted(drawn, i) for i in benchmarks]),
    )


def editing_curves(
    model: nn.Module,
    world: ConceptWorld,
    rankings: dict[str, torch.Tensor],
    classes: Sequence[int],
    *,
    n_images: int = 20,
    max_concepts: int = 5,
    n_random: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    """The seed's concept-editing test (Fig. 2) with concept-world renderings.

    For each class, the first ``n_images`` correctly classified images of ``world``; a ranking
    ``[K, M]`` orders the concepts. *Add* (smallest sufficient concepts): re-render each image
    on its own background with only the parts carrying one of the top-j concepts; *remove*
    (smallest destroying concepts): re-render it without those parts. A part (shape + colour +
    texture) is the smallest unit that can be drawn, so adding a concept adds its parts.
    Accuracy (fraction still classified as the class) for j = 0…max_concepts. A "random"
    ranking (mean over ``n_random`` permutations) is added. Returns
    ``{"add": {name: [K, J+1]}, "remove": {...}}``.
    """
    from pyconcepts.data.concept_world import render

    gen = torch.Generator().manual_seed(seed)
    n_concepts = len(world.concepts)
    out: dict[str, dict[str, torch.Tensor]] = {"add": {}, "remove": {}}
    names = [*rankings, "random"]
    for mode in out:
        for name in names:
            out[mode][name] = torch.zeros(len(classes), max_concepts + 1, dtype=torch.float64)
    for k, c in enumerate(classes):
        idx = (world.labels == c).nonzero().flatten()[: 4 * n_images]  # candidates
        idx = idx[predict(model, world.image(idx), 256) == c][:n_images]
        if not len(idx):
            continue
        parts, ids = world.parts[idx], world.concept_ids_of_parts(idx)  # [n,P,7], [n,P,3]
        exists = parts[..., 0] >= 0
        orders = {
            name: torch.argsort(r[k], descending=True, stable=True) for name, r in rankings.items()
        }
        random_orders = [torch.randperm(n_concepts, generator=gen) for _ in range(n_random)]
        for name in names:
            for order in random_orders if name == "random" else [orders[name]]:
                for j in range(max_concepts + 1):
                    carries = (ids[..., None] == order[:j].view(1, 1, 1, -1)).flatten(2).any(2)
                    for mode, keep in (("add", exists & carries), ("remove", exists & ~carries)):
                        edited = parts.clone()
                        edited[~keep] = -1.0
                        images, _ = render(edited, world.backgrounds[idx], world.shape)
                        with torch.no_grad():
                            acc = (model(images).argmax(1) == c).double().mean()
                        out[mode][name][k, j] += acc / (n_random if name == "random" else 1)
    return out


def distillation_test(
    model: nn.Module,
    layers: Sequence[str],
    weights: dict[str, dict[str, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    n_per_class: int = 60,
    epochs: int = 200,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """The seed's distillation test (Table 2): per class a balanced binary set (the class vs.
    the others, all correctly classified by the teacher), represented by the flattened outputs
    of the class's meta-detectors in all ``layers``; a 32-16-2 student is trained on one half
    and tested on the other. ``weights`` maps a method name to its CIS (layer → ``[K, C]``).
    Returns method → test accuracy per class ``[K]``.
    """
    from pyconcepts.metrics.afi import distillation_accuracy

    gen = torch.Generator().manual_seed(seed)
    correct = predict(model, images, batch_size) == labels
    result = {
        name: torch.full((len(classes),), float("nan"), dtype=torch.float64) for name in weights
    }
    for k, c in enumerate(classes):
        pos = (correct & (labels == c)).nonzero().flatten()
        neg = (correct & (labels != c)).nonzero().flatten()
        size = min(n_per_class, len(pos), len(neg))
        if size < 4:
            continue
        pos = pos[torch.randperm(len(pos), generator=gen)[:size]]
        neg = neg[torch.randperm(len(neg), generator=gen)[:size]]
        idx = torch.cat([pos, neg])
        target = torch.cat([torch.ones(size), torch.zeros(size)]).long()
        split = torch.randperm(2 * size, generator=gen)
        train, test = split[:size], split[size:]
        acts = layer_outputs(model, layers, images[idx], batch_size)
        for name, cis in weights.items():
            feats = torch.cat(
                [meta_detector(acts[n], cis[n][k : k + 1]).flatten(1) for n in layers], dim=1
            )
            result[name][k] = distillation_accuracy(
                feats[train], target[train], feats[test], target[test], epochs=epochs, seed=seed
            )
    return result
