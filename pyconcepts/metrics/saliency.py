"""Metrics for explanations made of saliency / concept maps (MACE's evaluation, usable with any
explainer's maps): faithfulness by masking, robustness to perturbations, embedding stability,
relevance vs class rank, and the ground-truth score on the concept world.

Maps are ``[B, M, H, W]`` at input resolution (M maps per image: concepts, or 1 for Grad-CAM).
A map is binarised at ``threshold`` × its own maximum (an all-zero map is empty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

MapFn = Callable[[torch.Tensor], torch.Tensor]


def binarize(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool masks: pixels above ``threshold`` × each map's maximum (all-zero maps stay off)."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps > threshold * peak) & (peak > 0)


def _probs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).softmax(1)


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    thresholds: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    fill: str = "mean",
) -> dict[float, dict[str, float]]:
    """Drop of the target class probability when the union of the thresholded maps is removed.

    Removed pixels take the image's mean colour (``fill="mean"``) or 0 (``"zero"``). Returns per
    threshold the mean ``drop`` and the mean removed ``area`` (a larger area drops more by
    itself: compare methods at similar areas).
    """
    if fill not in ("mean", "zero"):
        raise ValueError(f"fill: expected 'mean' or 'zero', got {fill!r}")
    probs = _probs(model, images)
    if targets is None:
        targets = probs.argmax(1)
    base = probs.gather(1, targets[:, None])[:, 0]
    filler = images.mean((2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(images)
    out: dict[float, dict[str, float]] = {}
    for t in thresholds:
        mask = binarize(maps, t).any(1, keepdim=True)  # union over maps [B,1,H,W]
        masked = torch.where(mask, filler.expand_as(images), images)
        after = _probs(model, masked).gather(1, targets[:, None])[:, 0]
        out[float(t)] = {
            "drop": float((base - after).mean()),
            "area": float(mask.float().mean()),
        }
    return out


def random_maps(
    activations: torch.Tensor, n_maps: int, size: Sequence[int], seed: int = 0
) -> torch.Tensor:
    """The paper's random baseline: ``n_maps`` random non-negative combinations of a layer's
    activation maps ``[B,D,h,w]``, upsampled to ``size`` → ``[B,n_maps,H,W]``."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(n_maps, activations.shape[1], generator=gen).to(activations)
    maps = torch.einsum("md,bdhw->bmhw", weights, activations)
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    theta = theta.to(images).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def perturbations(
    noise: float = 0.05, brightness: float = 0.1, contrast: float = 1.3, rotation: float = 10.0
) -> dict[
    str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
]:
    """name → (perturb the images, align the clean maps with the perturbed image)."""
    same: Callable[[torch.Tensor], torch.Tensor] = lambda m: m  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    return {
        "noise": (
            lambda x: (x + noise * torch.randn(x.shape, generator=gen).to(x)).clamp(0, 1),
            same,
        ),
        "brightness": (lambda x: (x + brightness).clamp(0, 1), same),
        "contrast": (
            lambda x: ((x - x.mean((1, 2, 3), keepdim=True)) * contrast
                       + x.mean((1, 2, 3), keepdim=True)).clamp(0, 1),
            same,
        ),
        "rotation": (lambda x: _rotate(x, rotation), lambda m: _rotate(m, rotation)),
    }  # fmt: skip


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks over the last two dims (1 where both are empty)."""
    inter = (a & b).flatten(-2).sum(-1).float()
    union = (a | b).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def robustness(
    explain: MapFn,
    images: torch.Tensor,
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
    perturbs: Optional[dict] = None,
) -> dict[str, dict[float, float]]:
    """Mean IoU between the thresholded maps of each image and of its perturbed copy
    (supplementary S6), per perturbation and threshold; ``explain``: images → ``[B,M,H,W]``."""
    perturbs = perturbations() if perturbs is None else perturbs
    clean = explain(images)
    out: dict[str, dict[float, float]] = {}
    for name, (perturb, align) in perturbs.items():
        moved = explain(perturb(images))
        ref = align(clean)
        valid = clean.flatten(-2).amax(-1) > 0  # ignore maps that are empty on the clean image
        out[name] = {}
        for t in thresholds:
            scores = iou(binarize(ref, t), binarize(moved, t))
            out[name][float(t)] = float(scores[valid].mean()) if bool(valid.any()) else float("nan")
    return out


def stability(embeddings: torch.Tensor) -> dict[str, object]:
    """Pairwise Euclidean distances of concept embeddings ``[n_images, C, Q]`` of one class,
    ordered ``(c1,f1)…(c1,fn),(c2,f1)…`` (supplementary S5's box-diagonal matrix), and the ratio
    of the mean within-concept to the mean between-concept distance (< 1: concepts are stable)."""
    n, c, q = embeddings.shape
    flat = embeddings.transpose(0, 1).reshape(c * n, q)
    dist = torch.cdist(flat, flat)
    concept = torch.arange(c).repeat_interleave(n)
    same = concept[:, None] == concept[None, :]
    off_diag = ~torch.eye(c * n, dtype=torch.bool)
    within = dist[same & off_diag].mean()
    between = dist[~same].mean()
    return {"matrix": dist, "within": float(within), "between": float(between),
            "ratio": float(within / between)}  # fmt: skip


def relevance_vs_rank(
    relevance: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, active: torch.Tensor
) -> list[float]:
    """Section 4.2: for each rank r (1 = top class), the percentage of a class's active concepts
    whose relevance is below that concept's average over the class's own images, on the images
    where the class is ranked r-th — averaged over classes. It should grow with r."""
    k = relevance.shape[1]
    ranks = probs.argsort(1, descending=True).argsort(1)  # [N, K] rank of class k (0 = top)
    out = []
    for r in range(k):
        per_class = []
        for ki in range(k):
            own = labels == ki
            at_rank = ranks[:, ki] == r
            on = active[ki].bool()
            if not bool(own.any()) or not bool(at_rank.any()) or not bool(on.any()):
                continue
            avg = relevance[own, ki].mean(0)  # [C]
            below = relevance[at_rank, ki][:, on] < avg[on]
            per_class.append(float(below.float().mean()) * 100)
        out.append(sum(per_class) / len(per_class) if per_class else float("nan"))
    return out


def ground_truth_score(
    maps: torch.Tensor,
    active: torch.Tensor,
    gt_masks: torch.Tensor,
    labels: torch.Tensor,
    class_concepts: torch.Tensor,
    threshold: float = 0.5,
    found_iou: float = 0.2,
) -> dict[str, object]:
    """How well each class's unpruned concept maps ``[N,K,C,H,W]`` overlap the ground-truth
    masks ``[N,G,H,W]`` of the concepts defining the class (``class_concepts [K,G]`` bool).

    For class k and defining concept g: over the images of class k where g is visible, the mean
    IoU of each active concept map with g's mask; the best concept's IoU is g's score, and g is
    "found" when it reaches ``found_iou``. Returns per-class best IoUs and found fractions and
    their means.
    """
    k = maps.shape[1]
    per_class_iou, per_class_found = [], []
    for ki in range(k):
        own = labels == ki
        defining = class_concepts[ki].nonzero().flatten().tolist()
        on = active[ki].bool()
        if not bool(own.any()) or not defining or not bool(on.any()):
            per_class_iou.append(0.0)
            per_class_found.append(0.0)
            continue
        masks = binarize(maps[own, ki][:, on], threshold)  # [n, C_on, H, W]
        best = []
        for g in defining:
            gt = gt_masks[own, g]  # [n, H, W]
            visible = gt.flatten(1).any(1)
            if not bool(visible.any()):
                continue
            scores = iou(masks[visible], gt[visible][:, None].expand_as(masks[visible]))
            best.append(float(scores.mean(0).max()))
        per_class_iou.append(sum(best) / len(best) if best else 0.0)
        per_class_found.append(sum(b >= found_iou for b in best) / len(best) if best else 0.0)
    return {
        "best_iou": per_class_iou,
        "found": per_class_found,
        "mean_best_iou": sum(per_class_iou) / k,
        "mean_found": sum(per_class_found) / k,
    }
