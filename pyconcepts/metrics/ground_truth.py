"""Scoring explanations against the concept world's ground truth, from outside the methods.

Two ground truths:

* **definition** — the pixels and concepts that *define* the explained class (the union of the
  masks of its defining concepts, ``world.class_concept_matrix()``). It says what a perfect
  model would use.
* **intervention** — what *this* model uses in *this* image (FunnyBirds' idea): each concept
  present is changed to another value (``ConceptWorld.intervene``) and the drop of the target
  logit, and whether the prediction flips, is that concept's importance
  (:func:`intervention_truth`).

Scores, per image (aggregate with :func:`bootstrap_ci`):

* maps ``[B, H, W]`` (non-negative): :func:`pointing_game` and :func:`energy` inside a region,
  and :func:`region_auc`, which unlike energy is unchanged by any increasing transform of the
  map (squaring a map raises its energy, not its AUC);
* concept rankings ``[B, K]`` over the world's K concepts: :func:`precision_at_k` against a
  relevant set and :func:`spearman` against the intervention drops, both over the concepts
  present in each image.

Methods whose concepts are *units* (learnt maps, x-features, filter rules, channels) name no
world concept; :func:`dissect` matches each unit to the world concept whose masks its maps
overlap best (network dissection: summed intersection over summed union across probe images)
and :func:`scores_by_concept` then reads a unit method's scores as world-concept scores.

Pure torch; no method-specific code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pyconcepts.metrics.saliency import binarize


@dataclass(frozen=True)
class InterventionTruth:
    """The model's reaction to changing each concept of each image.

    Attributes:
        drops: ``[B, K]`` target logit of the image minus that of the edited image (0 where
            the concept is absent).
        flips: ``[B, K]`` bool, the edit changes the model's prediction.
        present: ``[B, K]`` bool, the concept is visible in the image.
    """

    drops: torch.Tensor
    flips: torch.Tensor
    present: torch.Tensor

    def relevant(self, share: float = 0.5) -> torch.Tensor:
        """Bool ``[B, K]``: the concepts the model uses — present concepts whose edit flips the
        prediction or drops the logit by at least ``share`` × the image's largest drop (> 0)."""
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share: expected a number in (0, 1], got {share!r}")
        drops = torch.where(self.present, self.drops, torch.zeros_like(self.drops))
        top = drops.amax(1, keepdim=True)
        strong = (drops >= share * top) & (top > 0) & (drops > 0)
        return self.present & (self.flips | strong)


