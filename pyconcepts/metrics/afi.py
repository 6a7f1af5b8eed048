"""Metrics used by AfI (Wu et al., CVPR 2020) and its evaluations.

- ``mmd2``: the squared Maximum Mean Discrepancy (Gretton et al., 2012) with a Gaussian kernel,
  AfI's measure of how well a meta-detector separates probe images of a concept from a benchmark
  set (seed §3.2).
- ``attack_success_rate``: the fraction of images of a class whose prediction an occluder flips.
- ``topk_precision``: ground-truth score of a concept ranking (concept world).
- ``distillation_accuracy``: the seed's distillation test (Table 2): a 32-16-2 dense student trained
  on meta-detector outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn


def _pooled_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[..., n+m, n+m]`` within the pooled sample, in float64 (GEMM form:
    the direct form of ``cdist`` is ~20× slower for wide inputs such as flattened maps)."""
    z = torch.cat([x, y], dim=-2).to(torch.float64)
    return torch.cdist(z, z, compute_mode="use_mm_for_euclid_dist")


def _median_of(dist: torch.Tensor) -> torch.Tensor:
    n = dist.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=dist.device)
    med = dist[..., i, j].median(dim=-1).values
    return torch.where(med > 0, med, torch.ones_like(med))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Median pairwise distance in the pooled sample (the usual MMD bandwidth heuristic).

    ``x [..., n, d]``, ``y [..., m, d]`` → ``[...]``; 1 where all points coincide, so the kernel
    stays defined.
    """
    return _median_of(_pooled_distances(x, y))


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidth: Optional[float] = None,
    unbiased: bool = False,
) -> torch.Tensor:
    """Squared MMD between ``x [..., n, d]`` and ``y [..., m, d]``, kernel
    ``k(a, b) = exp(-|a-b|²/2σ²)``; leading dimensions are independent problems.

    ``bandwidth`` σ defaults to the median heuristic on each pooled sample. The biased
    (V-statistic) estimate is the default because it is never negative, which keeps AfI's
    per-layer sums and their normalisation meaningful; ``unbiased=True`` drops the diagonal terms.
    Computed in float64; returns a tensor of the leading shape (0-d for 2-D inputs).
    """
    if (
        x.dim() < 2
        or x.dim() != y.dim()
        or x.shape[-1] != y.shape[-1]
        or x.shape[:-2] != y.shape[:-2]
    ):
        raise ValueError(
            f"x, y: expected tensors [..., n, d] and [..., m, d] with equal d and leading "
            f"dimensions, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = x.shape[-2], y.shape[-2]
    if n < 2 or m < 2:
        raise ValueError(f"x, y: expected at least 2 samples each, got {n} and {m}")
    if bandwidth is not None and bandwidth <= 0:
        raise ValueError(f"bandwidth: expected > 0, got {bandwidth}")
    dist = _pooled_distances(x, y)
    sigma = _median_of(dist) if bandwidth is None else torch.full_like(dist[..., 0, 0], bandwidth)
    kernel = torch.exp(-dist.square() / (2.0 * sigma * sigma)[..., None, None])
    kxx, kyy, kxy = kernel[..., :n, :n], kernel[..., n:, n:], kernel[..., :n, n:]
    if unbiased:
        exx = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
        eyy = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    else:
        exx, eyy = kxx.mean((-1, -2)), kyy.mean((-1, -2))
    return exx + eyy - 2.0 * kxy.mean((-1, -2))


def attack_success_rate(clean_pred: torch.Tensor, occluded_pred: torch.Tensor, label: int) -> float:
    """Fraction of images predicted ``label`` when clean whose occluded prediction is not ``label``.

    Images the model already misclassifies do not count (the seed's occluders are only defined
    on correctly classified images). NaN when no image is correctly classified.
    """
    if clean_pred.shape != occluded_pred.shape:
        raise ValueError(
            f"occluded_pred: expected shape {tuple(clean_pred.shape)}, "
            f"got {tuple(occluded_pred.shape)}"
        )
    keep = clean_pred == label
    if not bool(keep.any()):
        return float("nan")
    return float((occluded_pred[keep] != label).double().mean())


def topk_precision(scores: torch.Tensor, relevant: Sequence[int], k: Optional[int] = None) -> float:
    """Share of the ``k`` highest-scoring indices that are in ``relevant`` (k = len(relevant))."""
    rel = set(int(r) for r in relevant)
    k = len(rel) if k is None else k
    if k <= 0:
        raise ValueError(f"k: expected > 0, got {k}")
    top = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return sum(t in rel for t in top) / k


def distillation_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    hidden: Sequence[int] = (32, 16),
    epochs: int = 200,
    lr: float = 1e-2,
    seed: int = 0,
) -> float:
    """Test accuracy of a dense student (``hidden`` units + 2 outputs, ReLU) on a binary task.

    The seed trains students of 32, 16 and 2 units on the flattened meta-detector outputs; it
    does not give the optimiser, so we use full-batch Adam for a fixed number of ``epochs`` on
    standardised features (mean/std of the training set; constant features are left at 0).
    """
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True).clamp_min(1e-8)
    tx, vx = (train_x - mean) / std, (test_x - mean) / std
    layers: list[nn.Module] = []
    width = tx.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 2))
    student = nn.Sequential(*layers).double().to(tx.device)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    tx, vx = tx.double(), vx.double()
    ty = train_y.long()
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(student(tx), ty).backward()
        opt.step()
    with torch.no_grad():
        return float((student(vx).argmax(1) == test_y.long()).double().mean())
