"""AfI — Attacking for Interpretability (Wu et al., CVPR 2020), global concept attribution.

Stage 1 (feature attribution): per class y, a *global feature occluder* δ is learned with Adam so
that ``x − δ`` and ``t(x − δ)`` are no longer classified y for every image of the class (seed
eqs. 4–5); the mean drop of every neuron's activation, negatives zeroed, is its feature
importance score (FIS, eqs. 6–7). Stage 2 (concept attribution): FIS summed per feature map and
normalised to [0, 1] give channel importance scores (CIS, eq. 8); ``Σ_c w_c·A_c`` is the class's
meta-detector in each layer (eq. 9). Class impressions maximise a meta-detector's total
activation; MMD between meta-detector outputs of probe images with a concept and a benchmark set
without it, summed over layers and normalised, is the concept's importance to the class.

The functions below are the method's steps on any torch classifier; :class:`AfI` strings them
together as a ``ConceptExplainer``. Every choice the seed leaves open is a parameter whose
default is documented here and in ``docs/methods.md`` (section AfI).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from pyconcepts.data.batches import iter_batches
from pyconcepts.data.concept_world import ConceptWorld
from pyconcepts.explainers.base import ConceptExplainer, class_names_of
from pyconcepts.explainers.layout import (
    explained_classes,
    resolve_targets,
    upsample,
    warn_unexplained,
)
from pyconcepts.explanation import Explanation, displayable
from pyconcepts.metrics.afi import attack_success_rate, mmd2
from pyconcepts.models.features import FeatureExtractor

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ValidRange = tuple[float, float]


# ---- the transformation t ---------------------------------------------------------------------
def random_transform(
    x: torch.Tensor,
    noise: float = 0.04,
    max_degrees: float = 5.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The seed's t: add uniform noise in [−noise, noise], then rotate by a uniform angle in
    [−max_degrees, max_degrees] about the image centre; differentiable and batched (one draw per
    image). Rotation resamples bilinearly with border padding so that no black corners appear —
    t must not change clean predictions (eq. 4, third condition). Random draws come from
    ``generator`` (CPU) so results are reproducible.
    """
    n = x.shape[0]
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    angle = torch.rand(n, generator=generator, dtype=x.dtype).to(x.device)
    angle = (angle * 2 - 1) * math.radians(max_degrees)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(
        x + (u * 2 - 1) * noise, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def occlude(x: torch.Tensor, delta: torch.Tensor, valid_range: ValidRange) -> torch.Tensor:
    """``x − δ`` clipped to the valid input range (eq. 4's last constraint holds by design)."""
    return (x - delta).clamp(valid_range[0], valid_range[1])


# ---- activations ------------------------------------------------------------------------------
def middle_layers(model: nn.Module) -> list[str]:
    """Default "middle layers": the output of every ReLU module, in registration order.

    Post-activation maps are non-negative, so a CIS-weighted sum of them is a detector; for the
    zoo models these are the conv blocks and the hidden dense layer (the seed's fc6 analogue).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if not names:
        raise ValueError("layers: the model has no ReLU modules; pass layer names explicitly")
    return names


def features(fx: FeatureExtractor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``fx(x)`` with its type narrowed (layer name → activation)."""
    return cast("dict[str, torch.Tensor]", fx(x))


def features_and_logits(
    fx: FeatureExtractor, x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``fx(x, return_output=True)`` with its type narrowed: (activations, model output)."""
    return cast("tuple[dict[str, torch.Tensor], torch.Tensor]", fx(x, return_output=True))


def layer_outputs(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for ``x``, in batches, without gradients."""
    fx = FeatureExtractor(model, list(layers))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in fx.names}
    with torch.no_grad():
        for chunk in x.split(batch_size):
            for name, a in features(fx, chunk).items():
                parts[name].append(a)
    return {name: torch.cat(v) for name, v in parts.items()}


# ---- stage 1: global feature occluders --------------------------------------------------------
@dataclass
class OccluderFit:
    """Result of :func:`fit_occluders` for K classes.

    delta ``[K,C,H,W]``; iterations ``[K]`` (Adam steps taken); converged ``[K]`` (eq. 4's
    constraints held on all used images); used ``[N]`` (images kept: f(x) = f(t(x)) = y).
    """

    delta: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    used: torch.Tensor


def _generators(classes: Sequence[int], seed: int) -> list[torch.Generator]:
    # one stream per class: results do not depend on which classes are optimised together
    return [torch.Generator().manual_seed(seed * 1_000_003 + int(c)) for c in classes]


def _keep_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    gens: list[torch.Generator],
    noise: float,
    max_degrees: float,
    use_transform: bool,
) -> torch.Tensor:
    """Eq. 4's third constraint: keep images predicted y whose transformed copy is predicted y."""
    used = torch.zeros(len(images), dtype=torch.bool, device=images.device)
    with torch.no_grad():
        for c, gen in zip(classes, gens):
            idx = (labels == c).nonzero().flatten()
            if not len(idx):
                continue
            x = images[idx]
            ok = model(x).argmax(1) == c
            if use_transform:
                ok &= model(random_transform(x, noise, max_degrees, gen)).argmax(1) == c
            used[idx] = ok
    return used