def _check_maps(maps: torch.Tensor, regions: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps: expected a [B, H, W] tensor, got {got}")
    if not isinstance(regions, torch.Tensor) or regions.dtype != torch.bool:
        raise TypeError(
            f"regions: expected a bool tensor, got {getattr(regions, 'dtype', regions)}"
        )
    if regions.shape != maps.shape:
        raise ValueError(
            f"regions: expected the maps' shape {tuple(maps.shape)}, got {tuple(regions.shape)}"
        )


def regions_of(masks: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, H, W]``: the union of the masks ``[B, K, H, W]`` of the concepts selected
    per image by ``concepts [B, K]`` (bool)."""
    if masks.dim() != 4 or concepts.shape != masks.shape[:2]:
        raise ValueError(
            f"masks [B,K,H,W] and concepts [B,K] disagree: {tuple(masks.shape)} vs "
            f"{tuple(concepts.shape)}"
        )
    return (masks & concepts.bool()[:, :, None, None]).any(1)


def pointing_game(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``[B]`` whether each map's maximum lies inside its region: the share of the map's
    maximal pixels that are inside (1 or 0 for a single maximum; a flat map — uniform or all
    zero — scores the region's area, as a random guess would). NaN for an empty region."""
    _check_maps(maps, regions)
    flat, reg = maps.flatten(1).float(), regions.flatten(1)
    top = flat == flat.amax(1, keepdim=True)
    hits = (top & reg).sum(1).float() / top.sum(1).float()
    return torch.where(reg.any(1), hits, torch.full_like(hits, float("nan")))


def energy(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``[B]`` the share of each map's positive mass inside its region (energy-based pointing
    game, Score-CAM). A uniform map scores the region's area; an all-zero map too (it says
    nothing). NaN for an empty region."""
    _check_maps(maps, regions)
    flat, reg = maps.flatten(1).float().clamp_min(0), regions.flatten(1)
    total = flat.sum(1)
    inside = (flat * reg).sum(1) / total.clamp_min(1e-30)
    area = reg.float().mean(1)
    out = torch.where(total > 0, inside, area)
    return torch.where(reg.any(1), out, torch.full_like(out, float("nan")))


def region_auc(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """``[B]`` each map's ROC-AUC at telling its region's pixels from the rest: the chance that
    a random pixel inside scores above a random pixel outside, ties counting one half. It
    depends only on the order of the pixels, so sharpening a map (a power, an exponential)
    leaves it unchanged, while :func:`energy` rewards it. A flat map scores 0.5. NaN where the
    region is empty or covers the whole map."""
    _check_maps(maps, regions)
    flat, reg = maps.flatten(1).double(), regions.flatten(1)
    n = flat.shape[1]
    values, order = flat.sort(1)
    index = torch.arange(n, device=flat.device).expand_as(values)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]  # first pixel of each group of ties
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]  # last pixel of each group of ties
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    last = torch.where(ends, index, torch.full_like(index, n)).flip(1).cummin(1).values.flip(1)
    ranks = torch.empty_like(values).scatter_(1, order, (first + last).double() / 2 + 1)
    n_in = reg.sum(1).double()
    n_out = n - n_in
    auc = ((ranks * reg).sum(1) - n_in * (n_in + 1) / 2) / (n_in * n_out).clamp_min(1)
    defined = (n_in > 0) & (n_out > 0)
    return torch.where(defined, auc, torch.full_like(auc, float("nan"))).float()


def precision_at_k(
    scores: torch.Tensor, relevant: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``[B]`` precision of each image's top-k concepts, k = its number of relevant concepts.

    Only ``candidates`` (bool ``[B, K]``, e.g. the concepts present) are ranked; relevant
    concepts outside them are ignored. Ties are counted at their expectation under random
    tie-breaking, so constant scores get the chance level k/n. NaN where no candidate is
    relevant.
    """
    if scores.shape != relevant.shape or scores.shape != candidates.shape or scores.dim() != 2:
        raise ValueError(
            f"scores, relevant and candidates: expected equal [B, K] shapes, got "
            f"{tuple(scores.shape)}, {tuple(relevant.shape)}, {tuple(candidates.shape)}"
        )
    cand = candidates.bool()
    rel = relevant.bool() & cand
    s = torch.where(
        cand, scores.double(), torch.full_like(scores, float("-inf"), dtype=torch.float64)
    )
    k = rel.sum(1)
    ordered = s.sort(1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp_min(0)[:, None])  # [B, 1] score of the k-th place
    greater = (s > kth) & cand
    equal = (s == kth) & cand
    n_greater, n_equal = greater.sum(1).double(), equal.sum(1).double()
    taken = (k.double() - n_greater) / n_equal.clamp_min(1)
    hits = (greater & rel).sum(1).double() + (equal & rel).sum(1).double() * taken
    out = hits / k.clamp_min(1).double()
    return torch.where(k > 0, out, torch.full_like(out, float("nan"))).float()


def precision_ceiling(
    scores: torch.Tensor, relevant: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """``[B]`` the best :func:`precision_at_k` any scores with the same zeros as ``scores``
    could reach: the concepts a ranking can name (non-zero score) that are relevant first, the
    unnamed ones tied at 0, the named irrelevant ones last. The cap a method's ranking has
    from *which* concepts it scores (e.g. the concepts its units are matched to), whatever
    their order."""
    if scores.shape != relevant.shape:
        raise ValueError(
            f"scores and relevant: expected equal shapes, got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    named = scores != 0
    best = torch.where(named & relevant.bool(), 1.0, torch.where(named, -1.0, 0.0))
    return precision_at_k(best, relevant, candidates)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0
        start = stop + 1
    return ranks


def spearman(scores: torch.Tensor, truth: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``[B]`` Spearman rank correlation (average ranks for ties) between each image's scores
    and true importances ``[B, K]`` over its candidate concepts. NaN where fewer than two
    candidates or either side is constant (no ranking to compare)."""
    if scores.shape != truth.shape or scores.shape != candidates.shape or scores.dim() != 2:
        raise ValueError(
            f"scores, truth and candidates: expected equal [B, K] shapes, got "
            f"{tuple(scores.shape)}, {tuple(truth.shape)}, {tuple(candidates.shape)}"
        )
    out = torch.full((scores.shape[0],), float("nan"))
    s_all, t_all = scores.double().cpu().numpy(), truth.double().cpu().numpy()
    for i, cand in enumerate(candidates.bool().cpu().numpy()):
        if cand.sum() < 2:
            continue
        a, b = _average_ranks(s_all[i, cand]), _average_ranks(t_all[i, cand])
        a, b = a - a.mean(), b - b.mean()
        denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
        if denom > 0:
            out[i] = float((a * b).sum() / denom)
    return out


def dissect(
    maps: torch.Tensor,
    units: torch.Tensor,
    masks: torch.Tensor,
    n_units: int,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Network-dissection IoU ``[n_units, K]`` of every unit with every world concept.

    ``maps [B, C, H, W]`` are per-image unit maps, ``units [B, C]`` the unit id of each column
    (−1: unused), ``masks [B, K, H, W]`` the concept masks. A map is binarised at
    ``threshold`` × its maximum (:func:`~pyconcepts.metrics.saliency.binarize`); a unit's IoU
    with a concept is the intersection summed over the images where the unit has a map divided
    by the union summed likewise. Units that never appear get 0.
    """
    if maps.dim() != 4 or units.shape != maps.shape[:2]:
        raise ValueError(
            f"maps [B,C,H,W] and units [B,C] disagree: {tuple(maps.shape)} vs {tuple(units.shape)}"
        )
    if masks.dim() != 4 or masks.shape[0] != maps.shape[0] or masks.shape[-2:] != maps.shape[-2:]:
        raise ValueError(
            f"masks: expected [{maps.shape[0]}, K, {maps.shape[2]}, {maps.shape[3]}], got "
            f"{tuple(masks.shape)}"
        )
    on = binarize(maps.float(), threshold).flatten(2).float()  # [B, C, HW]
    gt = masks.flatten(2).float()  # [B, K, HW]
    inter = torch.einsum("bcp,bkp->bck", on, gt)
    union = on.sum(2)[:, :, None] + gt.sum(2)[:, None, :] - inter
    ids = units.long()
    valid = (ids >= 0)[:, :, None].float()
    index = ids.clamp_min(0).flatten()
    k = masks.shape[1]
    inter_sum = torch.zeros(n_units, k).index_add_(0, index, (inter * valid).reshape(-1, k))
    union_sum = torch.zeros(n_units, k).index_add_(0, index, (union * valid).reshape(-1, k))
    return inter_sum / union_sum.clamp_min(1e-9)


def match_units(iou: torch.Tensor, min_iou: float = 0.0) -> torch.Tensor:
    """``[n_units]`` the world concept each unit is matched to (its best IoU), −1 where the
    best IoU is not above ``min_iou``."""
    best, concept = iou.max(1)
    return torch.where(best > min_iou, concept, torch.full_like(concept, -1))


def scores_by_concept(
    unit_scores: torch.Tensor, units: torch.Tensor, unit_concepts: torch.Tensor, n_concepts: int
) -> torch.Tensor:
    """World-concept scores ``[B, K]`` of a unit method: each concept's score is the sum of the
    scores ``[B, C]`` of the image's units (ids ``[B, C]``, −1 unused) matched to it by
    ``unit_concepts [n_units]`` (−1: unmatched); 0 for a concept no unit is matched to."""
    ids = units.long()
    concept = torch.where(ids >= 0, unit_concepts[ids.clamp_min(0)], torch.full_like(ids, -1))
    keep = (concept >= 0).to(unit_scores.dtype)
    out = torch.zeros(unit_scores.shape[0], n_concepts + 1, dtype=unit_scores.dtype)
    out.scatter_add_(1, torch.where(concept >= 0, concept, n_concepts), unit_scores * keep)
    return out[:, :n_concepts]


@torch.no_grad()
def intervention_truth(
    model: nn.Module,
    world: Any,
    index: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "change",
    batch_size: int = 256,
) -> InterventionTruth:
    """The intervention ground truth of images ``index`` of a ``ConceptWorld``: for every
    concept present, the drop of the ``targets`` logit when that concept is edited
    (``world.intervene(index, concept, mode)``) and whether the prediction flips."""
    index = torch.as_tensor(index).long().flatten()
    targets = torch.as_tensor(targets).long().flatten()
    if targets.shape != index.shape:
        raise ValueError(f"targets: expected {index.numel()} class ids, got {targets.numel()}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.empty(0)).device

        def logits_of(images: torch.Tensor) -> torch.Tensor:
            parts = [
                model(images[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, images.shape[0], batch_size)
            ]
            return torch.cat(parts)

        base = logits_of(world.image(index))
        base_target = base.gather(1, targets[:, None])[:, 0]
        base_pred = base.argmax(1)
        present = world.concept_presence(index).bool()
        k = present.shape[1]
        drops = torch.zeros(index.numel(), k)
        flips = torch.zeros(index.numel(), k, dtype=torch.bool)
        for c in range(k):
            rows = present[:, c].nonzero().flatten()
            if rows.numel() == 0:
                continue
            edited = logits_of(world.intervene(index[rows], c, mode))
            drops[rows, c] = base_target[rows] - edited.gather(1, targets[rows, None])[:, 0]
            flips[rows, c] = edited.argmax(1) != base_pred[rows]
    finally:
        model.train(was_training)
    return InterventionTruth(drops=drops, flips=flips, present=present)


def bootstrap_ci(
    values: torch.Tensor | np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile bootstrap interval
    over them (NaNs — images a score is undefined for — are left out; all NaN gives NaNs)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(low), float(high)