def _optimise(
    model: nn.Module,
    groups: list[torch.Tensor],
    classes: Sequence[int],
    gens: list[torch.Generator],
    *,
    l1_weight: float,
    lr: float,
    max_iter: int,
    noise: float,
    max_degrees: float,
    use_transform: bool,
    valid_range: ValidRange,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise eq. 5 for all groups at once: one forward/backward per iteration over the images
    of the classes still running. Adam (β = 0.9, 0.999, ε = 1e-8) is applied per class with its
    own step count, so a class that meets eq. 4 is frozen exactly where it met it."""
    k, ref = len(groups), groups[0]
    delta = torch.zeros(k, *ref.shape[1:], dtype=ref.dtype, device=ref.device)
    m, v = torch.zeros_like(delta), torch.zeros_like(delta)
    steps = torch.zeros(k, dtype=torch.long)
    running = torch.tensor([len(g) > 0 for g in groups])
    converged = torch.zeros(k, dtype=torch.bool)
    target = torch.tensor([int(c) for c in classes], device=ref.device)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for _ in range(max_iter):
        active = running.nonzero().flatten().tolist()
        if not active:
            break
        xs = torch.cat([groups[a] for a in active])
        owner = torch.cat([torch.full((len(groups[a]),), a, dtype=torch.long) for a in active]).to(
            ref.device
        )
        d = delta.detach().requires_grad_(True)
        occluded = occlude(xs, d[owner], valid_range)
        batch = [occluded]
        if use_transform:
            batch.append(
                torch.cat(
                    [
                        random_transform(chunk, noise, max_degrees, gens[a])
                        for a, chunk in zip(
                            active, occluded.split([len(groups[a]) for a in active])
                        )
                    ]
                )
            )
        logits = model(torch.cat(batch)).view(len(batch), len(xs), -1)
        y = target[owner]
        zy = logits.gather(2, y.view(1, -1, 1).expand(len(batch), -1, 1)).squeeze(2)
        flipped = (logits.argmax(2) != y).all(0)
        counts = torch.bincount(owner, minlength=k).clamp_min(1).to(zy.dtype)
        per_class = torch.zeros(k, dtype=zy.dtype, device=zy.device).index_add(0, owner, zy.sum(0))
        loss = (per_class / counts).sum() + l1_weight * d[active].abs().flatten(1).mean(1).sum()
        (grad,) = torch.autograd.grad(loss, d)
        # eq. 4 per class: done when no image of it keeps its label under x−δ (and t(x−δ))
        unflipped = torch.zeros(k, dtype=torch.long, device=ref.device).index_add(
            0, owner, (~flipped).long()
        )
        done = (unflipped == 0).cpu() & running
        converged |= done
        running &= ~done
        step_rows = running.nonzero().flatten()
        if not len(step_rows):
            break
        steps[step_rows] += 1
        with torch.no_grad():
            rows = step_rows.to(ref.device)
            g = grad[rows]
            m[rows] = b1 * m[rows] + (1 - b1) * g
            v[rows] = b2 * v[rows] + (1 - b2) * g * g
            t = steps[step_rows].to(delta.dtype).to(ref.device).view(-1, *[1] * (delta.dim() - 1))
            m_hat = m[rows] / (1 - b1**t)
            v_hat = v[rows] / (1 - b2**t)
            delta[rows] -= lr * m_hat / (v_hat.sqrt() + eps)
    return delta, steps, converged


def fit_occluders(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    l1_weight: float = 10.0,
    lr: float = 0.01,
    max_iter: int = 300,
    noise: float = 0.04,
    max_degrees: float = 5.0,
    use_transform: bool = True,
    valid_range: ValidRange = (0.0, 1.0),
    seed: int = 0,
    batched: bool = True,
) -> OccluderFit:
    """Learn one global feature occluder per class in ``classes`` (seed eqs. 4–5).

    Minimises ``mean_i Z(x_i−δ)[y] + Z(t(x_i−δ))[y] + λ·D(δ)`` with Adam, D = mean |δ| (the l1
    norm divided by the input size, so λ does not depend on the resolution). ``noise`` is in the
    seed's units, inputs scaled to [−1, 1]; it is rescaled to ``valid_range`` (½·0.04 for [0, 1]).
    A class stops when eq. 4 holds on all its used images, else after ``max_iter`` steps.
    ``batched=False`` optimises the classes one after another (same result, for the benchmark).
    """
    if max_iter < 0:
        raise ValueError(f"max_iter: expected >= 0, got {max_iter}")
    if valid_range[0] >= valid_range[1]:
        raise ValueError(f"valid_range: expected lo < hi, got {valid_range}")
    model.eval()
    scaled_noise = noise * (valid_range[1] - valid_range[0]) / 2
    gens = _generators(classes, seed)
    used = _keep_images(
        model, images, labels, classes, gens, scaled_noise, max_degrees, use_transform
    )
    groups = [images[(labels == c) & used] for c in classes]
    opts = dict(
        l1_weight=l1_weight,
        lr=lr,
        max_iter=max_iter,
        noise=scaled_noise,
        max_degrees=max_degrees,
        use_transform=use_transform,
        valid_range=valid_range,
    )
    if batched:
        delta, steps, conv = _optimise(model, groups, classes, gens, **opts)  # type: ignore[arg-type]
    else:
        fits = [
            _optimise(model, [g], [c], [gen], **opts)  # type: ignore[arg-type]
            for g, c, gen in zip(groups, classes, gens)
        ]
        delta = torch.cat([f[0] for f in fits])
        steps = torch.cat([f[1] for f in fits])
        conv = torch.cat([f[2] for f in fits])
    return OccluderFit(delta, steps, conv, used)


# ---- stage 1: feature and channel importance ------------------------------------------------
def feature_importance(
    model: nn.Module,
    layers: Sequence[str],
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    delta: torch.Tensor,
    valid_range: ValidRange = (0.0, 1.0),
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """FIS of every neuron of every layer (eqs. 6–7): layer → ``[K, *neuron_shape]``.

    ``s = mean_i f_l(x_i) − f_l(x_i − δ*)`` over the class's images, negatives set to 0. A class
    without images gets all-zero scores.
    """
    out: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    shapes: dict[str, tuple[int, ...]] = {}
    for k, c in enumerate(classes):
        x = images[labels == c]
        if not len(x):
            for name in layers:
                out[name].append(torch.empty(0))
            continue
        clean = layer_outputs(model, layers, x, batch_size)
        occl = layer_outputs(model, layers, occlude(x, delta[k], valid_range), batch_size)
        for name in layers:
            shapes[name] = tuple(clean[name].shape[1:])
            out[name].append((clean[name] - occl[name]).mean(0).clamp_min(0))
    if not shapes:
        raise ValueError("images: no image of any requested class")
    return {
        name: torch.stack(
            [s if s.numel() else torch.zeros(shapes[name], device=delta.device) for s in v]
        )
        for name, v in out.items()
    }


def channel_importance(fis: torch.Tensor) -> torch.Tensor:
    """CIS (eq. 8): ``[K, C, ...]`` FIS → ``[K, C]`` sums per feature map divided by B.

    The seed only asks that B makes w ∈ [0, 1]; we take B = the class's largest channel sum, so
    the top channel of each class has weight 1 (B = 1 when all scores are 0). Dense layers
    ``[K, C]`` are C maps of size 1×1.
    """
    w = fis.flatten(2).sum(2) if fis.dim() > 2 else fis
    b = w.max(1, keepdim=True).values
    return w / torch.where(b > 0, b, torch.ones_like(b))


def meta_detector(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``Σ_c w_c·A_c`` for every class: ``[N, C, H, W]`` (or dense ``[N, C]``) with
    weights ``[K, C]`` → ``[N, K, H, W]`` (``[N, K, 1, 1]`` for dense layers)."""
    if activations.dim() == 2:
        activations = activations[:, :, None, None]
    if activations.dim() != 4 or activations.shape[1] != weights.shape[1]:
        raise ValueError(
            f"activations: expected [N, {weights.shape[1]}, H, W] or [N, {weights.shape[1]}], "
            f"got {tuple(activations.shape)}"
        )
    return torch.einsum("nchw,kc->nkhw", activations, weights.to(activations.dtype))


def heatmaps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Meta-detector outputs ``[N, K, h, w]`` upsampled bilinearly to the input ``size``."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


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
) -> torch.Tensor:
    """One image per class maximising the mean activation of its meta-detector in ``layer``.

    The seed uses a total-variation penalty as its only natural-image prior; we add random
    jitter (a roll of up to ``jitter`` pixels per step, the usual trick of the cited Inceptionism
    work). Each objective is normalised by the meta-detector's mean activation on the start
    image's scale-free units: ``mean f'(x) / (1 + mean |f'(x₀)|)``, so ``tv_weight`` means the
    same in every layer. Adam on pixels, clipped to ``valid_range`` after every step; all
    classes are optimised together. Returns ``[K, *image_shape]``.
    """
    k = weights.shape[0]
    gen = torch.Generator().manual_seed(seed)
    lo, hi = valid_range
    device = weights.device
    x = (lo + hi) / 2 + 0.01 * (hi - lo) * torch.randn(k, *image_shape, generator=gen)
    x = x.to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr * (hi - lo))
    model.eval()
    fx = FeatureExtractor(model, [layer], detach=False)
    scale: Optional[torch.Tensor] = None
    for _ in range(steps):
        dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
        acts = features(fx, torch.roll(x, shifts=(dy, dx), dims=(2, 3)))[layer]
        maps = meta_detector(acts, weights)  # [K, K, h, w]: image k scored by detector k
        own = maps[torch.arange(k), torch.arange(k)].flatten(1).mean(1)
        if scale is None:
            scale = 1.0 + own.detach().abs()
        loss = (-own / scale + tv_weight * total_variation(x)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def pick_impression_layer(
    model: nn.Module,
    layers: Sequence[str],
    impressions: dict[str, torch.Tensor],
    classes: Sequence[int],
) -> tuple[str, dict[str, float]]:
    """The seed picks, by eye, the first layer where the class concept emerges. We automate it:
    the model classifies each layer's impressions, and the shallowest layer with the highest
    fraction recognised as their class wins. Returns (layer, fraction per layer)."""
    target = torch.tensor([int(c) for c in classes])
    rates: dict[str, float] = {}
    with torch.no_grad():
        for name in layers:
            pred = model(impressions[name]).argmax(1).cpu()
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMD concept importance (seed §3.2): for each concept m, class k and layer l, the MMD²
    between the flattened meta-detector outputs of ``probes[m]`` (images with the concept) and
    ``benchmarks[m]`` (images without it), Gaussian kernel, median bandwidth. Summed over the
    layers and normalised per class to sum 1 (the seed says "normalised" only).

    Returns (importance ``[K, M]``, per-layer MMD² ``[L, K, M]``).
    """
    if len(probes) != len(benchmarks):
        raise ValueError(
            f"benchmarks: expected one set per probe set ({len(probes)}), got {len(benchmarks)}"
        )
    raw = torch.zeros(len(layers), len(next(iter(cis.values()))), len(probes), dtype=torch.float64)
    for m, (pos, neg) in enumerate(zip(probes, benchmarks)):
        acts_p = layer_outputs(model, layers, pos, batch_size)
        acts_n = layer_outputs(model, layers, neg, batch_size)
        for li, name in enumerate(layers):
            mp = meta_detector(acts_p[name], cis[name]).flatten(2).transpose(0, 1)  # [K, n, hw]
            mn = meta_detector(acts_n[name], cis[name]).flatten(2).transpose(0, 1)
            raw[li, :, m] = mmd2(mp, mn).cpu()
    total = raw.sum(0)
    norm = total.sum(1, keepdim=True)
    return total / torch.where(norm > 0, norm, torch.ones_like(norm)), raw


# ---- evaluations on the concept world --------------------------------------------------------
def concept_presence(world: ConceptWorld, batch: int = 256) -> torch.Tensor:
    """Bool ``[N, M]`` ground-truth concept presence of every image of ``world``."""
    return torch.cat(
        [
            world.concept_presence(slice(s, min(len(world), s + batch))).bool()
            for s in range(0, len(world), batch)
        ]
    )


def probe_sets(
    world: ConceptWorld, n: int, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per concept: up to ``n`` random images showing it and as many random images without it
    (the seed's probe data and "benchmark ones with irrelevant concept tags", from ground
    truth). Returns (probes, benchmarks), lists of image tensors in concept order."""
    presence = concept_presence(world)
    gen = torch.Generator().manual_seed(seed)
    probes, benchmarks = [], []
    for m in range(presence.shape[1]):
        pos = presence[:, m].nonzero().flatten()
        neg = (~presence[:, m]).nonzero().flatten()
        size = min(n, len(pos), len(neg))
        if size < 2:
            raise ValueError(
                f"world: concept {world.concepts[m]!r} needs >= 2 images with and without it, "
                f"got {len(pos)} and {len(neg)}"
            )
        pos = pos[torch.randperm(len(pos), generator=gen)[:size]]
        neg = neg[torch.randperm(len(neg), generator=gen)[:size]]
        probes.append(world.image(pos))
        benchmarks.append(world.image(neg))
    return probes, benchmarks


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
        idx = idx[_predict(model, world.image(idx), 256) == c][:n_images]
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
    correct = _predict(model, images, batch_size) == labels
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


# ---- the explainer ---------------------------------------------------------------------------
def _collect(data: object, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images and labels of ``data`` as two tensors (labels are required)."""
    if isinstance(data, ConceptWorld):
        return data.tensors()
    images, labels = [], []
    for x, y in iter_batches(data, batch_size):
        if y is None:
            raise ValueError("data: AfI needs labels: pass (images, labels) or a labelled dataset")
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError("data: expected at least one image, got none")
    return torch.cat(images), torch.cat(labels).long()


def _predict(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return (
            torch.cat([model(x).argmax(1) for x in images.split(batch_size)])
            if len(images)
            else torch.empty(0, dtype=torch.long, device=images.device)
        )


class _AfIGraph(nn.Module):
    """images (, targets) → AfI's outputs (``AfI.onnx_outputs`` order) for the explained class
    of each image (default: the prediction); ``explain`` and the ONNX export both run it."""

    classes: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        weights: torch.Tensor,
        importance: torch.Tensor,
        classes: Sequence[int],
    ) -> None:
        super().__init__()
        self.model = model
        self.fx = FeatureExtractor(model, [layer])
        self.weights = nn.Parameter(weights.float()[:, :, None, None], requires_grad=False)
        self.importance = nn.Parameter(importance.float(), requires_grad=False)
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.long))

    def forward(
        self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, ...]:
        feats, logits = features_and_logits(self.fx, images)
        act = next(iter(feats.values()))
        if act.dim() == 2:
            act = act[:, :, None, None]
        maps = F.conv2d(act, self.weights)  # eq. 9 for every fitted class: [B, K, h, w]
        if targets is None:
            targets = logits.argmax(1)
        hit = (targets[:, None] == self.classes[None, :]).to(maps.dtype)  # [B, K]
        own = torch.einsum("bk,bkhw->bhw", hit, maps)[:, None]
        class_maps = upsample(own, images.shape[-2:])[:, 0].clamp_min(0)
        return logits, self.importance[targets], class_maps, maps.mean((2, 3))


class AfI(ConceptExplainer):
    """Attacking for Interpretability: global occluders → FIS/CIS → meta-detectors → concepts.

    Args:
        model: a classifier returning logits; inputs in ``valid_range``.
        layers: the "middle layers" (dotted names); None = every ReLU output
            (:func:`middle_layers`).
        classes: class indices to explain; None = every class present in the fit data.
        l1_weight, lr, max_iter, noise, max_degrees, use_transform, valid_range: occluder
            optimisation (:func:`fit_occluders`); ``use_transform=False`` is the seed's ablation.
        holdout_fraction: share of each class's fit images held out to measure the occluders'
            attack success rate (not used to learn them).
        impression_layer: layer of the class impressions; None = automatic (the shallowest layer
            whose impressions the model recognises best, :func:`pick_impression_layer`).
        impression_steps, impression_lr, tv_weight, jitter: :func:`class_impressions`
            (``impression_steps=0`` skips them).
        n_probe: images per concept probe set and per benchmark set (concept world fits).
        heatmap_layer: layer of the meta-detector heatmaps of ``explain``; None = the impression
            layer when its output is a spatial map, else the last middle layer that has one.
        seed, batch_size: randomness and evaluation batch size.
        class_names: names of the model's classes (default: the data's, the model's, or
            ``class_i``).

    ``valid_range`` is the (low, high) pixel range the occluded images and impressions are
    clipped to; None (default) takes the fit images' own minimum and maximum, so normalised
    inputs work as they are. Fit images outside a given range are refused.

    Fitted state: ``delta_`` ``[K,C,H,W]``, ``attack_success_`` (held-out) and
    ``train_success_`` ``[K]``, ``occluder_iterations_``/``occluder_converged_`` ``[K]``,
    ``fis_``/``cis_`` (layer → ``[K, ...]``/``[K, C]``), ``impressions_`` (layer → ``[K,C,H,W]``),
    ``impression_layer_``, ``impression_rates_``, ``concept_importance_`` ``[K, M]`` and
    ``concept_mmd_`` ``[L, K, M]`` (when probe sets are given or the data is a concept world).

    ``explain`` returns global concept importance of each image's target class as
    ``concept_scores``, the target class's meta-detector map in ``heatmap_layer_`` (upsampled,
    negative parts cut) as ``class_maps``, and in ``extras`` ``class_scores [B, K]`` (every
    fitted class's mean meta-detector activation). AfI has no per-concept maps. The ONNX graph
    has the same outputs.
    """

    method = "afi"
    onnx_outputs = ("logits", "concept_scores", "class_maps", "class_scores")

    def __init__(
        self,
        model: nn.Module,
        layers: Optional[Sequence[str]] = None,
        classes: Optional[Sequence[int]] = None,
        *,
        l1_weight: float = 10.0,
        lr: float = 0.01,
        max_iter: int = 300,
        noise: float = 0.04,
        max_degrees: float = 5.0,
        use_transform: bool = True,
        valid_range: Optional[Sequence[float]] = None,
        holdout_fraction: float = 0.25,
        impression_layer: Optional[str] = None,
        impression_steps: int = 200,
        impression_lr: float = 0.05,
        tv_weight: float = 1.0,
        jitter: int = 2,
        n_probe: int = 40,
        heatmap_layer: Optional[str] = None,
        seed: int = 0,
        batch_size: int = 64,
        class_names: Optional[Sequence[str]] = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.classes = classes
        self.l1_weight = l1_weight
        self.lr = lr
        self.max_iter = max_iter
        self.noise = noise
        self.max_degrees = max_degrees
        self.use_transform = use_transform
        self.valid_range = valid_range
        self.holdout_fraction = holdout_fraction
        self.impression_layer = impression_layer
        self.impression_steps = impression_steps
        self.impression_lr = impression_lr
        self.tv_weight = tv_weight
        self.jitter = jitter
        self.n_probe = n_probe
        self.heatmap_layer = heatmap_layer
        self.seed = seed
        self.batch_size = batch_size
        self.class_names = class_names

    # ---- fit ------------------------------------------------------------------------------
    @property
    def layer(self) -> str:
        """The layer of ``explain``'s heatmaps (recorded in exports); set by ``fit``."""
        return self.heatmap_layer_

    @property
    def _range(self) -> ValidRange:
        lo, hi = self.valid_range_
        return float(lo), float(hi)

    def _resolve_range(self, images: torch.Tensor) -> tuple[float, float]:
        low, high = float(images.min()), float(images.max())
        if self.valid_range is None:
            if low >= high:
                raise ValueError("data: every pixel has the same value; pass valid_range")
            return low, high
        lo, hi = (float(v) for v in self.valid_range)
        if not lo < hi:
            raise ValueError(
                f"valid_range: expected (low, high) with low < high, got {self.valid_range}"
            )
        if low < lo or high > hi:
            raise ValueError(
                f"data: pixel values span [{low:.4g}, {high:.4g}], outside valid_range "
                f"{tuple(self.valid_range)}; pass the range of the model's inputs (None: the "
                "data's own range)"
            )
        return lo, hi

    def fit(
        self,
        data: object,
        probes: Optional[Sequence[torch.Tensor]] = None,
        benchmarks: Optional[Sequence[torch.Tensor]] = None,
        concept_names: Optional[Sequence[str]] = None,
    ) -> AfI:
        """Learn occluders, importance scores, impressions and (given probes) concept importance.

        ``data``: a :class:`ConceptWorld` (probe sets then come from its ground truth), an
        ``(images, labels)`` pair, or anything :func:`pyconcepts.data.iter_batches` accepts with
        labels. ``probes[m]``/``benchmarks[m]``: images with / without concept m.
        """
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction: expected in [0, 1), got {self.holdout_fraction}")
        images, labels = _collect(data, self.batch_size)
        device = self._model_device()
        images, labels = images.to(device), labels.to(device)
        images = self._check_images(images)
        self.valid_range_ = self._resolve_range(images)
        self.model.eval()
        with torch.no_grad():
            n_classes = int(self.model(images[:1]).shape[1])
        classes = explained_classes(
            self.classes if self.classes is not None else torch.unique(labels).tolist(), n_classes
        )
        layers = FeatureExtractor(self.model, list(self.layers or middle_layers(self.model))).names
        train, held = self._split(labels, classes)
        vr = self._range
        fit = fit_occluders(
            self.model, images[train], labels[train], classes,
            l1_weight=self.l1_weight, lr=self.lr, max_iter=self.max_iter, noise=self.noise,
            max_degrees=self.max_degrees, use_transform=self.use_transform, valid_range=vr,
            seed=self.seed,
        )  # fmt: skip
        self.classes_, self.layers_, self.n_classes_ = classes, layers, n_classes
        self.delta_ = fit.delta
        self.occluder_iterations_, self.occluder_converged_ = fit.iterations, fit.converged
        self.n_used_ = [int(((labels[train] == c) & fit.used).sum()) for c in classes]
        self.train_success_ = self._attack_success(images[train], labels[train])
        self.attack_success_ = self._attack_success(images[held], labels[held])
        used = train.nonzero().flatten()[fit.used]
        if not len(used):
            raise ValueError(
                f"data: the model classifies no training image of classes {classes} correctly "
                "(also under the transform t): the occluders have nothing to learn from"
            )
        self.fis_ = feature_importance(
            self.model, layers, images[used], labels[used], classes, self.delta_, vr,
            self.batch_size,
        )  # fmt: skip
        self.cis_ = {name: channel_importance(s) for name, s in self.fis_.items()}
        self._fit_impressions(images[:1])
        self.class_names_ = list(
            self.class_names
            or getattr(data, "class_names", None)
            or class_names_of(self.model, n_classes, None)
        )
        if probes is None and isinstance(data, ConceptWorld):
            probes, benchmarks = probe_sets(data, self.n_probe, self.seed)
            concept_names = concept_names or list(data.concepts)
        self.concept_names_: list[str] = []
        self.concept_importance_ = torch.zeros(len(classes), 0, dtype=torch.float64)
        self.concept_mmd_ = torch.zeros(len(layers), len(classes), 0, dtype=torch.float64)
        if probes is not None:
            if benchmarks is None:
                raise ValueError("benchmarks: expected one benchmark set per probe set, got None")
            self.concept_importance_, self.concept_mmd_ = concept_importance(
                self.model, layers, self.cis_, [p.to(device) for p in probes],
                [b.to(device) for b in benchmarks], self.batch_size,
            )  # fmt: skip
            names = concept_names or [f"concept_{m}" for m in range(len(probes))]
            if len(names) != len(probes):
                raise ValueError(f"concept_names: expected {len(probes)} names, got {len(names)}")
            self.concept_names_ = list(names)
        self._record_fit(images)
        return self

    def _split(
        self, labels: torch.Tensor, classes: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class, the last ``holdout_fraction`` of its images (in data order) is held out."""
        held = torch.zeros_like(labels, dtype=torch.bool)
        for c in classes:
            idx = (labels == c).nonzero().flatten()
            n_held = math.floor(len(idx) * self.holdout_fraction)
            if n_held:
                held[idx[len(idx) - n_held :]] = True
        return ~held, held

    def _fit_impressions(self, example: torch.Tensor) -> None:
        self.impressions_: dict[str, torch.Tensor] = {}
        self.impression_rates_: dict[str, float] = {}
        layers = [self.impression_layer] if self.impression_layer else self.layers_
        if self.impression_layer and self.impression_layer not in self.layers_:
            raise ValueError(
                f"impression_layer: expected one of the middle layers {self.layers_}, "
                f"got {self.impression_layer!r}"
            )
        if self.impression_steps > 0:
            for name in layers:
                self.impressions_[name] = class_impressions(
                    self.model, name, self.cis_[name], example.shape[1:],
                    steps=self.impression_steps, lr=self.impression_lr, tv_weight=self.tv_weight,
                    jitter=self.jitter, valid_range=self._range, seed=self.seed,
                )  # fmt: skip
            chosen, self.impression_rates_ = pick_impression_layer(
                self.model, layers, self.impressions_, self.classes_
            )
        else:
            chosen = self.impression_layer or self.layers_[-1]
        self.impression_layer_ = chosen
        self.heatmap_layer_ = self.heatmap_layer or self._spatial_default(chosen, example)
        if self.heatmap_layer_ not in self.layers_:
            raise ValueError(
                f"heatmap_layer: expected one of the middle layers {self.layers_}, "
                f"got {self.heatmap_layer_!r}"
            )

    def _spatial_default(self, chosen: str, example: torch.Tensor) -> str:
        """``chosen`` when its output is a spatial map, else the last middle layer with one
        (a dense layer's meta-detector is a single number: a 1×1 "map"), with a warning."""
        acts = layer_outputs(self.model, self.layers_, example, self.batch_size)
        spatial = [n for n in self.layers_ if acts[n].dim() == 4 and acts[n][0, 0].numel() > 1]
        if chosen in spatial:
            return chosen
        if not spatial:
            raise ValueError(
                f"layers: none of the middle layers {self.layers_} outputs a spatial map; "
                "pass heatmap_layer (a conv layer's name)"
            )
        warnings.warn(
            f"heatmap_layer: the {'impression' if self.impressions_ else 'last middle'} layer "
            f"{chosen!r} has no spatial map; the heatmaps use {spatial[-1]!r} instead",
            stacklevel=4,
        )
        return spatial[-1]

    # ---- use ------------------------------------------------------------------------------
    def occlude(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each image minus the occluder of its label (images of unfitted classes unchanged)."""
        self._check_fitted()
        return self._occlude(images, labels)

    def attack_success(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per fitted class, the fraction of its correctly classified ``images`` whose prediction
        the class's occluder flips (NaN where there is none)."""
        self._check_fitted()
        return self._attack_success(images, labels)

    def _occlude(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        for k, c in enumerate(self.classes_):
            mask = labels == c
            out[mask] = occlude(images[mask], self.delta_[k].to(images.device), self._range)
        return out

    def _attack_success(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        clean = _predict(self.model, images, self.batch_size)
        occl = _predict(self.model, self._occlude(images, labels), self.batch_size)
        rates = [
            attack_success_rate(clean[labels == c], occl[labels == c], c) for c in self.classes_
        ]
        return torch.tensor(rates, dtype=torch.float64)

    def _importance_table(self) -> torch.Tensor:
        """Concept importance for every model class (rows of unfitted classes are 0)."""
        table = torch.zeros(self.n_classes_, len(self.concept_names_), dtype=torch.float64)
        table[torch.tensor(self.classes_, dtype=torch.long)] = self.concept_importance_
        return table

    def explain(self, images: torch.Tensor, targets: Optional[Any] = None) -> Explanation:
        """The target class's (default: the prediction's) concept importance and meta-detector
        map of each image; images of classes that were not fitted get a zero map, with a
        warning."""
        self._check_fitted()
        images = self._check_images(images).to(self._model_device())
        t = resolve_targets(targets, images.shape[0], self.n_classes_)
        with torch.no_grad():
            outputs = self._onnx_module()(images, None if t is None else t.to(images.device))
        out = dict(zip(self.onnx_outputs, outputs))
        t = out["logits"].argmax(1) if t is None else t.to(out["logits"].device)
        warn_unexplained(t, self.classes_)
        return Explanation.from_outputs(
            self.method, self.heatmap_layer_, self.concept_names_, self.class_names_, out, t
        )

    # ---- persistence / export --------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
        tensors = {
            "delta": self.delta_,
            "occluder_iterations": self.occluder_iterations_,
            "occluder_converged": self.occluder_converged_,
            "train_success": self.train_success_,
            "attack_success": self.attack_success_,
            "concept_importance": self.concept_importance_,
            "concept_mmd": self.concept_mmd_,
            **{f"fis.{n}": t for n, t in self.fis_.items()},
            **{f"cis.{n}": t for n, t in self.cis_.items()},
            **{f"impressions.{n}": t for n, t in self.impressions_.items()},
        }
        state = {
            "classes_": self.classes_,
            "layers_": self.layers_,
            "n_classes_": self.n_classes_,
            "n_used_": self.n_used_,
            "impression_layer_": self.impression_layer_,
            "impression_rates_": self.impression_rates_,
            "heatmap_layer_": self.heatmap_layer_,
            "valid_range_": list(self.valid_range_),
            "class_names_": self.class_names_,
            "concept_names_": self.concept_names_,
        }
        return tensors, state

    def _set_state(self, tensors: dict[str, torch.Tensor], state: dict[str, object]) -> None:
        device = self._model_device()
        for key, value in state.items():
            setattr(self, key, value)
        self.delta_ = tensors["delta"].to(device)
        self.occluder_iterations_ = tensors["occluder_iterations"]
        self.occluder_converged_ = tensors["occluder_converged"]
        self.train_success_ = tensors["train_success"]
        self.attack_success_ = tensors["attack_success"]
        self.concept_importance_ = tensors["concept_importance"]
        self.concept_mmd_ = tensors["concept_mmd"]
        self.fis_, self.cis_, self.impressions_ = (
            {k[len(p) + 1 :]: v.to(device) for k, v in tensors.items() if k.startswith(p + ".")}
            for p in ("fis", "cis", "impressions")
        )
        if set(self.cis_) != set(self.layers_):
            raise ValueError(f"state: CIS for layers {sorted(self.cis_)}, expected {self.layers_}")

    def _onnx_module(self) -> nn.Module:
        return _AfIGraph(
            self.model,
            self.heatmap_layer_,
            self.cis_[self.heatmap_layer_],
            self._importance_table(),
            self.classes_,
        ).to(self._model_device())

    def _class_map(self, images: torch.Tensor, cls: int) -> torch.Tensor:
        maps = self.explain(images, [cls] * len(images)).class_maps
        assert maps is not None  # AfI always returns class maps
        return maps

    # ---- plots ----------------------------------------------------------------------------
    def plot_heatmaps(self, images: torch.Tensor, n: int = 4) -> Figure:
        """Per image (rows, at most ``n``): the image, then each fitted class's meta-detector
        heatmap over it (the explained class's title in bold)."""
        plt = _pyplot()
        images = images[:n]
        e = self.explain(images)
        heat = torch.stack([self._class_map(images, c) for c in self.classes_], 1).cpu()
        k = len(self.classes_)
        fig, axes = plt.subplots(
            len(images), k + 1, figsize=(1.6 * (k + 1), 1.7 * len(images)), squeeze=False
        )
        for i in range(len(images)):
            picture = displayable(images[i])
            axes[i, 0].imshow(picture)
            axes[i, 0].set_title(f"pred: {self.class_names_[int(e.targets[i])]}", fontsize=6)
            for j, c in enumerate(self.classes_):
                ax = axes[i, j + 1]
                ax.imshow(picture)
                ax.imshow(heat[i, j].numpy(), cmap="jet", alpha=0.5)
                weight = "bold" if c == int(e.targets[i]) else "normal"
                ax.set_title(self.class_names_[c], fontsize=5, fontweight=weight)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(f"AfI meta-detectors at {self.heatmap_layer_}", fontsize=8)
        fig.tight_layout()
        return fig

    def plot_impressions(self) -> Figure:
        """Top row: class impressions at ``impression_layer_``; bottom row: the occluders δ
        (scaled to [0, 1]) with their held-out attack success rates."""
        plt = _pyplot()
        k = len(self.classes_)
        fig, axes = plt.subplots(2, k, figsize=(1.6 * k, 3.6), squeeze=False)
        imp = self.impressions_.get(self.impression_layer_)
        for j, c in enumerate(self.classes_):
            name = self.class_names_[c]
            if imp is not None:
                axes[0, j].imshow(imp[j].cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            axes[0, j].set_title(name, fontsize=5)
            d = self.delta_[j].cpu()
            d = (d - d.min()) / (d.max() - d.min()).clamp_min(1e-12)
            axes[1, j].imshow(d.permute(1, 2, 0).numpy())
            axes[1, j].set_title(f"ASR {float(self.attack_success_[j]):.2f}", fontsize=6)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle(f"class impressions ({self.impression_layer_}) and occluders", fontsize=8)
        fig.tight_layout()
        return fig


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_editing_curves(curves: dict[str, dict[str, torch.Tensor]]) -> Figure:
    """Accuracy (mean over classes) vs number of concepts added (left) / removed (right), one
    line per ranking, like the seed's Fig. 2."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0))
    for ax, mode, title in zip(
        axes, ("add", "remove"), ("adding top concepts", "removing top concepts")
    ):
        for name, table in curves[mode].items():
            mean = table.nanmean(0)
            ax.plot(range(len(mean)), mean.numpy(), marker="o", label=name)
        ax.set_xlabel("number of concepts")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
